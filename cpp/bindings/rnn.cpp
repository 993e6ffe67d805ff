// Binding of the plain RNN kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/rnn.hpp"

#include <optional>
#include <vector>

#include "array_cache.hpp"
#include "arrays.hpp"

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

template <class Scalar>
Array<Scalar> rnn_forward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                          const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                          const LengthsArray& lengths) {
  RnnArguments<Scalar> a(x, W_xh, W_hh, h0, activation);
  const Shape& s = a.s;
  a.weights.b_h = as_vector(b_h, "b_h");
  const auto lengths_v = as_lengths(lengths);
  auto hs = new_array<Scalar>({s.T, s.B, s.H});
  rnn::Cache<Scalar> cache;
  cache.hs = as_mutable_matrix(hs);
  {
    py::gil_scoped_release release;
    rnn::forward<Scalar>(s, a.phi, a.inputs, a.weights, cache, lengths_v);
  }
  return hs;
}

/// (hs, h_T): the forward for inference.
template <class Scalar>
py::tuple rnn_forward_inference(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                                const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                                const LengthsArray& lengths) {
  RnnArguments<Scalar> a(x, W_xh, W_hh, h0, activation);
  const Shape& s = a.s;
  a.weights.b_h = as_vector(b_h, "b_h");
  const auto lengths_v = as_lengths(lengths);
  auto hs = new_array<Scalar>({s.T, s.B, s.H});
  auto h_T = new_array<Scalar>({s.B, s.H});
  rnn::Outputs<Scalar> outputs;
  outputs.hs = as_mutable_matrix(hs);
  outputs.h_T = as_mutable_matrix(h_T);
  {
    py::gil_scoped_release release;
    rnn::forward_inference<Scalar>(s, a.phi, a.inputs, a.weights, outputs, lengths_v);
  }
  return py::make_tuple(hs, h_T);
}

template <class Scalar>
py::tuple rnn_backward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                       const Array<Scalar>& h0, const Array<Scalar>& hs, const Array<Scalar>& dhs,
                       const std::string& activation, const LengthsArray& lengths, bool hidden_grad_norms,
                       bool need_dx, bool need_weight_grads) {
  const RnnArguments<Scalar> a(x, W_xh, W_hh, h0, activation);
  const Shape& s = a.s;
  rnn::Cache<const Scalar> cache;
  cache.hs = as_matrix(hs, "hs", 3);
  rnn::Upstream<Scalar> upstream;
  upstream.dhs = as_matrix(dhs, "dhs", 3);
  const auto lengths_v = as_lengths(lengths);
  BackwardOptions<Scalar> options;
  options.need_dx = need_dx;
  options.need_weight_gradients = need_weight_grads;
  rnn::Gradients<Scalar> gradients;
  std::optional<Array<Scalar>> dx, dW_xh, dW_hh, db_h;
  if (need_dx) {
    dx = new_array<Scalar>({s.T, s.B, s.D});
    gradients.dx = as_mutable_matrix(*dx);
  }
  auto dh0 = new_array<Scalar>({s.B, s.H});
  gradients.dh0 = as_mutable_matrix(dh0);
  if (need_weight_grads) {
    dW_xh = new_array<Scalar>({s.D, s.H});
    dW_hh = new_array<Scalar>({s.H, s.H});
    db_h = new_array<Scalar>({s.H});
    gradients.dW_xh = as_mutable_matrix(*dW_xh);
    gradients.dW_hh = as_mutable_matrix(*dW_hh);
    gradients.db_h = as_mutable_vector(*db_h);
  }
  std::optional<Array<Scalar>> norms;
  if (hidden_grad_norms) {
    norms.emplace(std::vector<py::ssize_t>{s.T + 1, s.B});
    options.dh_norms = as_mutable_matrix(*norms);
  }
  {
    py::gil_scoped_release release;
    rnn::backward<Scalar>(s, a.phi, a.inputs, a.weights, cache, upstream, gradients, lengths_v, options);
  }
  if (norms) {
    return py::make_tuple(array_or_none(dx), dh0, array_or_none(dW_xh), array_or_none(dW_hh), array_or_none(db_h),
                          *norms);
  }
  return py::make_tuple(array_or_none(dx), dh0, array_or_none(dW_xh), array_or_none(dW_hh), array_or_none(db_h));
}

template <class Scalar>
void define(py::module_& m) {
  m.def("rnn_forward", &rnn_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("b_h").noconvert(), py::arg("h0").noconvert(), py::arg("activation"),
        py::arg("lengths").noconvert(), "hs [T,B,H] = RNN forward over x [T,B,D]; see fastbptt.rnn_forward.");
  m.def("rnn_forward_inference", &rnn_forward_inference<Scalar>, py::arg("x").noconvert(),
        py::arg("W_xh").noconvert(), py::arg("W_hh").noconvert(), py::arg("b_h").noconvert(),
        py::arg("h0").noconvert(), py::arg("activation"), py::arg("lengths").noconvert(),
        "(hs, h_T) = RNN forward over x [T,B,D] for inference; rnn_forward's bits.");
  m.def("rnn_backward", &rnn_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("h0").noconvert(), py::arg("hs").noconvert(),
        py::arg("dhs").noconvert(), py::arg("activation"), py::arg("lengths").noconvert(),
        py::arg("hidden_grad_norms") = false, py::arg("need_dx") = true, py::arg("need_weight_grads") = true,
        "(dx, dh0, dW_xh, dW_hh, db_h[, dh_norms [T+1,B]]) = BPTT of the RNN; see fastbptt.rnn_backward. dx is None "
        "without need_dx, and dW_xh, dW_hh, db_h are None without need_weight_grads (not computed).");
}

}  // namespace

void bind_rnn(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
