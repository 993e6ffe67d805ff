// Binding of the plain RNN kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/rnn.hpp"

#include <string>

#include "array_cache.hpp"
#include "arrays.hpp"
#include "backward_call.hpp"

namespace fastbptt::bindings {
namespace {

/// The arrays every RNN call reads besides the cache, as the core's structs of views.
template <class Scalar>
struct RnnArguments {
  Shape s;
  Activation phi;
  rnn::Inputs<Scalar> inputs;
  rnn::Weights<Scalar> weights;

  RnnArguments(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh, const Array<Scalar>& h0,
               const std::string& activation)
      : s(sequence_shape(x, W_hh.ndim() == 2 ? W_hh.shape(0) : 0)), phi(parse_activation(activation)) {
    inputs.x = as_matrix(x, "x", 3);
    weights.W_xh = as_matrix(W_xh, "W_xh", 2);
    weights.W_hh = as_matrix(W_hh, "W_hh", 2);
    inputs.h0 = as_matrix(h0, "h0", 2);
  }
};

/// What a forward reads: the arrays of every call, the bias and the lengths.
template <class Scalar>
struct RnnForwardArguments : RnnArguments<Scalar> {
  Eigen::Map<const IndexVector> lengths;

  RnnForwardArguments(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                      const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                      const LengthsArray& lengths_array)
      : RnnArguments<Scalar>(x, W_xh, W_hh, h0, activation), lengths(as_lengths(lengths_array)) {
    this->weights.b_h = as_vector(b_h, "b_h");
  }
};

template <class Scalar>
Array<Scalar> rnn_forward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                          const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                          const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                          const std::optional<Array<Scalar>>& hs_out, OrNone<const StepHandoff> input_ready,
                          OrNone<StepHandoff> output_ready) {
  const RnnForwardArguments<Scalar> a(x, W_xh, W_hh, b_h, h0, activation, lengths);
  auto hs = given_or_new<Scalar>(hs_out, {a.s.T, a.s.B, a.s.H}, "hs_out");
  rnn::Cache<Scalar> cache;
  cache.hs = as_mutable_matrix(hs);
  {
    py::gil_scoped_release release;
    rnn::forward<Scalar>(a.s, a.phi, a.inputs, a.weights, cache, a.lengths, kept_or_none(packed),
                         Handoffs{input_ready, output_ready});
  }
  return hs;
}

/// (hs, h_T): the forward for inference.
template <class Scalar>
py::tuple rnn_forward_inference(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                                const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                                const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                                const std::optional<Array<Scalar>>& hs_out, OrNone<const StepHandoff> input_ready,
                                OrNone<StepHandoff> output_ready) {
  const RnnForwardArguments<Scalar> a(x, W_xh, W_hh, b_h, h0, activation, lengths);
  auto hs = given_or_new<Scalar>(hs_out, {a.s.T, a.s.B, a.s.H}, "hs_out");
  auto h_T = new_array<Scalar>({a.s.B, a.s.H});
  rnn::Outputs<Scalar> outputs;
  outputs.hs = as_mutable_matrix(hs);
  outputs.h_T = as_mutable_matrix(h_T);
  {
    py::gil_scoped_release release;
    rnn::forward_inference<Scalar>(a.s, a.phi, a.inputs, a.weights, outputs, a.lengths, kept_or_none(packed),
                                   Handoffs{input_ready, output_ready});
  }
  return py::make_tuple(hs, h_T);
}

template <class Scalar>
py::tuple rnn_backward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                       const Array<Scalar>& h0, const Array<Scalar>& hs, const Array<Scalar>& dhs,
                       const std::string& activation, const LengthsArray& lengths, bool hidden_grad_norms,
                       bool need_dx, bool need_weight_grads, OrNone<const Packed<Scalar>> packed, bool need_dz,
                       const std::optional<Array<Scalar>>& dx_out, OrNone<const StepHandoff> input_ready,
                       OrNone<StepHandoff> output_ready) {
  const RnnArguments<Scalar> a(x, W_xh, W_hh, h0, activation);
  const Shape& s = a.s;
  rnn::Cache<const Scalar> cache;
  cache.hs = as_matrix(hs, "hs", 3);
  rnn::Upstream<Scalar> upstream;
  upstream.dhs = as_matrix(dhs, "dhs", 3);
  const auto lengths_v = as_lengths(lengths);
  BackwardCall<Scalar> call(s, hidden_grad_norms, need_dx, need_weight_grads, need_dz ? s.H : 0);
  rnn::Gradients<Scalar> g;
  const auto dx = call.output(need_dx, {s.T, s.B, s.D}, g.dx, dx_out);
  const auto dh0 = call.output(true, {s.B, s.H}, g.dh0);
  const auto dW_xh = call.output(need_weight_grads, {s.D, s.H}, g.dW_xh);
  const auto dW_hh = call.output(need_weight_grads, {s.H, s.H}, g.dW_hh);
  const auto db_h = call.output(need_weight_grads, {s.H}, g.db_h);
  {
    py::gil_scoped_release release;
    rnn::backward<Scalar>(s, a.phi, a.inputs, a.weights, cache, upstream, g, lengths_v, call.options,
                          kept_or_none(packed), Handoffs{input_ready, output_ready});
  }
  return call.result(
      {array_or_none(dx), array_or_none(dh0), array_or_none(dW_xh), array_or_none(dW_hh), array_or_none(db_h)});
}

