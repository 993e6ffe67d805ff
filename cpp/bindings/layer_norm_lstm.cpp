// Binding of the layer-normalised LSTM's kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/layer_norm_lstm.hpp"

#include "array_cache.hpp"
#include "arrays.hpp"
#include "backward_call.hpp"

namespace fastbptt::bindings {
namespace {

namespace ln = layer_norm_lstm;

/// The arrays every call reads besides the cache and the bias, as the core's structs of views.
template <class Scalar>
struct LayerNormArguments {
  Shape s;
  ln::Inputs<Scalar> inputs;
  ln::Weights<Scalar> weights;

  LayerNormArguments(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                     const Array<Scalar>& gamma_ih, const Array<Scalar>& gamma_hh, const Array<Scalar>& gamma_c,
                     const Array<Scalar>& beta_c, const Array<Scalar>& h0, const Array<Scalar>& c0)
      : s(sequence_shape(x, W_h.ndim() == 2 ? W_h.shape(0) : 0)) {
    inputs.x = as_matrix(x, "x", 3);
    inputs.h0 = as_matrix(h0, "h0", 2);
    inputs.c0 = as_matrix(c0, "c0", 2);
    weights.W_x = as_matrix(W_x, "W_x", 2);
    weights.W_h = as_matrix(W_h, "W_h", 2);
    weights.gamma_ih = as_vector(gamma_ih, "gamma_ih");
    weights.gamma_hh = as_vector(gamma_hh, "gamma_hh");
    weights.gamma_c = as_vector(gamma_c, "gamma_c");
    weights.beta_c = as_vector(beta_c, "beta_c");
  }
};

/// (hs, cs, gates, x_hat, h_hat, c_hat, inv_std) of the training forward, or (hs, h_T, c_T) with `inference`.
template <class Scalar>
py::tuple forward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h, const Array<Scalar>& b,
                  const Array<Scalar>& gamma_ih, const Array<Scalar>& gamma_hh, const Array<Scalar>& gamma_c,
                  const Array<Scalar>& beta_c, const Array<Scalar>& h0, const Array<Scalar>& c0,
                  const LengthsArray& lengths, bool inference) {
  LayerNormArguments<Scalar> a(x, W_x, W_h, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0);
  a.weights.b = as_vector(b, "b");
  const Shape& s = a.s;
  const auto lengths_v = as_lengths(lengths);
  const Index GH = ln::gate_count * s.H;
  auto hs = new_array<Scalar>({s.T, s.B, s.H});
  if (inference) {
    auto h_T = new_array<Scalar>({s.B, s.H});
    auto c_T = new_array<Scalar>({s.B, s.H});
    ln::Outputs<Scalar> outputs;
    outputs.hs = as_mutable_matrix(hs);
    outputs.h_T = as_mutable_matrix(h_T);
    outputs.c_T = as_mutable_matrix(c_T);
    {
      py::gil_scoped_release release;
      ln::forward_inference<Scalar>(s, a.inputs, a.weights, outputs, lengths_v);
    }
    return py::make_tuple(hs, h_T, c_T);
  }
  auto cs = new_array<Scalar>({s.T, s.B, s.H});
  auto gates = new_array<Scalar>({s.T, s.B, GH});
  auto x_hat = new_array<Scalar>({s.T, s.B, GH});
  auto h_hat = new_array<Scalar>({s.T, s.B, GH});
  auto c_hat = new_array<Scalar>({s.T, s.B, s.H});
  auto inv_std = new_array<Scalar>({s.T, s.B, 3});
  ln::Cache<Scalar> cache;
  cache.gates = as_mutable_matrix(gates);
  cache.x_hat = as_mutable_matrix(x_hat);
  cache.h_hat = as_mutable_matrix(h_hat);
  cache.cs = as_mutable_matrix(cs);
  cache.c_hat = as_mutable_matrix(c_hat);
  cache.hs = as_mutable_matrix(hs);
  cache.inv_std = as_mutable_matrix(inv_std);
  {
    py::gil_scoped_release release;
    ln::forward<Scalar>(s, a.inputs, a.weights, cache, lengths_v);
  }
  return py::make_tuple(hs, cs, gates, x_hat, h_hat, c_hat, inv_std);
}

template <class Scalar>
py::tuple backward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                   const Array<Scalar>& gamma_ih, const Array<Scalar>& gamma_hh, const Array<Scalar>& gamma_c,
                   const Array<Scalar>& beta_c, const Array<Scalar>& h0, const Array<Scalar>& c0,
                   const Array<Scalar>& gates, const Array<Scalar>& x_hat, const Array<Scalar>& h_hat,
                   const Array<Scalar>& cs, const Array<Scalar>& c_hat, const Array<Scalar>& hs,
                   const Array<Scalar>& inv_std, const Array<Scalar>& dhs, const Array<Scalar>& dc_T,
                   const LengthsArray& lengths, bool hidden_grad_norms, bool need_dx, bool need_weight_grads) {
  const LayerNormArguments<Scalar> a(x, W_x, W_h, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0);
  const Shape& s = a.s;
  const Index GH = ln::gate_count * s.H;
  ln::Cache<const Scalar> cache;
  cache.gates = as_matrix(gates, "gates", 3);
  cache.x_hat = as_matrix(x_hat, "x_hat", 3);
  cache.h_hat = as_matrix(h_hat, "h_hat", 3);
  cache.cs = as_matrix(cs, "cs", 3);
  cache.c_hat = as_matrix(c_hat, "c_hat", 3);
  cache.hs = as_matrix(hs, "hs", 3);
  cache.inv_std = as_matrix(inv_std, "inv_std", 3);
  ln::Upstream<Scalar> upstream;
  upstream.dhs = as_matrix(dhs, "dhs", 3);
  upstream.dc_T = as_matrix(dc_T, "dc_T", 2);
  const auto lengths_v = as_lengths(lengths);
  BackwardCall<Scalar> call(s, hidden_grad_norms, need_dx, need_weight_grads);
  ln::Gradients<Scalar> g;
  const auto dx = call.output(need_dx, {s.T, s.B, s.D}, g.dx);
  const auto dh0 = call.output(true, {s.B, s.H}, g.dh0);
  const auto dc0 = call.output(true, {s.B, s.H}, g.dc0);
  const auto dW_x = call.output(need_weight_grads, {s.D, GH}, g.dW_x);
  const auto dW_h = call.output(need_weight_grads, {s.H, GH}, g.dW_h);
  const auto db = call.output(need_weight_grads, {GH}, g.db);
  const auto dgamma_ih = call.output(need_weight_grads, {GH}, g.dgamma_ih);
  const auto dgamma_hh = call.output(need_weight_grads, {GH}, g.dgamma_hh);
  const auto dgamma_c = call.output(need_weight_grads, {s.H}, g.dgamma_c);
  const auto dbeta_c = call.output(need_weight_grads, {s.H}, g.dbeta_c);
  {
    py::gil_scoped_release release;
    ln::backward<Scalar>(s, a.inputs, a.weights, cache, upstream, g, lengths_v, call.options);
  }
  return call.result({array_or_none(dx), array_or_none(dh0), array_or_none(dc0), array_or_none(dW_x),
                      array_or_none(dW_h), array_or_none(db), array_or_none(dgamma_ih), array_or_none(dgamma_hh),
                      array_or_none(dgamma_c), array_or_none(dbeta_c)});
}

