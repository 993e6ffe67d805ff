// Binding of the LSTM kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/lstm.hpp"

#include <pybind11/stl.h>

#include <optional>

#include "array_cache.hpp"
#include "arrays.hpp"
#include "backward_call.hpp"

namespace fastbptt::bindings {
namespace {

/// The projection's weights W_hr [H, P], or None (no projection).
template <class Scalar>
using OptionalArray = std::optional<Array<Scalar>>;

/// H: the rows of W_hr [H, P] with a projection, of W_h [H, G*H] without (0 for a matrix of another rank, which the
/// views' checks refuse).
template <class Scalar>
Index units(const Array<Scalar>& W_h, const OptionalArray<Scalar>& W_hr) {
  const py::array& rows_of = W_hr ? static_cast<const py::array&>(*W_hr) : W_h;
  return rows_of.ndim() == 2 ? rows_of.shape(0) : 0;
}

/// The arrays every LSTM call reads besides the cache, as the core's structs of views; H is the units' count (W_hr's
/// rows with a projection, W_h's without) and P the state's features.
template <class Scalar>
struct LstmArguments {
  Shape s;
  Index P;
  lstm::Inputs<Scalar> inputs;
  lstm::Weights<Scalar> weights;

  LstmArguments(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h, const Array<Scalar>& h0,
                const Array<Scalar>& c0, const OptionalArray<Scalar>& W_hr)
      : s(sequence_shape(x, units(W_h, W_hr))), P(W_hr && W_hr->ndim() == 2 ? W_hr->shape(1) : s.H) {
    inputs.x = as_matrix(x, "x", 3);
    weights.W_x = as_matrix(W_x, "W_x", 2);
    weights.W_h = as_matrix(W_h, "W_h", 2);
    if (W_hr) weights.W_hr = as_matrix(*W_hr, "W_hr", 2);
    inputs.h0 = as_matrix(h0, "h0", 2);
    inputs.c0 = as_matrix(c0, "c0", 2);
  }
};

/// What a forward reads: the arrays of every call, the bias and the lengths.
template <class Scalar>
struct LstmForwardArguments : LstmArguments<Scalar> {
  Eigen::Map<const IndexVector> lengths;

