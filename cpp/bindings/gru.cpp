// Binding of the GRU kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/gru.hpp"

#include "array_cache.hpp"
#include "arrays.hpp"
#include "backward_call.hpp"

namespace fastbptt::bindings {
namespace {

/// The arrays every GRU call reads besides the cache, as the core's structs of views.
template <class Scalar>
struct GruArguments {
  Shape s;
  gru::Inputs<Scalar> inputs;
  gru::Weights<Scalar> weights;

  GruArguments(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h, const Array<Scalar>& h0)
      : s(sequence_shape(x, W_h.ndim() == 2 ? W_h.shape(0) : 0)) {
    inputs.x = as_matrix(x, "x", 3);
    weights.W_x = as_matrix(W_x, "W_x", 2);
    weights.W_h = as_matrix(W_h, "W_h", 2);
    inputs.h0 = as_matrix(h0, "h0", 2);
  }
};

/// What a forward reads: the arrays of every call, the biases and the lengths.
template <class Scalar>
struct GruForwardArguments : GruArguments<Scalar> {
  Eigen::Map<const IndexVector> lengths;

  GruForwardArguments(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                      const Array<Scalar>& b, const Array<Scalar>& b_hn, const Array<Scalar>& h0,
                      const LengthsArray& lengths_array)
      : GruArguments<Scalar>(x, W_x, W_h, h0), lengths(as_lengths(lengths_array)) {
    this->weights.b = as_vector(b, "b");
    this->weights.b_hn = as_vector(b_hn, "b_hn");
  }
};

template <class Scalar>
py::tuple gru_forward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                      const Array<Scalar>& b, const Array<Scalar>& b_hn, const Array<Scalar>& h0,
                      const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                      const std::optional<Array<Scalar>>& hs_out, OrNone<const StepHandoff> input_ready,
                      OrNone<StepHandoff> output_ready) {
  const GruForwardArguments<Scalar> a(x, W_x, W_h, b, b_hn, h0, lengths);
  const Shape& s = a.s;
  auto hs = given_or_new<Scalar>(hs_out, {s.T, s.B, s.H}, "hs_out");
  auto hn = new_array<Scalar>({s.T, s.B, s.H});
  auto gates = new_array<Scalar>({s.T, s.B, gru::gate_count * s.H});
  gru::Cache<Scalar> cache;
  cache.gates = as_mutable_matrix(gates);
  cache.hn = as_mutable_matrix(hn);
  cache.hs = as_mutable_matrix(hs);
  {
    py::gil_scoped_release release;
    gru::forward<Scalar>(s, a.inputs, a.weights, cache, a.lengths, kept_or_none(packed),
                         Handoffs{input_ready, output_ready});
  }
  return py::make_tuple(hs, gates, hn);
}

/// (hs, h_T): the forward without the training cache.
template <class Scalar>
py::tuple gru_forward_inference(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                                const Array<Scalar>& b, const Array<Scalar>& b_hn, const Array<Scalar>& h0,
                                const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                                const std::optional<Array<Scalar>>& hs_out, OrNone<const StepHandoff> input_ready,
                                OrNone<StepHandoff> output_ready) {
  const GruForwardArguments<Scalar> a(x, W_x, W_h, b, b_hn, h0, lengths);
  auto hs = given_or_new<Scalar>(hs_out, {a.s.T, a.s.B, a.s.H}, "hs_out");
  auto h_T = new_array<Scalar>({a.s.B, a.s.H});
  gru::Outputs<Scalar> outputs;
  outputs.hs = as_mutable_matrix(hs);
  outputs.h_T = as_mutable_matrix(h_T);
  {
    py::gil_scoped_release release;
    gru::forward_inference<Scalar>(a.s, a.inputs, a.weights, outputs, a.lengths, kept_or_none(packed),
                                   Handoffs{input_ready, output_ready});
  }
  return py::make_tuple(hs, h_T);
}

template <class Scalar>
py::tuple gru_backward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                       const Array<Scalar>& h0, const Array<Scalar>& gates, const Array<Scalar>& hn,
                       const Array<Scalar>& hs, const Array<Scalar>& dhs, const LengthsArray& lengths,
                       bool hidden_grad_norms, bool need_dx, bool need_weight_grads,
                       OrNone<const Packed<Scalar>> packed, bool need_dz, const std::optional<Array<Scalar>>& dx_out,
                       OrNone<const StepHandoff> input_ready, OrNone<StepHandoff> output_ready) {
  const GruArguments<Scalar> a(x, W_x, W_h, h0);
  const Shape& s = a.s;
  const Index GH = gru::gate_count * s.H;
  gru::Cache<const Scalar> cache;
  cache.gates = as_matrix(gates, "gates", 3);
  cache.hn = as_matrix(hn, "hn", 3);
  cache.hs = as_matrix(hs, "hs", 3);
  gru::Upstream<Scalar> upstream;
  upstream.dhs = as_matrix(dhs, "dhs", 3);
  const auto lengths_v = as_lengths(lengths);
  BackwardCall<Scalar> call(s, hidden_grad_norms, need_dx, need_weight_grads, need_dz ? GH + s.H : 0);
  gru::Gradients<Scalar> g;
  const auto dx = call.output(need_dx, {s.T, s.B, s.D}, g.dx, dx_out);
  const auto dh0 = call.output(true, {s.B, s.H}, g.dh0);
  const auto dW_x = call.output(need_weight_grads, {s.D, GH}, g.dW_x);
  const auto dW_h = call.output(need_weight_grads, {s.H, GH}, g.dW_h);
  const auto db = call.output(need_weight_grads, {GH}, g.db);
  const auto db_hn = call.output(need_weight_grads, {s.H}, g.db_hn);
  {
    py::gil_scoped_release release;
    gru::backward<Scalar>(s, a.inputs, a.weights, cache, upstream, g, lengths_v, call.options, kept_or_none(packed),
                          Handoffs{input_ready, output_ready});
  }
  return call.result({array_or_none(dx), array_or_none(dh0), array_or_none(dW_x), array_or_none(dW_h),
                      array_or_none(db), array_or_none(db_hn)});
}

