// NumPy <-> Eigen plumbing shared by the binding files: views without copies and fresh output arrays.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <vector>

#include "fastbptt/types.hpp"

namespace fastbptt::bindings {

namespace py = pybind11;

/// A C-contiguous array of exactly Scalar; bound with .noconvert(), so nothing is copied or cast silently
/// (the Python layer converts, visibly, before calling).
template <class Scalar>
using Array = py::array_t<Scalar, py::array::c_style>;

template <class Scalar>
using ConstMatrixMap = Eigen::Map<const RowMatrix<Scalar>>;
template <class Scalar>
using MutableMatrixMap = Eigen::Map<RowMatrix<Scalar>>;

inline void check_ndim(const py::array& array, const char* name, py::ssize_t ndim) {
  if (array.ndim() != ndim) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(array.ndim()));
  }
}

/// Views an ndim-dimensional array as the matrix [product of the leading sides, last side].
template <class Scalar>
ConstMatrixMap<Scalar> as_matrix(const Array<Scalar>& array, const char* name, py::ssize_t ndim) {
  check_ndim(array, name, ndim);
  Index rows = 1;
  for (py::ssize_t axis = 0; axis + 1 < ndim; ++axis) rows *= array.shape(axis);
  return {array.data(), rows, array.shape(ndim - 1)};
}

template <class Scalar>
Eigen::Map<const RowVector<Scalar>> as_vector(const Array<Scalar>& array, const char* name) {
  check_ndim(array, name, 1);
  return {array.data(), array.shape(0)};
}

template <class Scalar>
MutableMatrixMap<Scalar> as_mutable_matrix(Array<Scalar>& array) {
  const Index cols = array.ndim() == 0 ? 1 : array.shape(array.ndim() - 1);
  return {array.mutable_data(), cols == 0 ? 0 : array.size() / cols, cols};
}

template <class Scalar>
Eigen::Map<RowVector<Scalar>> as_mutable_vector(Array<Scalar>& array) {
  return {array.mutable_data(), array.size()};
}

/// The array, or None for one that was not computed.
template <class Scalar>
py::object array_or_none(const std::optional<Array<Scalar>>& array) {
  return array ? py::object(*array) : py::object(py::none());
}

/// An argument that is an instance of a bound class or None, converting to a pointer (null for None). pybind11
/// accepts None for a plain pointer argument only in its second pass over a function's overloads, the one with
/// conversions, so a call of a kernel bound per dtype with one such None (a wavefront's handoff, left out) loaded
/// every argument again after trying each overload; this caster takes None in the first pass.
template <class T>
struct OrNone {
  T* pointer = nullptr;
  operator T*() const { return pointer; }  // NOLINT(google-explicit-constructor): stands in for the pointer
};

/// Per-sequence lengths as int64; an empty array means every sequence runs all T steps.
using LengthsArray = py::array_t<Index, py::array::c_style>;

inline Eigen::Map<const IndexVector> as_lengths(const LengthsArray& lengths) {
  check_ndim(lengths, "lengths", 1);
  return {lengths.data(), lengths.shape(0)};
}

/// The packed weights a call was given (None in Python: an empty Packed, the call packs its own).
template <class Scalar>
const Packed<Scalar>& kept_or_none(OrNone<const Packed<Scalar>> packed) {
  static const Packed<Scalar> none;
  return packed != nullptr ? *packed : none;
}

/// Sizes of a time-major sequence array x [T, B, D].
inline Shape sequence_shape(const py::array& x, Index hidden) {
  check_ndim(x, "x", 3);
  return {x.shape(0), x.shape(1), x.shape(2), hidden};
}

}  // namespace fastbptt::bindings

namespace pybind11::detail {

template <class T>
struct type_caster<fastbptt::bindings::OrNone<T>> {
  PYBIND11_TYPE_CASTER(fastbptt::bindings::OrNone<T>, make_caster<T>::name | const_name("None"));

  bool load(handle source, bool) {
    if (source.is_none()) {
      value.pointer = nullptr;
      return true;
    }
    make_caster<std::remove_const_t<T>> instance;
    if (!instance.load(source, false)) return false;  // only an instance of the class itself
    value.pointer = &cast_op<std::remove_const_t<T>&>(instance);  // lives in the argument, which outlives the call
    return true;
  }
};

}  // namespace pybind11::detail
