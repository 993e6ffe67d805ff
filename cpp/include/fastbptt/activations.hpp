// Vectorised element-wise activations and their derivatives, written as Eigen array expressions.
// They follow IEEE arithmetic: NaN stays NaN, tanh(+-inf) = +-1, sigmoid(+inf) = 1, sigmoid(-inf) = 0.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::detail {

/// sigmoid(z) = 1 / (1 + exp(-z)); Eigen vectorises exp and the division for float and double.
template <class ArrayExpr>
auto sigmoid(const Eigen::ArrayBase<ArrayExpr>& z) {
  using Scalar = typename ArrayExpr::Scalar;
  return (Scalar(1) + (-z).exp()).inverse();
}

/// Writes phi(z) into `out` (which may alias `z`).
template <class Out, class In>
void apply_activation(Activation activation, Eigen::ArrayBase<Out>& out, const Eigen::ArrayBase<In>& z) {
  using Scalar = typename In::Scalar;
  switch (activation) {
    case Activation::tanh: out = z.tanh(); break;
    // Not max(z, 0): std::max-style selection would turn a NaN pre-activation into 0.
    case Activation::relu: out = (z < Scalar(0)).select(Scalar(0), z); break;
    case Activation::sigmoid: out = sigmoid(z); break;
  }
}

/// Writes dz = dh * phi'(z) into `dz`, with phi' expressed through h = phi(z): tanh' = 1 - h^2,
/// sigmoid' = h (1 - h), relu' = [h > 0] (0 at z = 0, as PyTorch does).
template <class Out, class Dh, class H>
void activation_backward(Activation activation, Eigen::ArrayBase<Out>& dz, const Eigen::ArrayBase<Dh>& dh,
                         const Eigen::ArrayBase<H>& h) {
  using Scalar = typename H::Scalar;
  switch (activation) {
    case Activation::tanh: dz = dh * (Scalar(1) - h.square()); break;
    case Activation::relu: dz = (h > Scalar(0)).select(dh, Scalar(0)); break;
    case Activation::sigmoid: dz = dh * h * (Scalar(1) - h); break;
  }
}

}  // namespace fastbptt::detail
