// Binding of the plain RNN kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/rnn.hpp"

#include <optional>
#include <vector>

#include "array_cache.hpp"
#include "arrays.hpp"

namespace fastbptt::bindings {
namespace {

template <class Scalar>
Array<Scalar> rnn_forward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                          const Array<Scalar>& b_h, const Array<Scalar>& h0, const std::string& activation,
                          const LengthsArray& lengths) {
  const Shape s = sequence_shape(x, W_hh.ndim() == 2 ? W_hh.shape(0) : 0);
  const Activation phi = parse_activation(activation);
  const auto x_m = as_matrix(x, "x", 3);
  const auto W_xh_m = as_matrix(W_xh, "W_xh", 2);
  const auto W_hh_m = as_matrix(W_hh, "W_hh", 2);
  const auto b_h_v = as_vector(b_h, "b_h");
  const auto h0_m = as_matrix(h0, "h0", 2);
  const auto lengths_v = as_lengths(lengths);
  auto hs = new_array<Scalar>({s.T, s.B, s.H});
  auto hs_m = as_mutable_matrix(hs);
  {
    py::gil_scoped_release release;
    rnn::forward<Scalar>(s, phi, x_m, W_xh_m, W_hh_m, b_h_v, h0_m, hs_m, lengths_v);
  }
  return hs;
}

template <class Scalar>
py::tuple rnn_backward(const Array<Scalar>& x, const Array<Scalar>& W_xh, const Array<Scalar>& W_hh,
                       const Array<Scalar>& h0, const Array<Scalar>& hs, const Array<Scalar>& dhs,
                       const std::string& activation, const LengthsArray& lengths, bool hidden_grad_norms) {
  const Shape s = sequence_shape(x, W_hh.ndim() == 2 ? W_hh.shape(0) : 0);
  const Activation phi = parse_activation(activation);
  const auto x_m = as_matrix(x, "x", 3);
  const auto W_xh_m = as_matrix(W_xh, "W_xh", 2);
  const auto W_hh_m = as_matrix(W_hh, "W_hh", 2);
  const auto h0_m = as_matrix(h0, "h0", 2);
  const auto hs_m = as_matrix(hs, "hs", 3);
  const auto dhs_m = as_matrix(dhs, "dhs", 3);
  const auto lengths_v = as_lengths(lengths);
  auto dx = new_array<Scalar>({s.T, s.B, s.D});
  auto dh0 = new_array<Scalar>({s.B, s.H});
  auto dW_xh = new_array<Scalar>({s.D, s.H});
  auto dW_hh = new_array<Scalar>({s.H, s.H});
  auto db_h = new_array<Scalar>({s.H});
  auto dx_m = as_mutable_matrix(dx);
  auto dh0_m = as_mutable_matrix(dh0);
  auto dW_xh_m = as_mutable_matrix(dW_xh);
  auto dW_hh_m = as_mutable_matrix(dW_hh);
  auto db_h_v = as_mutable_vector(db_h);
  std::optional<Array<Scalar>> norms;
  if (hidden_grad_norms) norms.emplace(std::vector<py::ssize_t>{s.T + 1, s.B});
  {
    py::gil_scoped_release release;
    rnn::backward<Scalar>(s, phi, x_m, W_xh_m, W_hh_m, h0_m, hs_m, dhs_m, dx_m, dh0_m, dW_xh_m, dW_hh_m, db_h_v,
                          lengths_v, false,
                          norms ? norms->mutable_data() : nullptr);
  }
  if (norms) return py::make_tuple(dx, dh0, dW_xh, dW_hh, db_h, *norms);
  return py::make_tuple(dx, dh0, dW_xh, dW_hh, db_h);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("rnn_forward", &rnn_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("b_h").noconvert(), py::arg("h0").noconvert(), py::arg("activation"),
        py::arg("lengths").noconvert(), "hs [T,B,H] = RNN forward over x [T,B,D]; see fastbptt.rnn_forward.");
  m.def("rnn_backward", &rnn_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_xh").noconvert(),
        py::arg("W_hh").noconvert(), py::arg("h0").noconvert(), py::arg("hs").noconvert(),
        py::arg("dhs").noconvert(), py::arg("activation"), py::arg("lengths").noconvert(),
        py::arg("hidden_grad_norms") = false,
        "(dx, dh0, dW_xh, dW_hh, db_h) = BPTT of the RNN; see fastbptt.rnn_backward.");
}

}  // namespace

void bind_rnn(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
