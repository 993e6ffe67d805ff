// GRU forward and BPTT with PyTorch's cell: gates r, z, n and a separate recurrent bias inside n.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::gru {

/// Gate count G of the GRU: column blocks r, z, n.
constexpr Index gate_count = 3;

/// Runs the GRU over all T steps and keeps what `backward` needs.
///   r = sigmoid(x W_xr + h_{t-1} W_hr + b_r);  z = sigmoid(x W_xz + h_{t-1} W_hz + b_z)
///   n = tanh(x W_xn + b_n + r * (h_{t-1} W_hn + b_hn));  h_t = (1 - z) * n + z * h_{t-1}
/// `b` holds b_r and b_z (PyTorch's b_ir + b_hr and b_iz + b_hz) and b_n (PyTorch's b_in); b_hn stays apart
/// because r multiplies it. One product computes the input projections of all steps, one per step the
/// recurrence; chunked runs with h carried give the same bits as one run.
/// shape        in   T, B, D, H (all >= 1)
/// x     [T*B, D]    in   step t is rows t*B .. t*B+B-1 (time-major)
/// W_x   [D, 3H]     in   column blocks r, z, n
/// W_h   [H, 3H]     in
/// b     [3H]        in
/// b_hn  [H]         in
/// h0    [B, H]      in
/// gates [T*B, 3H]   out  activated r, z, n of every step (saved for backward)
/// hn    [T*B, H]    out  h_{t-1} W_hn + b_hn of every step (saved for backward)
/// hs    [T*B, H]    out  h_1 .. h_T; the last B rows are the final state when every sequence runs all T steps
/// lengths [B]       in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of
///                        gates, hn and hs are zero after that, and its final state is row (lengths[b]-1)*B + b
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x, ConstMatrixRef<Scalar> W_h,
             ConstVectorRef<Scalar> b, ConstVectorRef<Scalar> b_hn, ConstMatrixRef<Scalar> h0,
             MatrixRef<Scalar> gates, MatrixRef<Scalar> hn, MatrixRef<Scalar> hs,
             ConstLengthsRef lengths = IndexVector());

/// Backpropagation through time for `forward`. Per step, from t = T down to 1, with dh = dL/dh_t:
///   dn = dh (1 - z);  dz_n = dn (1 - n²);  dz_z = dh (h_{t-1} - n) z (1 - z);  dz_r = dz_n hn r (1 - r);
///   d(hn) = dz_n r;  dL/dh_{t-1} = dh z + [dz_r, dz_z, d(hn)] W_hᵀ
/// and the whole-sequence products dW_x = Xᵀ [dz_r, dz_z, dz_n], dW_h = H_prevᵀ [dz_r, dz_z, d(hn)],
/// db = colsum [dz_r, dz_z, dz_n], db_hn = colsum d(hn), dx = [dz_r, dz_z, dz_n] W_xᵀ, a block of
/// backward_block_steps(B, 4H) steps at a time.
/// shape, x, W_x, W_h, h0, gates, hn, hs, lengths   in   as given to / returned by `forward`
/// dhs   [T*B, H]    in   upstream gradient on every h_t (a gradient on a sequence's final state belongs to the
///                        row of its last step; rows past a sequence's end are ignored)
/// dx    [T*B, D]    out
/// dh0   [B, H]      out
/// dW_x  [D, 3H]     out
/// dW_h  [H, 3H]     out
/// db    [3H]        out
/// db_hn [H]         out  (dW_x, dW_h, db, db_hn are in/out with accumulate: this call's gradient is added)
/// accumulate        in   add to the weight gradients instead of overwriting them
/// dh_norms [T+1, B] out  optional (null: not computed): ||dL/dh_k||_2 for k = 0 .. T (k = 0: the initial state),
///                        what BPTT carries back to each step; 0 past a sequence's length
/// Allocates scratch of one block of steps and a [B, H] matrix per call, none inside the time loop.
template <class Scalar>
void backward(const Shape& shape, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x, ConstMatrixRef<Scalar> W_h,
              ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> gates, ConstMatrixRef<Scalar> hn,
              ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> dhs, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0,
              MatrixRef<Scalar> dW_x, MatrixRef<Scalar> dW_h, VectorRef<Scalar> db, VectorRef<Scalar> db_hn,
              ConstLengthsRef lengths = IndexVector(), bool accumulate = false, Scalar* dh_norms = nullptr);

}  // namespace fastbptt::gru
