// LSTM forward and BPTT: the modern cell with a forget gate and the original cell without one.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::lstm {

/// Gate count G: 4 (blocks i, f, g, o) with a forget gate, 3 (blocks i, g, o) without.
constexpr Index gate_count(bool forget_gate) { return forget_gate ? 4 : 3; }

/// Runs the LSTM over all T steps and keeps what `backward` needs.
///   z_t = x_t W_x + h_{t-1} W_h + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
///   C_t = f_t * C_{t-1} + i_t * g_t   (without forget gate: C_t = C_{t-1} + i_t * g_t);  h_t = o_t * tanh(C_t)
/// Each step writes its block of `gates` with one product [x_t, h_{t-1}] [W_x; W_h], and one vectorised pass turns
/// the block into the activated gates and writes C_t and h_t. Results do not depend on T: a sequence run in chunks with (h, C) carried gives the same bits.
/// shape        in   T, B, D, H (all >= 1)
/// forget_gate  in   selects the cell; G = gate_count(forget_gate)
/// x     [T*B, D]    in   step t is rows t*B .. t*B+B-1 (time-major)
/// W_x   [D, G*H]    in   gate column blocks i, f, g, o (or i, g, o)
/// W_h   [H, G*H]    in
/// b     [G*H]       in
/// h0    [B, H]      in
/// c0    [B, H]      in
/// gates [T*B, G*H]  out  activated gates i, f, g, o of every step (saved for backward)
/// hs    [T*B, H]    out  h_1 .. h_T
/// cs    [T*B, H]    out  C_1 .. C_T; the last B rows are the final cell state when every sequence runs all T steps
/// lengths [B]       in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of
///                        gates, hs and cs are zero after that, and its final states are row (lengths[b]-1)*B + b
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, bool forget_gate, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x,
             ConstMatrixRef<Scalar> W_h, ConstVectorRef<Scalar> b, ConstMatrixRef<Scalar> h0,
             ConstMatrixRef<Scalar> c0, MatrixRef<Scalar> gates, MatrixRef<Scalar> hs, MatrixRef<Scalar> cs,
             ConstLengthsRef lengths = IndexVector());

/// Backpropagation through time for `forward`, from upstream gradients on every h_t and on the final C_T.
/// Per step, from t = T down to 1 (dh_t includes dz_{t+1} W_hᵀ, dC_t includes dC_{t+1} * f_{t+1}):
///   dC_t += dh_t * o_t * (1 - tanh²C_t);  dz_o = dh_t * tanh C_t * o(1-o);  dz_i = dC_t * g * i(1-i);
///   dz_g = dC_t * i * (1-g²);  dz_f = dC_t * C_{t-1} * f(1-f)
/// and the whole-sequence products dW_x = Xᵀ dZ, dW_h = H_prevᵀ dZ, db = colsum(dZ), dx = dZ W_xᵀ, computed
/// a block of backward_block_steps() steps at a time.
/// shape, forget_gate, x, W_x, W_h, h0, c0, gates, hs, cs, lengths   in   as given to / returned by `forward`
/// dhs   [T*B, H]    in   upstream gradient on every h_t (a gradient on a sequence's final hidden state belongs to
///                        the row of its last step; rows past a sequence's end are ignored)
/// dc_T  [B, H]      in   upstream gradient on each sequence's final cell state (zeros when the loss ignores it)
/// dx    [T*B, D]    out
/// dh0   [B, H]      out
/// dc0   [B, H]      out
/// dW_x  [D, G*H]    out  (in/out with accumulate: this call's gradient is added)
/// dW_h  [H, G*H]    out  (likewise)
/// db    [G*H]       out  (likewise)
/// accumulate        in   add to dW_x, dW_h and db instead of overwriting them: with segments that start at
///                        multiples of backward_block_steps(B, G*H), run last first with dh0/dc0 passed on, the
///                        result has the bits of one call over the whole sequence
/// dh_norms [T+1, B] out  optional (null: not computed): ||dL/dh_k||_2 for k = 0 .. T (k = 0: the initial state),
///                        what BPTT carries back to each step; 0 past a sequence's length
/// Allocates scratch of one block of steps ([block*B, G*H] and [block*B, H]) and a [B, H] matrix per call, none
/// inside the time loop; memory beyond the outputs does not grow with T.
template <class Scalar>
void backward(const Shape& shape, bool forget_gate, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x,
              ConstMatrixRef<Scalar> W_h, ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> c0,
              ConstMatrixRef<Scalar> gates, ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> cs,
              ConstMatrixRef<Scalar> dhs, ConstMatrixRef<Scalar> dc_T, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0,
              MatrixRef<Scalar> dc0, MatrixRef<Scalar> dW_x, MatrixRef<Scalar> dW_h, VectorRef<Scalar> db,
              ConstLengthsRef lengths = IndexVector(), bool accumulate = false, Scalar* dh_norms = nullptr);

}  // namespace fastbptt::lstm