/// The weights packed once for later calls (see fastbptt::Packed).
template <class Scalar>
Packed<Scalar> rnn_pack(const Array<Scalar>& W_xh, const Array<Scalar>& W_hh) {
  rnn::Weights<Scalar> weights;
  weights.W_xh = as_matrix(W_xh, "W_xh", 2);
  weights.W_hh = as_matrix(W_hh, "W_hh", 2);
  py::gil_scoped_release release;
  return rnn::pack<Scalar>(weights);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("rnn_pack", &rnn_pack<Scalar>, py::arg("W_xh").noconvert(), py::arg("W_hh").noconvert(),
        "[W_xh; W_hh] and W_hhᵀ packed for the RNN's products, kept across calls (packed= of the RNN's kernels).");
  m.def("rnn_forward", &rnn_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("b_h").noconvert(), py::arg("h0").noconvert(), py::arg("activation"),
        py::arg("lengths").noconvert(), py::arg("packed") = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "hs [T,B,H] = RNN forward over x [T,B,D]; see fastbptt.rnn_forward. packed: rnn_pack's, or None.");
  m.def("rnn_forward_inference", &rnn_forward_inference<Scalar>, py::arg("x").noconvert(),
        py::arg("W_xh").noconvert(), py::arg("W_hh").noconvert(), py::arg("b_h").noconvert(),
        py::arg("h0").noconvert(), py::arg("activation"), py::arg("lengths").noconvert(),
        py::arg("packed") = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "(hs, h_T) = RNN forward over x [T,B,D] for inference; rnn_forward's bits.");
  m.def("rnn_backward", &rnn_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("h0").noconvert(), py::arg("hs").noconvert(),
        py::arg("dhs").noconvert(), py::arg("activation"), py::arg("lengths").noconvert(),
        py::arg("hidden_grad_norms") = false, py::arg("need_dx") = true, py::arg("need_weight_grads") = true,
        py::arg("packed") = py::none(), py::arg("need_dz") = false, FASTBPTT_BACKWARD_WAVEFRONT_ARGS,
        "(dx, dh0, dW_xh, dW_hh, db_h[, dh_norms [T+1,B]][, dz [T,B,H]]) = BPTT of the RNN; see fastbptt.rnn_backward. "
        "dx is None without need_dx, and dW_xh, dW_hh, db_h are None without need_weight_grads (not computed).");
}

}  // namespace

void bind_rnn(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
