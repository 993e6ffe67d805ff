// The layer-normalised LSTM (Ba, Kiros & Hinton 2016, in the form of haste's LayerNormLSTM): forward and BPTT.
//
// With LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over a row's features (biased variance):
//   z_t = LN(x_t W_x) * gamma_ih + LN(h_{t-1} W_h) * gamma_hh + b      (over all 4H pre-activations; blocks i, f, g, o)
//   C_t = sigmoid(z_f) * C_{t-1} + sigmoid(z_i) * tanh(z_g)
//   h_t = sigmoid(z_o) * tanh(LN(C_t) * gamma_c + beta_c)                (over H)
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::layer_norm_lstm {

/// Gate blocks i, f, g, o.
constexpr Index gate_count = 4;

/// The epsilon of every normalisation (torch.nn.functional.layer_norm's default).
constexpr double epsilon = 1e-5;

/// What every call reads besides the weights.
template <class Scalar>
struct Inputs {
  MatrixView<const Scalar> x;   ///< [T*B, D]  in  step t is rows t*B .. t*B+B-1 (time-major)
  MatrixView<const Scalar> h0;  ///< [B, H]    in
  MatrixView<const Scalar> c0;  ///< [B, H]    in
};

/// The parameters.
template <class Scalar>
struct Weights {
  MatrixView<const Scalar> W_x;       ///< [D, 4H]  in  gate column blocks i, f, g, o
  MatrixView<const Scalar> W_h;       ///< [H, 4H]  in
  VectorView<const Scalar> b;         ///< [4H]     in  (forward only)
  VectorView<const Scalar> gamma_ih;  ///< [4H]     in  the scale of LN(x W_x)
  VectorView<const Scalar> gamma_hh;  ///< [4H]     in  the scale of LN(h W_h)
  VectorView<const Scalar> gamma_c;   ///< [H]      in  the scale of LN(C)
  VectorView<const Scalar> beta_c;    ///< [H]      in  the shift of LN(C)
};

/// What `forward` keeps for `backward` (Element = Scalar when written, const Scalar when read).
template <class Element>
struct Cache {
  MatrixView<Element> gates;    ///< [T*B, 4H]  activated gates i, f, g, o of every step
  MatrixView<Element> x_hat;    ///< [T*B, 4H]  LN(x_t W_x) before gamma_ih
  MatrixView<Element> h_hat;    ///< [T*B, 4H]  LN(h_{t-1} W_h) before gamma_hh
  MatrixView<Element> cs;       ///< [T*B, H]   C_1 .. C_T
  MatrixView<Element> c_hat;    ///< [T*B, H]   LN(C_t) before gamma_c
  MatrixView<Element> hs;       ///< [T*B, H]   h_1 .. h_T
  MatrixView<Element> inv_std;  ///< [T*B, 3]   1 / sqrt(var + epsilon) of the three normalisations, in that order

  template <class E = Element, class = std::enable_if_t<!std::is_const_v<E>>>
  operator Cache<const E>() const {  // NOLINT(google-explicit-constructor)
    return {gates, x_hat, h_hat, cs, c_hat, hs, inv_std};
  }
};

/// What `forward_inference` writes.
template <class Scalar>
struct Outputs {
  MatrixView<Scalar> hs;   ///< [T*B, H]  out  h_1 .. h_T (rows past a sequence's end are zero)
  MatrixView<Scalar> h_T;  ///< [B, H]    out  each sequence's state after its last step
  MatrixView<Scalar> c_T;  ///< [B, H]    out
};

/// The gradients that reach the outputs from above.
template <class Scalar>
struct Upstream {
  MatrixView<const Scalar> dhs;   ///< [T*B, H]  in  dL/dh_t (as lstm::Upstream)
  MatrixView<const Scalar> dc_T;  ///< [B, H]    in  dL/dC on each sequence's final cell state
};

/// What `backward` computes (the weights' gradients overwritten, or added to with options.accumulate).
template <class Scalar>
struct Gradients {
  MatrixView<Scalar> dx;        ///< [T*B, D]  out
  MatrixView<Scalar> dh0;       ///< [B, H]    out
  MatrixView<Scalar> dc0;       ///< [B, H]    out
  MatrixView<Scalar> dW_x;      ///< [D, 4H]   out
  MatrixView<Scalar> dW_h;      ///< [H, 4H]   out
  VectorView<Scalar> db;        ///< [4H]      out
  VectorView<Scalar> dgamma_ih;  ///< [4H]     out
  VectorView<Scalar> dgamma_hh;  ///< [4H]     out
  VectorView<Scalar> dgamma_c;   ///< [H]      out
  VectorView<Scalar> dbeta_c;    ///< [H]      out
};

/// Runs the cell over all T steps and keeps what `backward` needs. The input projections of all steps are one
/// product (x W_x, normalised row by row); each step multiplies h_{t-1} W_h, and one pass over each row's units
/// (the statistics need the whole row: the step runs on one thread) normalises, applies the gates, normalises C_t
/// and writes h_t. A sequence run in chunks with (h, C) carried gives the bits of one run.
/// shape        in   T, B, D, H (all >= 1)
/// inputs, weights, cache (out), lengths   as for lstm::forward
template <class Scalar>
void forward(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
             const Cache<Scalar>& cache, ConstLengthsRef lengths = IndexVector());

/// The forward keeping only the current state (`forward`'s bits; memory beyond the outputs does not grow with T).
template <class Scalar>
void forward_inference(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
                       const Outputs<Scalar>& outputs, ConstLengthsRef lengths = IndexVector());

/// Backpropagation through time for `forward`. Per step, from t = T down to 1, with dh = dL/dh_t and LN'(d, v̂, s)
/// = s (d - mean(d) - v̂ mean(d v̂)) the gradient through a normalisation of inverse deviation s:
///   dy = dh o (1 - tanh²y), y = Ĉ gamma_c + beta_c;  dC_t += LN'(dy gamma_c, Ĉ, s_c);  dz as the LSTM's;
///   dL/d(h_{t-1} W_h) = LN'(dz gamma_hh, ĥ, s_h);  dL/d(x_t W_x) = LN'(dz gamma_ih, x̂, s_x)
/// and dW_x, dW_h, dx from those a block of steps at a time; the vectors' gradients are summed row by row.
/// inputs, weights (W_x, W_h and the gammas), cache, lengths   as given to / written by `forward`
/// upstream, gradients, options   as for lstm::backward (no checkpointed segments)
template <class Scalar>
void backward(const Shape& shape, const Inputs<Scalar>& inputs, const Weights<Scalar>& weights,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& upstream, const Gradients<Scalar>& gradients,
              ConstLengthsRef lengths = IndexVector(), const BackwardOptions<Scalar>& options = {});

}  // namespace fastbptt::layer_norm_lstm