/// The weights packed once for later calls (see fastbptt::Packed).
template <class Scalar>
Packed<Scalar> gru_pack(const Array<Scalar>& W_x, const Array<Scalar>& W_h) {
  gru::Weights<Scalar> weights;
  weights.W_x = as_matrix(W_x, "W_x", 2);
  weights.W_h = as_matrix(W_h, "W_h", 2);
  py::gil_scoped_release release;
  return gru::pack<Scalar>(weights);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("gru_pack", &gru_pack<Scalar>, py::arg("W_x").noconvert(), py::arg("W_h").noconvert(),
        "W_x, W_h and W_hᵀ packed for the GRU's products, kept across calls (packed= of the GRU's kernels).");
  m.def("gru_forward", &gru_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("b").noconvert(), py::arg("b_hn").noconvert(),
        py::arg("h0").noconvert(), py::arg("lengths").noconvert(),
        py::arg("packed") = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "(hs, gates, hn) = GRU forward over x [T,B,D]; see fastbptt.gru_forward.");
  m.def("gru_forward_inference", &gru_forward_inference<Scalar>, py::arg("x").noconvert(),
        py::arg("W_x").noconvert(), py::arg("W_h").noconvert(), py::arg("b").noconvert(),
        py::arg("b_hn").noconvert(), py::arg("h0").noconvert(), py::arg("lengths").noconvert(),
        py::arg("packed") = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "(hs, h_T) = GRU forward over x [T,B,D] keeping no cache for backward; gru_forward's bits.");
  m.def("gru_backward", &gru_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("h0").noconvert(), py::arg("gates").noconvert(),
        py::arg("hn").noconvert(), py::arg("hs").noconvert(), py::arg("dhs").noconvert(),
        py::arg("lengths").noconvert(), py::arg("hidden_grad_norms") = false, py::arg("need_dx") = true,
        py::arg("need_weight_grads") = true, py::arg("packed") = py::none(), py::arg("need_dz") = false,
        FASTBPTT_BACKWARD_WAVEFRONT_ARGS,
        "(dx, dh0, dW_x, dW_h, db, db_hn[, dh_norms [T+1,B]][, dz [T,B,4H]: dz_r, dz_z, d(hn), dz_n]) = BPTT of the "
        "GRU; see fastbptt.gru_backward. dx is None without need_dx, and dW_x, dW_h, db, db_hn are None without "
        "need_weight_grads (not computed).");
}

}  // namespace

void bind_gru(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
