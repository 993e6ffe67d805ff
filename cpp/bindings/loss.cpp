// Binding of the softmax / cross-entropy output layer: validate, allocate, release the GIL, call the core.
#include "fastbptt/loss.hpp"

#include "array_cache.hpp"
#include "arrays.hpp"

namespace fastbptt::bindings {
namespace {

template <class Scalar>
py::tuple softmax_cross_entropy(const Array<Scalar>& hs, const Array<Scalar>& W_yh, const Array<Scalar>& b_y,
                                const Array<std::int64_t>& targets, std::int64_t ignore_index,
                                const std::string& reduction) {
  const loss::Reduction how = loss::parse_reduction(reduction);
  const auto hs_m = as_matrix(hs, "hs", 3);
  const auto W_yh_m = as_matrix(W_yh, "W_yh", 2);
  const auto b_y_v = as_vector(b_y, "b_y");
  check_ndim(targets, "targets", 2);
  if (targets.shape(0) != hs.shape(0) || targets.shape(1) != hs.shape(1)) {
    throw py::value_error("targets: expected shape [" + std::to_string(hs.shape(0)) + ", " +
                          std::to_string(hs.shape(1)) + "] (the leading sides of hs), got [" +
                          std::to_string(targets.shape(0)) + ", " + std::to_string(targets.shape(1)) + "]");
  }
  auto dhs = new_array<Scalar>({hs.shape(0), hs.shape(1), hs.shape(2)});
  auto dW_yh = new_array<Scalar>({W_yh.shape(0), W_yh.shape(1)});
  auto db_y = new_array<Scalar>({b_y.shape(0)});
  auto dhs_m = as_mutable_matrix(dhs);
  auto dW_yh_m = as_mutable_matrix(dW_yh);
  auto db_y_v = as_mutable_vector(db_y);
  double value = 0.0;
  {
    py::gil_scoped_release release;
    value = loss::softmax_cross_entropy<Scalar>(hs_m, W_yh_m, b_y_v, targets.data(), ignore_index, how, dhs_m,
                                                dW_yh_m, db_y_v);
  }
  return py::make_tuple(value, dhs, dW_yh, db_y);
}

template <class Scalar>
void define(py::module_& m) {
  m.def("softmax_cross_entropy", &softmax_cross_entropy<Scalar>, py::arg("hs").noconvert(),
        py::arg("W_yh").noconvert(), py::arg("b_y").noconvert(), py::arg("targets").noconvert(),
        py::arg("ignore_index"), py::arg("reduction"),
        "(loss, dhs, dW_yh, db_y) of the softmax / cross-entropy output layer; see "
        "fastbptt.softmax_cross_entropy.");
}

}  // namespace

void bind_loss(py::module_& m) {
  define<float>(m);
  define<double>(m);
}

}  // namespace fastbptt::bindings
