// What every backward binding does besides its cell's own arrays: the options from the caller's flags, fresh arrays
// for the gradients asked for, the hidden-gradient norms when asked for, and the result tuple.
#pragma once

#include <initializer_list>
#include <optional>
#include <vector>

#include "array_cache.hpp"
#include "arrays.hpp"

namespace fastbptt::bindings {

template <class Scalar>
class BackwardCall {
 public:
  /// `dz_columns` > 0: the call also returns every step's dZ [T, B, dz_columns] (BackwardOptions::dz).
  BackwardCall(const Shape& s, bool hidden_grad_norms, bool need_dx, bool need_weight_grads, Index dz_columns = 0) {
    options.need_dx = need_dx;
    options.need_weight_gradients = need_weight_grads;
    if (hidden_grad_norms) {
      norms_ = new_array<Scalar>({s.T + 1, s.B});
      options.dh_norms = as_mutable_matrix(*norms_);
    }
    if (dz_columns > 0) {
      dz_ = new_array<Scalar>({s.T, s.B, dz_columns});
      options.dz = as_mutable_matrix(*dz_);
    }
  }

  /// A fresh array of `shape` that `view` (a member of the cell's gradients) points at, when `wanted`; the one
  /// `given` instead when there is one (see given_or_new).
  template <class View>
  std::optional<Array<Scalar>> output(bool wanted, const std::vector<py::ssize_t>& shape, View& view,
                                      const std::optional<Array<Scalar>>& given = std::nullopt) {
    if (!wanted) return std::nullopt;
    Array<Scalar> array = given_or_new<Scalar>(given, shape, "dx_out");
    point(view, array);
    return array;
  }

  /// The outputs in order, then the norms and dZ when they were asked for.
  py::tuple result(std::initializer_list<py::object> outputs) const {
    py::list items;
    for (const py::object& item : outputs) items.append(item);
    if (norms_) items.append(*norms_);
    if (dz_) items.append(*dz_);
    return py::tuple(items);
  }

  BackwardOptions<Scalar> options;

 private:
  static void point(MatrixView<Scalar>& view, Array<Scalar>& array) { view = as_mutable_matrix(array); }
  static void point(VectorView<Scalar>& view, Array<Scalar>& array) { view = as_mutable_vector(array); }

  std::optional<Array<Scalar>> norms_, dz_;
};

}  // namespace fastbptt::bindings
