// The compiled module: one registration call per kernel family, plus build information. It is built once per
// instruction set as fastbptt._core_<isa> (FASTBPTT_MODULE_NAME); fastbptt/_core.py loads one as fastbptt._core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "arrays.hpp"
#include "fastbptt/build_info.hpp"
#include "fastbptt/threads.hpp"
#include "fastbptt/types.hpp"

namespace py = pybind11;

namespace fastbptt::bindings {

/// What the core allocates to pack a weight matrix of this dtype (see fastbptt::packed_weights_scalars).
Index packed_weights_scalars(Index rows, Index columns, Index groups, const py::dtype& dtype) {
  const bool floating = dtype.kind() == 'f';
  if (floating && dtype.itemsize() == 4) return fastbptt::packed_weights_scalars<float>(rows, columns, groups);
  if (floating && dtype.itemsize() == 8) return fastbptt::packed_weights_scalars<double>(rows, columns, groups);
  throw py::type_error("dtype: expected float32 or float64, got " + std::string(py::str(dtype)));
}

/// The packed weights of one dtype as an opaque Python object (made by the cells' *_pack functions).
template <class Scalar>
void bind_packed(py::module_& m, const char* name) {
  py::class_<Packed<Scalar>>(m, name,
                             "A cell's weights packed for its products, kept across calls: made by rnn_pack, "
                             "lstm_pack or gru_pack, given as packed= to the same cell's kernels with the weights it "
                             "was made from (a copy: later edits of those weights do not reach it).");
}

/// aᵀ b of a [N, K] and b [N, M], a new array [K, M], with the threads of the call: the weight gradients of rows
/// gathered from many calls (fastbptt.torch's step cells), which NumPy's product would run on its own BLAS threads.
template <class Scalar>
Array<Scalar> transposed_product(const Array<Scalar>& a, const Array<Scalar>& b) {
  const auto left = as_matrix(a, "a", 2);
  const auto right = as_matrix(b, "b", 2);
  if (left.rows() != right.rows()) {
    throw py::value_error("a, b: expected the same number of rows, got " + std::to_string(left.rows()) + " and " +
                          std::to_string(right.rows()));
  }
  Array<Scalar> product({left.cols(), right.cols()});
  auto result = as_mutable_matrix(product);
  py::gil_scoped_release release;
  result.noalias() = left.transpose() * right;
  return product;
}

/// Whether two C-contiguous buffers hold the same bytes (the same bits: NaN equals NaN, -0.0 differs from 0.0):
/// fastbptt.torch's step cells check at every call that the weights they packed have not been edited behind
/// torch's version counter. One pass of memcmp; NumPy's comparison writes an array of booleans first.
bool same_bytes(const py::buffer& a, const py::buffer& b) {
  const py::buffer_info x = a.request(), y = b.request();
  const auto contiguous = [](const py::buffer_info& info) {
    py::ssize_t stride = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
      if (info.shape[d] > 1 && info.strides[d] != stride) return false;
      stride *= info.shape[d];
    }
    return true;
  };
  if (!contiguous(x) || !contiguous(y)) throw py::value_error("same_bytes: expected C-contiguous buffers");
  const py::ssize_t bytes = x.size * x.itemsize;
  if (bytes != y.size * y.itemsize) return false;
  py::gil_scoped_release release;
  return bytes == 0 || std::memcmp(x.ptr, y.ptr, static_cast<std::size_t>(bytes)) == 0;
}

void bind_rnn(py::module_& m);
void bind_lstm(py::module_& m);
void bind_gru(py::module_& m);
void bind_layer_norm_lstm(py::module_& m);
void bind_loss(py::module_& m);
void bind_diagnostics(py::module_& m);
void bind_array_cache(py::module_& m);
void bind_tasks(py::module_& m);
}  // namespace fastbptt::bindings

PYBIND11_MODULE(FASTBPTT_MODULE_NAME, m) {
  m.doc() = "fastbptt's compiled kernels. Use the fastbptt package; these functions expect validated arrays.";
  m.attr("__version__") = fastbptt::build_info().at("version");
  m.def("build_info", &fastbptt::build_info, "Describes this build of the core.");
  m.def("set_num_threads", &fastbptt::set_num_threads, py::arg("n"), "Threads of every later call (n >= 1).");
  m.def("backward_block_steps", &fastbptt::backward_block_steps, py::arg("batch"), py::arg("gate_columns"),
        "Time steps per block of the backward pass (checkpoint segments start at multiples of it).");
  m.def("reset_num_threads", &fastbptt::reset_num_threads, "Every later call uses the default count again.");
  m.def("packed_weights_scalars", &fastbptt::bindings::packed_weights_scalars, py::arg("rows"), py::arg("columns"),
        py::arg("groups"), py::arg("dtype"),
        "Scalars the core allocates to pack a [rows, columns] weight matrix in `groups` column groups.");
  m.def("get_num_threads", &fastbptt::get_num_threads, "Threads the next call will use.");
  m.def("call_threads", &fastbptt::call_threads, "Threads a call made from the calling thread uses.");
  m.def("transposed_product", &fastbptt::bindings::transposed_product<float>, py::arg("a").noconvert(),
        py::arg("b").noconvert());
  m.def("transposed_product", &fastbptt::bindings::transposed_product<double>, py::arg("a").noconvert(),
        py::arg("b").noconvert(), "aᵀ b of C-contiguous a [N, K] and b [N, M] of one dtype, on the call's threads.");
  m.def("same_bytes", &fastbptt::bindings::same_bytes, py::arg("a"), py::arg("b"),
        "Whether two C-contiguous buffers hold the same bytes.");
  py::class_<fastbptt::StepHandoff>(
      m, "StepHandoff",
      "Steps handed from one call to another running at the same time (a wavefront of stacked layers): given as "
      "output_ready= to the call that writes an output (a forward's hs, a backward's dx) and as input_ready= to "
      "the call that reads it.")
      .def(py::init<>())
      .def("published", &fastbptt::StepHandoff::published, "The steps published so far.")
      .def("abandon", &fastbptt::StepHandoff::abandon,
           "Publishes every step, so that the reading call does not wait for ever after the writing one failed.");
  fastbptt::bindings::bind_packed<float>(m, "PackedFloat32");
  fastbptt::bindings::bind_packed<double>(m, "PackedFloat64");
  fastbptt::bindings::bind_rnn(m);
  fastbptt::bindings::bind_lstm(m);
  fastbptt::bindings::bind_gru(m);
  fastbptt::bindings::bind_layer_norm_lstm(m);
  fastbptt::bindings::bind_loss(m);
  fastbptt::bindings::bind_diagnostics(m);
  fastbptt::bindings::bind_array_cache(m);
  fastbptt::bindings::bind_tasks(m);
}
