// The plain (Elman) RNN: forward over a whole batch of sequences and backpropagation through time.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::rnn {

/// What every call reads besides the weights: the sequences and the state before the first step.
template <class Scalar>
struct Inputs {
  MatrixView<const Scalar> x;   ///< [T*B, D]  in  step t is rows t*B .. t*B+B-1 (time-major)
  MatrixView<const Scalar> h0;  ///< [B, H]    in  the state before step 1
};

/// The parameters:  h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h).
template <class Scalar>
struct Weights {
  MatrixView<const Scalar> W_xh;  ///< [D, H]  in
  MatrixView<const Scalar> W_hh;  ///< [H, H]  in
  VectorView<const Scalar> b_h;   ///< [H]     in  (forward only; backward does not read it)
};

/// What `forward` keeps for `backward`: written by forward (Element = Scalar), read by backward (const Scalar).
/// hs is all backward needs besides the inputs (phi' is computed from h = phi(z)).
template <class Element>
struct Cache {
  MatrixView<Element> hs;  ///< [T*B, H]  h_1 .. h_T; its last B rows are the final state when every sequence runs
                           ///<           all T steps

  /// The same array read-only, as backward takes it.
  template <class E = Element, class = std::enable_if_t<!std::is_const_v<E>>>
  operator Cache<const E>() const {  // NOLINT(google-explicit-constructor)
    return {hs};
  }
};

/// What `forward_inference` writes.
template <class Scalar>
struct Outputs {
  MatrixView<Scalar> hs;   ///< [T*B, H]  out  h_1 .. h_T (rows past a sequence's end are zero)
  MatrixView<Scalar> h_T;  ///< [B, H]    out  each sequence's state after its last step
};

/// The gradient of the loss that reaches the RNN's outputs from above.
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
  MatrixView<Scalar> dW_xh;  ///< [D, H]    out  (in/out with options.accumulate: this call's gradient is added)
  MatrixView<Scalar> dW_hh;  ///< [H, H]    out  (likewise)
  VectorView<Scalar> db_h;   ///< [H]       out  (likewise)
};

/// Runs the RNN over all T steps:  h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h),  t = 1..T.
/// Each step writes its block of hs with one product [x_t, h_{t-1}] [W_xh; W_hh] and applies phi in place in one
/// vectorised pass. Results do not depend on T: a sequence run in chunks with the state carried gives the same bits
/// as one run.
/// shape        in   T, B, D, H (all >= 1)
/// activation   in   phi
/// inputs       in   x, h0 (see Inputs)
/// weights      in   W_xh, W_hh, b_h (see Weights)
/// cache        out  hs (see Cache)
/// lengths [B]  in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of hs are
///                   zero after that and its final state is row (lengths[b]-1)*B + b
/// packed       in   optional: `pack(weights)` made before, kept across calls (see Packed)
/// handoffs     in   optional: a wavefront of layers (see Handoffs): step t waits for step t of x, and hs's steps
///                   are published as they are written; the same bits
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, Activation activation, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
             const Cache<Scalar>& cache, ConstLengthsRef lengths = IndexVector(),
             const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// Runs the RNN as `forward` does, for inference: hs has `forward`'s bits, and h_T holds each sequence's final
/// state. The RNN's forward keeps nothing but hs anyway; memory beyond the outputs is the packed weights.
/// shape, activation, inputs, weights, lengths, packed, handoffs   in   as for `forward`
/// outputs      out  hs, h_T (see Outputs)
template <class Scalar>
void forward_inference(const Shape& shape, Activation activation, const Inputs<Scalar>& inputs,
                       const Weights<Scalar>& weights, const Outputs<Scalar>& outputs,
                       ConstLengthsRef lengths = IndexVector(), const Packed<Scalar>& packed = Packed<Scalar>(),
                       const Handoffs& handoffs = Handoffs());

/// Backpropagation through time for `forward`, given dL/dh_t for every step.
///   dz_t = (dhs_t + dz_{t+1} W_hhᵀ) * phi'(z_t);  dh0 = dz_1 W_hhᵀ
///   dx = dZ W_xhᵀ,  dW_xh = Xᵀ dZ,  dW_hh = H_prevᵀ dZ,  db_h = colsum(dZ)   (a block of backward_block_steps()
///   steps at a time)
/// shape, activation, inputs, weights (W_xh, W_hh), cache, lengths, packed   in   as given to / written by `forward`
/// upstream     in   dhs (see Upstream)
/// gradients    out  dx, dh0, dW_xh, dW_hh, db_h (see Gradients)
/// options      in   accumulate, dh_norms, need_dx, need_weight_gradients (see BackwardOptions and lstm::backward)
/// Allocates scratch of one block of steps per call, none inside the time loop.
/// handoffs     in   optional: a wavefront of layers, backwards (see Handoffs): a step waits for the rows of dhs
///                   it reads, which the layer above writes as its dx as this call runs, and dx's steps (counted
///                   from the last) are published as they are written (dx then a step at a time); the same bits
template <class Scalar>
void backward(const Shape& shape, Activation activation, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& upstream, const Gradients<Scalar>& gradients,
              ConstLengthsRef lengths = IndexVector(), const BackwardOptions<Scalar>& options = {},
              const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// The weights packed for `forward`, `forward_inference` and `backward` (see Packed): [W_xh; W_hh] for a step's
/// product and W_hhᵀ for BPTT's. Reads W_xh and W_hh (b_h is not packed).
template <class Scalar>
Packed<Scalar> pack(const Weights<Scalar>& weights);

}  // namespace fastbptt::rnn