template <class Scalar>
void define(py::module_& m) {
  m.def("layer_norm_lstm_forward", &forward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("b").noconvert(), py::arg("gamma_ih").noconvert(),
        py::arg("gamma_hh").noconvert(), py::arg("gamma_c").noconvert(), py::arg("beta_c").noconvert(),
        py::arg("h0").noconvert(), py::arg("c0").noconvert(), py::arg("lengths").noconvert(), py::arg("inference"),
        "(hs, cs, gates, x_hat, h_hat, c_hat, inv_std) = the layer-normalised LSTM's forward over x [T,B,D], or "
        "(hs, h_T, c_T) with inference; see fastbptt.layer_norm_lstm_forward.");
  m.def("layer_norm_lstm_backward", &backward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("gamma_ih").noconvert(), py::arg("gamma_hh").noconvert(),
        py::arg("gamma_c").noconvert(), py::arg("beta_c").noconvert(), py::arg("h0").noconvert(),
        py::arg("c0").noconvert(), py::arg("gates").noconvert(), py::arg("x_hat").noconvert(),
        py::arg("h_hat").noconvert(), py::arg("cs").noconvert(), py::arg("c_hat").noconvert(),
        py::arg("hs").noconvert(), py::arg("inv_std").noconvert(), py::arg("dhs").noconvert(),
        py::arg("dc_T").noconvert(), py::arg("lengths").noconvert(), py::arg("hidden_grad_norms") = false,
        py::arg("need_dx") = true, py::arg("need_weight_grads") = true,
        "(dx, dh0, dc0, dW_x, dW_h, db, dgamma_ih, dgamma_hh, dgamma_c, dbeta_c[, dh_norms [T+1,B]]) = BPTT of the "
        "layer-normalised LSTM; see fastbptt.layer_norm_lstm_backward.");
}

}  // namespace

void bind_layer_norm_lstm(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