  LstmForwardArguments(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                       const Array<Scalar>& b, const Array<Scalar>& h0, const Array<Scalar>& c0,
                       const LengthsArray& lengths_array, const OptionalArray<Scalar>& W_hr)
      : LstmArguments<Scalar>(x, W_x, W_h, h0, c0, W_hr), lengths(as_lengths(lengths_array)) {
    this->weights.b = as_vector(b, "b");
  }
};

template <class Scalar>
py::tuple lstm_forward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                       const Array<Scalar>& b, const Array<Scalar>& h0, const Array<Scalar>& c0, bool forget_gate,
                       const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                       const OptionalArray<Scalar>& W_hr, const OptionalArray<Scalar>& hs_out,
                       OrNone<const StepHandoff> input_ready, OrNone<StepHandoff> output_ready) {
  const LstmForwardArguments<Scalar> a(x, W_x, W_h, b, h0, c0, lengths, W_hr);
  const Shape& s = a.s;
  auto hs = given_or_new<Scalar>(hs_out, {s.T, s.B, a.P}, "hs_out");
  auto cs = new_array<Scalar>({s.T, s.B, s.H});
  auto gates = new_array<Scalar>({s.T, s.B, lstm::gate_count(forget_gate) * s.H});
  lstm::Cache<Scalar> cache;
  cache.gates = as_mutable_matrix(gates);
  cache.hs = as_mutable_matrix(hs);
  cache.cs = as_mutable_matrix(cs);
  {
    py::gil_scoped_release release;
    lstm::forward<Scalar>(s, forget_gate, a.inputs, a.weights, cache, a.lengths, kept_or_none(packed),
                          Handoffs{input_ready, output_ready});
  }
  return py::make_tuple(hs, cs, gates);
}

/// (hs, h_T, c_T): the forward without the training cache.
template <class Scalar>
py::tuple lstm_forward_inference(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                                 const Array<Scalar>& b, const Array<Scalar>& h0, const Array<Scalar>& c0,
                                 bool forget_gate, const LengthsArray& lengths, OrNone<const Packed<Scalar>> packed,
                                 const OptionalArray<Scalar>& W_hr, const OptionalArray<Scalar>& hs_out,
                                 OrNone<const StepHandoff> input_ready, OrNone<StepHandoff> output_ready) {
  const LstmForwardArguments<Scalar> a(x, W_x, W_h, b, h0, c0, lengths, W_hr);
  auto hs = given_or_new<Scalar>(hs_out, {a.s.T, a.s.B, a.P}, "hs_out");
  auto h_T = new_array<Scalar>({a.s.B, a.P});
  auto c_T = new_array<Scalar>({a.s.B, a.s.H});
  lstm::Outputs<Scalar> outputs;
  outputs.hs = as_mutable_matrix(hs);
  outputs.h_T = as_mutable_matrix(h_T);
  outputs.c_T = as_mutable_matrix(c_T);
  {
    py::gil_scoped_release release;
    lstm::forward_inference<Scalar>(a.s, forget_gate, a.inputs, a.weights, outputs, a.lengths,
                                    kept_or_none(packed), Handoffs{input_ready, output_ready});
  }
  return py::make_tuple(hs, h_T, c_T);
}

/// The weight-gradient arrays of a backward call: fresh ones, given ones (checkpointed BPTT adds to them), or none
/// when the weights need no gradient.
template <class Scalar>
struct WeightGradientArrays {
  std::optional<Array<Scalar>> dW_x, dW_h, db, dW_hr;
};

/// The LSTM's BPTT, the weight gradients into `weights` (overwritten, or added to with options.accumulate; left
/// alone without options.need_weight_gradients); returns (dx or None, dh0, dc0).
template <class Scalar>
py::tuple backward_into(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                        const Array<Scalar>& h0, const Array<Scalar>& c0, const Array<Scalar>& gates,
                        const Array<Scalar>& hs, const Array<Scalar>& cs, const Array<Scalar>& dhs,
                        const Array<Scalar>& dc_T, bool forget_gate, WeightGradientArrays<Scalar>& weights,
                        const LengthsArray& lengths, const BackwardOptions<Scalar>& options,
                        OrNone<const Packed<Scalar>> packed = {}, const OptionalArray<Scalar>& W_hr = std::nullopt,
                        const OptionalArray<Scalar>& dx_out = std::nullopt, const Handoffs& handoffs = Handoffs()) {
  const LstmArguments<Scalar> a(x, W_x, W_h, h0, c0, W_hr);
  const Shape& s = a.s;
  lstm::Cache<const Scalar> cache;
  cache.gates = as_matrix(gates, "gates", 3);
  cache.hs = as_matrix(hs, "hs", 3);
  cache.cs = as_matrix(cs, "cs", 3);
  lstm::Upstream<Scalar> upstream;
  upstream.dhs = as_matrix(dhs, "dhs", 3);
  upstream.dc_T = as_matrix(dc_T, "dc_T", 2);
  const auto lengths_v = as_lengths(lengths);
  lstm::Gradients<Scalar> gradients;
  if (options.need_weight_gradients) {
    check_ndim(*weights.dW_x, "dW_x", 2);
    check_ndim(*weights.dW_h, "dW_h", 2);
    check_ndim(*weights.db, "db", 1);
    gradients.dW_x = as_mutable_matrix(*weights.dW_x);
    gradients.dW_h = as_mutable_matrix(*weights.dW_h);
    gradients.db = as_mutable_vector(*weights.db);
    if (weights.dW_hr) gradients.dW_hr = as_mutable_matrix(*weights.dW_hr);
  }
  std::optional<Array<Scalar>> dx;
  if (options.need_dx) {
    dx = given_or_new<Scalar>(dx_out, {s.T, s.B, s.D}, "dx_out");
    gradients.dx = as_mutable_matrix(*dx);
  }
  auto dh0 = new_array<Scalar>({s.B, a.P});
  auto dc0 = new_array<Scalar>({s.B, s.H});
  gradients.dh0 = as_mutable_matrix(dh0);
  gradients.dc0 = as_mutable_matrix(dc0);
  {
    py::gil_scoped_release release;
    lstm::backward<Scalar>(s, forget_gate, a.inputs, a.weights, cache, upstream, gradients, lengths_v, options,
                           kept_or_none(packed), handoffs);
  }
  return py::make_tuple(array_or_none(dx), dh0, dc0);
}

template <class Scalar>
py::tuple lstm_backward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                        const Array<Scalar>& h0, const Array<Scalar>& c0, const Array<Scalar>& gates,
                        const Array<Scalar>& hs, const Array<Scalar>& cs, const Array<Scalar>& dhs,
                        const Array<Scalar>& dc_T, bool forget_gate, const LengthsArray& lengths,
                        bool hidden_grad_norms, bool need_dx, bool need_weight_grads,
                        OrNone<const Packed<Scalar>> packed, const OptionalArray<Scalar>& W_hr, bool need_dz,
                        const OptionalArray<Scalar>& dx_out,
                        OrNone<const StepHandoff> input_ready, OrNone<StepHandoff> output_ready) {
  const LstmArguments<Scalar> a(x, W_x, W_h, h0, c0, W_hr);
  const Shape& s = a.s;
  const Index GH = lstm::gate_count(forget_gate) * s.H;
  BackwardCall<Scalar> call(s, hidden_grad_norms, need_dx, need_weight_grads, need_dz ? GH + (W_hr ? a.P : 0) : 0);
  WeightGradientArrays<Scalar> weights;
  if (need_weight_grads) {
    weights.dW_x = new_array<Scalar>({s.D, GH});
    weights.dW_h = new_array<Scalar>({a.P, GH});
    weights.db = new_array<Scalar>({GH});
    if (W_hr) weights.dW_hr = new_array<Scalar>({s.H, a.P});
  }
  const py::tuple d = backward_into<Scalar>(x, W_x, W_h, h0, c0, gates, hs, cs, dhs, dc_T, forget_gate, weights,
                                            lengths, call.options, packed, W_hr, dx_out,
                                            Handoffs{input_ready, output_ready});
  if (!W_hr) {
    return call.result({d[0], d[1], d[2], array_or_none(weights.dW_x), array_or_none(weights.dW_h),
                        array_or_none(weights.db)});
  }
  return call.result({d[0], d[1], d[2], array_or_none(weights.dW_x), array_or_none(weights.dW_h),
                      array_or_none(weights.db), array_or_none(weights.dW_hr)});
}

