// The plain (Elman) RNN: forward over a whole batch of sequences and backpropagation through time.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::rnn {

/// Runs the RNN over all T steps:  h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h),  t = 1..T.
/// Each step writes its block of hs with one product [x_t, h_{t-1}] [W_xh; W_hh] and applies phi in place in one
/// vectorised pass. Results do not depend on T: a
/// sequence run in chunks with the state carried gives the same bits as one run.
/// hs is all backward needs besides the inputs (phi' is computed from h = phi(z)).
/// shape        in   T, B, D, H (all >= 1)
/// activation   in   phi
/// x    [T*B, D]  in   step t is rows t*B .. t*B+B-1 (time-major)
/// W_xh [D, H]    in
/// W_hh [H, H]    in
/// b_h  [H]       in
/// h0   [B, H]    in   the state before step 1
/// hs   [T*B, H]  out  h_1 .. h_T; its last B rows are the final state when every sequence runs all T steps
/// lengths [B]    in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of hs are
///                     zero after that and its final state is row (lengths[b]-1)*B + b
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, Activation activation, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_xh,
             ConstMatrixRef<Scalar> W_hh, ConstVectorRef<Scalar> b_h, ConstMatrixRef<Scalar> h0,
             MatrixRef<Scalar> hs, ConstLengthsRef lengths = IndexVector());

/// Backpropagation through time for `forward`, given dL/dh_t for every step.
///   dz_t = (dhs_t + dz_{t+1} W_hhᵀ) * phi'(z_t);  dh0 = dz_1 W_hhᵀ
///   dW_xh = Xᵀ dZ,  dW_hh = H_prevᵀ dZ,  db_h = colsum(dZ),  dx = dZ W_xhᵀ   (a block of backward_block_steps()
///   steps at a time)
/// shape, activation, x, W_xh, W_hh, h0, hs, lengths   in   as given to / returned by `forward`
/// dhs    [T*B, H]  in   upstream gradient on every h_t (a gradient on a sequence's final state belongs to the row
///                       of its last step; rows past a sequence's end are ignored)
/// dx     [T*B, D]  out
/// dh0    [B, H]    out
/// dW_xh  [D, H]    out  (in/out with accumulate: this call's gradient is added)
/// dW_hh  [H, H]    out  (likewise)
/// db_h   [H]       out  (likewise)
/// accumulate       in   add to the weight gradients instead of overwriting them (see lstm::backward)
/// dh_norms [T+1, B] out  optional (null: not computed): ||dL/dh_k||_2 for k = 0 .. T (k = 0: the initial state),
///                        what BPTT carries back to each step; 0 past a sequence's length
/// Allocates scratch of one block of steps per call, none inside the time loop.
template <class Scalar>
void backward(const Shape& shape, Activation activation, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_xh,
              ConstMatrixRef<Scalar> W_hh, ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> hs,
              ConstMatrixRef<Scalar> dhs, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0, MatrixRef<Scalar> dW_xh,
              MatrixRef<Scalar> dW_hh, VectorRef<Scalar> db_h, ConstLengthsRef lengths = IndexVector(),
              bool accumulate = false, Scalar* dh_norms = nullptr);

}  // namespace fastbptt::rnn
