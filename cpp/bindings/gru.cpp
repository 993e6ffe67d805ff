// Binding of the GRU kernels: validate, allocate, release the GIL, call the core.
#include "fastbptt/gru.hpp"

#include <optional>
#include <vector>

#include "array_cache.hpp"
#include "arrays.hpp"

namespace fastbptt::bindings {
namespace {

template <class Scalar>
py::tuple gru_forward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                      const Array<Scalar>& b, const Array<Scalar>& b_hn, const Array<Scalar>& h0,
                      const LengthsArray& lengths) {
  const Shape s = sequence_shape(x, W_h.ndim() == 2 ? W_h.shape(0) : 0);
  const Index GH = gru::gate_count * s.H;
  const auto x_m = as_matrix(x, "x", 3);
  const auto W_x_m = as_matrix(W_x, "W_x", 2);
  const auto W_h_m = as_matrix(W_h, "W_h", 2);
  const auto b_v = as_vector(b, "b");
  const auto b_hn_v = as_vector(b_hn, "b_hn");
  const auto h0_m = as_matrix(h0, "h0", 2);
  const auto lengths_v = as_lengths(lengths);
  auto hs = new_array<Scalar>({s.T, s.B, s.H});
  auto hn = new_array<Scalar>({s.T, s.B, s.H});
  auto gates = new_array<Scalar>({s.T, s.B, GH});
  auto hs_m = as_mutable_matrix(hs);
  auto hn_m = as_mutable_matrix(hn);
  auto gates_m = as_mutable_matrix(gates);
  {
    py::gil_scoped_release release;
    gru::forward<Scalar>(s, x_m, W_x_m, W_h_m, b_v, b_hn_v, h0_m, gates_m, hn_m, hs_m, lengths_v);
  }
  return py::make_tuple(hs, gates, hn);
}

template <class Scalar>
py::tuple gru_backward(const Array<Scalar>& x, const Array<Scalar>& W_x, const Array<Scalar>& W_h,
                       const Array<Scalar>& h0, const Array<Scalar>& gates, const Array<Scalar>& hn,
                       const Array<Scalar>& hs, const Array<Scalar>& dhs, const LengthsArray& lengths,
                       bool hidden_grad_norms) {
  const Shape s = sequence_shape(x, W_h.ndim() == 2 ? W_h.shape(0) : 0);
  const Index GH = gru::gate_count * s.H;
  const auto x_m = as_matrix(x, "x", 3);
  const auto W_x_m = as_matrix(W_x, "W_x", 2);
  const auto W_h_m = as_matrix(W_h, "W_h", 2);
  const auto h0_m = as_matrix(h0, "h0", 2);
  const auto gates_m = as_matrix(gates, "gates", 3);
  const auto hn_m = as_matrix(hn, "hn", 3);
  const auto hs_m = as_matrix(hs, "hs", 3);
  const auto dhs_m = as_matrix(dhs, "dhs", 3);
  const auto lengths_v = as_lengths(lengths);
  auto dx = new_array<Scalar>({s.T, s.B, s.D});
  auto dh0 = new_array<Scalar>({s.B, s.H});
  auto dW_x = new_array<Scalar>({s.D, GH});
  auto dW_h = new_array<Scalar>({s.H, GH});
  auto db = new_array<Scalar>({GH});
  auto db_hn = new_array<Scalar>({s.H});
  auto dx_m = as_mutable_matrix(dx);
  auto dh0_m = as_mutable_matrix(dh0);
  auto dW_x_m = as_mutable_matrix(dW_x);
  auto dW_h_m = as_mutable_matrix(dW_h);
  auto db_v = as_mutable_vector(db);
  auto db_hn_v = as_mutable_vector(db_hn);
  std::optional<Array<Scalar>> norms;
  if (hidden_grad_norms) norms.emplace(std::vector<py::ssize_t>{s.T + 1, s.B});
  {
    py::gil_scoped_release release;
    gru::backward<Scalar>(s, x_m, W_x_m, W_h_m, h0_m, gates_m, hn_m, hs_m, dhs_m, dx_m, dh0_m, dW_x_m, dW_h_m, db_v,
                          db_hn_v, lengths_v, false,
                          norms ? norms->mutable_data() : nullptr);
  }
  if (norms) return py::make_tuple(dx, dh0, dW_x, dW_h, db, db_hn, *norms);
  return py::make_tuple(dx, dh0, dW_x, dW_h, db, db_hn);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("gru_forward", &gru_forward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("b").noconvert(), py::arg("b_hn").noconvert(),
        py::arg("h0").noconvert(), py::arg("lengths").noconvert(),
        "(hs, gates, hn) = GRU forward over x [T,B,D]; see fastbptt.gru_forward.");
  m.def("gru_backward", &gru_backward<Scalar>, py::arg("x").noconvert(), py::arg("W_x").noconvert(),
        py::arg("W_h").noconvert(), py::arg("h0").noconvert(), py::arg("gates").noconvert(),
        py::arg("hn").noconvert(), py::arg("hs").noconvert(), py::arg("dhs").noconvert(),
        py::arg("lengths").noconvert(), py::arg("hidden_grad_norms") = false,
        "(dx, dh0, dW_x, dW_h, db, db_hn[, dh_norms [T+1,B]]) = BPTT of the GRU; see fastbptt.gru_backward.");
}

}  // namespace

void bind_gru(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