/// BPTT over one segment of a longer sequence, its weight gradients added to dW_x, dW_h, db (checkpointed BPTT).
template <class Scalar>
py::tuple lstm_backward_into(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                             const Array<Scalar>& h0, const Array<Scalar>& c0, const Array<Scalar>& gates,
                             const Array<Scalar>& hs, const Array<Scalar>& cs, const Array<Scalar>& dhs,
                             const Array<Scalar>& dc_T, bool forget_gate, Array<Scalar> dW_x, Array<Scalar> dW_h,
                             Array<Scalar> db, bool need_dx, bool need_weight_grads) {
  BackwardOptions<Scalar> options;
  options.accumulate = true;
  options.need_dx = need_dx;
  options.need_weight_gradients = need_weight_grads;
  WeightGradientArrays<Scalar> weights{dW_x, dW_h, db};
  return backward_into<Scalar>(x, W_x, W_h, h0, c0, gates, hs, cs, dhs, dc_T, forget_gate, weights,
                               LengthsArray(0), options);
}

/// The weights packed once for later calls (see fastbptt::Packed).
template <class Scalar>
Packed<Scalar> lstm_pack(const Array<Scalar>& W_x, const Array<Scalar>& W_h, bool forget_gate,
                         const OptionalArray<Scalar>& W_hr) {
  lstm::Weights<Scalar> weights;
  weights.W_x = as_matrix(W_x, "W_x", 2);
  weights.W_h = as_matrix(W_h, "W_h", 2);
  if (W_hr) weights.W_hr = as_matrix(*W_hr, "W_hr", 2);
  py::gil_scoped_release release;
  return lstm::pack<Scalar>(forget_gate, weights);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("lstm_pack", &lstm_pack<Scalar>, py::arg("W_x").noconvert(), py::arg("W_h").noconvert(),
        py::arg("forget_gate"), py::arg("W_hr").noconvert() = py::none(),
        "[W_x; W_h], W_hᵀ (and W_hr, W_hrᵀ) packed for the LSTM's products, kept across calls (packed= of the "
        "LSTM's kernels).");
  m.def("lstm_forward", &lstm_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("b").noconvert(), py::arg("h0").noconvert(), py::arg("c0").noconvert(),
        py::arg("forget_gate"), py::arg("lengths").noconvert(),
        py::arg("packed") = py::none(), py::arg("W_hr").noconvert() = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "(hs, cs, gates) = LSTM forward over x [T,B,D]; see fastbptt.lstm_forward. W_hr: the projection or None.");
  m.def("lstm_forward_inference", &lstm_forward_inference<Scalar>, py::arg("x").noconvert(),
        py::arg("W_x").noconvert(), py::arg("W_h").noconvert(), py::arg("b").noconvert(), py::arg("h0").noconvert(),
        py::arg("c0").noconvert(), py::arg("forget_gate"), py::arg("lengths").noconvert(),
        py::arg("packed") = py::none(), py::arg("W_hr").noconvert() = py::none(), FASTBPTT_WAVEFRONT_ARGS,
        "(hs, h_T, c_T) = LSTM forward over x [T,B,D] keeping no cache for backward; lstm_forward's bits.");
  m.def("lstm_backward", &lstm_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("h0").noconvert(), py::arg("c0").noconvert(),
        py::arg("gates").noconvert(), py::arg("hs").noconvert(), py::arg("cs").noconvert(),
        py::arg("dhs").noconvert(), py::arg("dc_T").noconvert(), py::arg("forget_gate"),
        py::arg("lengths").noconvert(), py::arg("hidden_grad_norms") = false, py::arg("need_dx") = true,
        py::arg("need_weight_grads") = true, py::arg("packed") = py::none(),
        py::arg("W_hr").noconvert() = py::none(), py::arg("need_dz") = false, FASTBPTT_BACKWARD_WAVEFRONT_ARGS,
        "(dx, dh0, dc0, dW_x, dW_h, db[, dW_hr][, dh_norms [T+1,B]][, dz [T,B,GH(+P)]]) = BPTT of the LSTM; see "
        "fastbptt.lstm_backward. dW_hr with a projection W_hr; dx is None without need_dx, and the weights' "
        "gradients are None without need_weight_grads (not computed).");
  m.def("lstm_backward_into", &lstm_backward_into<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("h0").noconvert(), py::arg("c0").noconvert(),
        py::arg("gates").noconvert(), py::arg("hs").noconvert(), py::arg("cs").noconvert(),
        py::arg("dhs").noconvert(), py::arg("dc_T").noconvert(), py::arg("forget_gate"),
        py::arg("dW_x").noconvert(), py::arg("dW_h").noconvert(), py::arg("db").noconvert(),
        py::arg("need_dx") = true, py::arg("need_weight_grads") = true,
        "(dx, dh0, dc0) = BPTT of one segment, its weight gradients added to dW_x, dW_h, db in place "
        "(left alone without need_weight_grads); dx is None without need_dx.");
}

}  // namespace

void bind_lstm(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
