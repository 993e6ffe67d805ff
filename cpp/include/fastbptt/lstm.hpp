// LSTM forward and BPTT: the modern cell with a forget gate and the original cell without one, each with or without
// a projection of its output (Sak et al. 2014; torch.nn.LSTM's proj_size).
//
// Sizes: H hidden units (the gates, the cell state C); P the state h's features: P = H without a projection, the
// projection's width with one (h_t = (o_t * tanh C_t) W_hr, what the next step multiplies and what is output).
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::lstm {

/// Gate count G: 4 (blocks i, f, g, o) with a forget gate, 3 (blocks i, g, o) without.
constexpr Index gate_count(bool forget_gate) { return forget_gate ? 4 : 3; }

/// What every call reads besides the weights: the sequences and the state before the first step.
template <class Scalar>
struct Inputs {
  MatrixView<const Scalar> x;   ///< [T*B, D]  in  step t is rows t*B .. t*B+B-1 (time-major)
  MatrixView<const Scalar> h0;  ///< [B, P]    in  h before step 1
  MatrixView<const Scalar> c0;  ///< [B, H]    in  C before step 1
};

/// The parameters:  z_t = x_t W_x + h_{t-1} W_h + b;  with a projection, h_t = (o_t * tanh C_t) W_hr.
template <class Scalar>
struct Weights {
  MatrixView<const Scalar> W_x;   ///< [D, G*H]  in  gate column blocks i, f, g, o (or i, g, o)
  MatrixView<const Scalar> W_h;   ///< [P, G*H]  in
  VectorView<const Scalar> b;     ///< [G*H]     in  (forward only; backward does not read it)
  MatrixView<const Scalar> W_hr;  ///< [H, P]    in  the projection; empty (the default): none, P = H
};

/// What `forward` keeps for `backward`: written by forward (Element = Scalar), read by backward (const Scalar).
template <class Element>
struct Cache {
  MatrixView<Element> gates;  ///< [T*B, G*H]  activated gates i, f, g, o (or i, g, o) of every step
  MatrixView<Element> hs;     ///< [T*B, P]    h_1 .. h_T; the last B rows are the final hidden state when every
                              ///<              sequence runs all T steps
  MatrixView<Element> cs;     ///< [T*B, H]    C_1 .. C_T; likewise for the final cell state

  /// The same arrays read-only, as backward takes them.
  template <class E = Element, class = std::enable_if_t<!std::is_const_v<E>>>
  operator Cache<const E>() const {  // NOLINT(google-explicit-constructor)
    return {gates, hs, cs};
  }
};

/// What `forward_inference` writes.
template <class Scalar>
struct Outputs {
  MatrixView<Scalar> hs;   ///< [T*B, P]  out  h_1 .. h_T (rows past a sequence's end are zero)
  MatrixView<Scalar> h_T;  ///< [B, P]    out  each sequence's hidden state after its last step
  MatrixView<Scalar> c_T;  ///< [B, H]    out  each sequence's cell state after its last step
};

/// The gradients of the loss that reach the LSTM's outputs from above.
template <class Scalar>
struct Upstream {
  MatrixView<const Scalar> dhs;   ///< [T*B, P]  in  dL/dh_t of every step (a gradient on a sequence's final hidden
                                  ///<              state belongs to the row of its last step; rows past a
                                  ///<              sequence's end are ignored)
  MatrixView<const Scalar> dc_T;  ///< [B, H]    in  dL/dC on each sequence's final cell state (zeros when the loss
                                  ///<              ignores it)
};

/// What `backward` computes.
template <class Scalar>
struct Gradients {
  MatrixView<Scalar> dx;     ///< [T*B, D]   out
  MatrixView<Scalar> dh0;    ///< [B, P]     out
  MatrixView<Scalar> dc0;    ///< [B, H]     out
  MatrixView<Scalar> dW_x;   ///< [D, G*H]   out  (in/out with options.accumulate: this call's gradient is added)
  MatrixView<Scalar> dW_h;   ///< [P, G*H]   out  (likewise)
  VectorView<Scalar> db;     ///< [G*H]      out  (likewise)
  MatrixView<Scalar> dW_hr;  ///< [H, P]     out  (likewise) with a projection; not read without one
};

/// Runs the LSTM over all T steps and keeps what `backward` needs.
///   z_t = x_t W_x + h_{t-1} W_h + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
///   C_t = f_t * C_{t-1} + i_t * g_t   (without forget gate: C_t = C_{t-1} + i_t * g_t);  h_t = o_t * tanh(C_t)
///   (with a projection: h_t = (o_t * tanh C_t) W_hr)
/// Each step writes its block of `gates` with one product [x_t, h_{t-1}] [W_x; W_h], and one vectorised pass turns
/// the block into the activated gates and writes C_t and h_t (with a projection, o_t * tanh C_t, then multiplied by
/// W_hr once all units have theirs). Results do not depend on T: a sequence run in chunks with (h, C) carried gives
/// the same bits.
/// shape        in   T, B, D, H (all >= 1)
/// forget_gate  in   selects the cell; G = gate_count(forget_gate)
/// inputs       in   x, h0, c0 (see Inputs)
/// weights      in   W_x, W_h, b, W_hr (see Weights)
/// cache        out  gates, hs, cs (see Cache)
/// lengths [B]  in   optional (see ConstLengthsRef): sequence b stops after lengths[b] steps; its rows of gates, hs
///                   and cs are zero after that, and its final states are row (lengths[b]-1)*B + b
/// packed       in   optional: `pack(forget_gate, weights)` made before, kept across calls (see Packed)
/// handoffs     in   optional: a wavefront of layers (see Handoffs): step t waits for step t of x, and hs's steps
///                   are published as they are written; the same bits
/// Throws std::invalid_argument naming the argument when a shape disagrees with `shape`.
template <class Scalar>
void forward(const Shape& shape, bool forget_gate, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
             const Cache<Scalar>& cache, ConstLengthsRef lengths = IndexVector(),
             const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// Runs the LSTM over all T steps as `forward` does, and keeps only the current state: for inference, when no
/// gradient is wanted. hs, h_T and c_T have the bits of `forward`'s hs and final states (the same arithmetic per
/// element); memory beyond the outputs is one step's gates [B, G*H] and the packed weights, whatever T is.
/// shape, forget_gate, inputs, weights, lengths, packed, handoffs   in   as for `forward`
/// outputs      out  hs, h_T, c_T (see Outputs)
template <class Scalar>
void forward_inference(const Shape& shape, bool forget_gate, const Inputs<Scalar>& inputs,
                       const Weights<Scalar>& weights, const Outputs<Scalar>& outputs,
                       ConstLengthsRef lengths = IndexVector(), const Packed<Scalar>& packed = Packed<Scalar>(),
                       const Handoffs& handoffs = Handoffs());

/// Backpropagation through time for `forward`, from upstream gradients on every h_t and on the final C_T.
/// Per step, from t = T down to 1 (dh_t includes dz_{t+1} W_hᵀ, dC_t includes dC_{t+1} * f_{t+1}):
///   dC_t += dh_t * o_t * (1 - tanh²C_t);  dz_o = dh_t * tanh C_t * o(1-o);  dz_i = dC_t * g * i(1-i);
///   dz_g = dC_t * i * (1-g²);  dz_f = dC_t * C_{t-1} * f(1-f)
/// (with a projection the gates see dL/dm_t = dh_t W_hrᵀ in place of dh_t, m_t = o_t * tanh C_t)
/// and the whole-sequence products dW_x = Xᵀ dZ, dW_h = H_prevᵀ dZ, db = colsum(dZ), dx = dZ W_xᵀ (and
/// dW_hr = Mᵀ dH), computed a block of backward_block_steps(B, G*H (+ P with a projection)) steps at a time.
/// shape, forget_gate, inputs, weights (W_x, W_h, W_hr), cache, lengths, packed   in   as given to / written by
///                                                                                 `forward`
/// upstream     in   dhs, dc_T (see Upstream)
/// gradients    out  dx, dh0, dc0, dW_x, dW_h, db, dW_hr (see Gradients)
/// options      in   accumulate, dh_norms, need_dx, need_weight_gradients (see BackwardOptions); with accumulate,
///                   segments that start at multiples of the block (above), run last first with dh0/dc0
///                   passed on as the next segment's dhs (its last step) and dc_T, give the bits of one call over
///                   the whole sequence
/// Allocates scratch of one block of steps ([block*B, G*H (+ P)] and [block*B, P]) and a few [B, H] matrices per
/// call, none inside the time loop; memory beyond the outputs does not grow with T.
/// handoffs     in   optional: a wavefront of layers, backwards (see Handoffs): a step waits for the rows of dhs
///                   it reads, which the layer above writes as its dx as this call runs, and dx's steps (counted
///                   from the last) are published as they are written (dx then a step at a time); the same bits
template <class Scalar>
void backward(const Shape& shape, bool forget_gate, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& upstream, const Gradients<Scalar>& gradients,
              ConstLengthsRef lengths = IndexVector(), const BackwardOptions<Scalar>& options = {},
              const Packed<Scalar>& packed = Packed<Scalar>(), const Handoffs& handoffs = Handoffs());

/// The weights packed for `forward`, `forward_inference` and `backward` (see Packed): [W_x; W_h] for a step's
/// product and W_hᵀ for BPTT's, and W_hr and W_hrᵀ with a projection. Reads W_x, W_h, W_hr (b is not packed).
template <class Scalar>
Packed<Scalar> pack(bool forget_gate, const Weights<Scalar>& weights);

}  // namespace fastbptt::lstm
