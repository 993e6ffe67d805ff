// GRU forward and BPTT with PyTorch's cell: gates r, z, n and a separate recurrent bias inside n.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::gru {

/// Gate count G of the GRU: column blocks r, z, n.
constexpr Index gate_count = 3;

/// What every call reads besides the weights: the sequences and the state before the first step.
template <class Scalar>
struct Inputs {
  MatrixView<const Scalar> x;   ///< [T*B, D]  in  step t is rows t*B .. t*B+B-1 (time-major)
  MatrixView<const Scalar> h0;  ///< [B, H]    in  the state before step 1
};

/// The parameters (see `forward` for the equations).
template <class Scalar>
struct Weights {
  MatrixView<const Scalar> W_x;   ///< [D, 3H]  in  column blocks r, z, n
  MatrixView<const Scalar> W_h;   ///< [H, 3H]  in
  VectorView<const Scalar> b;     ///< [3H]     in  b_r and b_z (PyTorch's b_ir + b_hr and b_iz + b_hz) and b_n
                                  ///<              (PyTorch's b_in); forward only
  VectorView<const Scalar> b_hn;  ///< [H]      in  kept apart because r multiplies it; forward only
};

/// What `forward` keeps for `backward`: written by forward (Element = Scalar), read by backward (const Scalar).
template <class Element>
struct Cache {
  MatrixView<Element> gates;  ///< [T*B, 3H]  activated r, z, n of every step
  MatrixView<Element> hn;     ///< [T*B, H]   h_{t-1} W_hn + b_hn of every step
  MatrixView<Element> hs;     ///< [T*B, H]   h_1 .. h_T; the last B rows are the final state when every sequence
                              ///<             runs all T steps

  /// The same arrays read-only, as backward takes them.
  template <class E = Element, class = std::enable_if_t<!std::is_const_v<E>>>
  operator Cache<const E>() const {  // NOLINT(google-explicit-constructor)
    return {gates, hn, hs};
  }
};

/// What `forward_inference` writes.
template <class Scalar>
struct Outputs {
  MatrixView<Scalar> hs;   ///< [T*B, H]  out  h_1 .. h_T (rows past a sequence's end are zero)
  MatrixView<Scalar> h_T;  ///< [B, H]    out  each sequence's state after its last step
};

/// The gradient of the loss that reaches the GRU's outputs from above.
template <class Scalar>
struct Upstream {
  MatrixView<const Scalar> dhs;  ///< [T*B, H]  in  dL/dh_t of every step (a gradient on a sequence's final state
                                 ///<              belongs to the row of its last step; rows past a sequence's end
                                 ///<              are ignored)
};

/// What `backward` computes.
template <class Scalar>
struct Gradients {
  MatrixView<Scalar> dx;     ///< [T*B, D]  out
  MatrixView<Scalar> dh0;    ///< [B, H]    out
  MatrixView<Scalar> dW_x;   ///< [D, 3H]   out  (dW_x, dW_h, db, db_hn are in/out with options.accumulate: this
  MatrixView<Scalar> dW_h;   ///< [H, 3H]   out   call's gradient is added)
  VectorView<Scalar> db;     ///< [3H]      out
  VectorView<Scalar> db_hn;  ///< [H]       out
};

/// Runs the GRU over all T steps and keeps what `backward` needs.
///   r = sigmoid(x W_xr + h_{t-1} W_hr + b_r);  z = sigmoid(x W_xz + h_{t-1} W_hz + b_z)
///   n = tanh(x W_xn + b_n + r * (h_{t-1} W_hn + b_hn));  h_t = (1 - z) * n + z * h_{t-1}
/// One product computes the input projections of all steps, one per step the recurrence; chunked runs with h
/// carried give the same bits as one run.
/// shape        in   T, B, D, H (all >= 1)
/// inputs       in   x, h0 (see Inputs)
/// weights      in   W_x, W_h, b, b_hn (see Weights)
/// cache        out  gates, hn, hs (see Cache)
/// lengths [B]  in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of gates, hn
///                   and hs are zero after that, and its final state is row (lengths[b]-1)*B + b
/// packed       in   optional: `pack(weights)` made before, kept across calls (see Packed)
/// handoffs     in   optional: a wavefront of layers (see Handoffs): step t waits for step t of x (and projects
///                   its own inputs, as forward_inference does), and hs's steps are published as they are
///                   written; the same bits
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
             const Cache<Scalar>& cache, ConstLengthsRef lengths = IndexVector(),
             const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// Runs the GRU as `forward` does, for inference: each step projects its own inputs x_t W_x (instead of all steps'
/// at once) and nothing but the state is kept. hs and h_T have the bits of `forward`'s hs and final states (each
/// element of a projection is the same sum in the same order); memory beyond the outputs is two [B, 3H] matrices
/// and the packed weights, whatever T is.
/// shape, inputs, weights, lengths, packed, handoffs   in   as for `forward`
/// outputs      out  hs, h_T (see Outputs)
template <class Scalar>
void forward_inference(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
                       const Outputs<Scalar>& outputs, ConstLengthsRef lengths = IndexVector(),
                       const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// Backpropagation through time for `forward`. Per step, from t = T down to 1, with dh = dL/dh_t:
///   dn = dh (1 - z);  dz_n = dn (1 - n²);  dz_z = dh (h_{t-1} - n) z (1 - z);  dz_r = dz_n hn r (1 - r);
///   d(hn) = dz_n r;  dL/dh_{t-1} = dh z + [dz_r, dz_z, d(hn)] W_hᵀ
/// and the whole-sequence products dW_x = Xᵀ [dz_r, dz_z, dz_n], dW_h = H_prevᵀ [dz_r, dz_z, d(hn)],
/// db = colsum [dz_r, dz_z, dz_n], db_hn = colsum d(hn), dx = [dz_r, dz_z, dz_n] W_xᵀ, a block of
/// backward_block_steps(B, 4H) steps at a time.
/// shape, inputs, weights (W_x, W_h), cache, lengths, packed   in   as given to / written by `forward`
/// upstream     in   dhs (see Upstream)
/// gradients    out  dx, dh0, dW_x, dW_h, db, db_hn (see Gradients)
/// options      in   accumulate, dh_norms, need_dx, need_weight_gradients (see BackwardOptions)
/// Allocates scratch of one block of steps and a [B, H] matrix per call, none inside the time loop.
/// handoffs     in   optional: a wavefront of layers, backwards (see Handoffs): a step waits for the rows of dhs
///                   it reads, which the layer above writes as its dx as this call runs, and dx's steps (counted
///                   from the last) are published as they are written (dx then a step at a time); the same bits
template <class Scalar>
void backward(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& upstream, const Gradients<Scalar>& gradients,
              ConstLengthsRef lengths = IndexVector(), const BackwardOptions<Scalar>& options = {},
              const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// The weights packed for `forward`, `forward_inference` and `backward` (see Packed): W_x for the input projection,
/// W_h for a step's product, both in gate blocks, and W_hᵀ for BPTT's. Reads W_x and W_h (not the biases).
template <class Scalar>
Packed<Scalar> pack(const Weights<Scalar>& weights);

}  // namespace fastbptt::gru
