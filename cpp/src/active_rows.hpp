// Which sequences of a batch still run at each step, for batches of different lengths (private to the core).
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "fastbptt/types.hpp"
#include "packed_product.hpp"

namespace fastbptt::detail {

/// The batch rows that run step t are row(0) .. row(count(t) - 1): rows are visited longest sequence first, so
/// those still running at a step are a prefix and a finished sequence costs nothing at later steps, without
/// moving any data. With no lengths every row runs every step and `order()` is null (the identity).
class ActiveRows {
 public:
  /// Throws std::invalid_argument naming `lengths` unless it is empty or holds B values in 1 .. T.
  ActiveRows(const Shape& s, ConstLengthsRef lengths) : batch_(s.B) {
    if (lengths.size() == 0) return;
    if (lengths.size() != s.B) {
      std::ostringstream message;
      message << "lengths: expected B = " << s.B << " values, got " << lengths.size();
      throw std::invalid_argument(message.str());
    }
    for (Index b = 0; b < s.B; ++b) {
      if (lengths[b] < 1 || lengths[b] > s.T) {
        std::ostringstream message;
        message << "lengths: every length must lie in 1 .. T = " << s.T << ", got " << lengths[b]
                << " for sequence " << b;
        throw std::invalid_argument(message.str());
      }
    }
    order_.resize(static_cast<std::size_t>(s.B));
    std::iota(order_.begin(), order_.end(), Index(0));
    std::stable_sort(order_.begin(), order_.end(), [&](Index a, Index b) { return lengths[a] > lengths[b]; });
    // running_[t] = number of sequences longer than t.
    running_.assign(static_cast<std::size_t>(s.T), 0);
    for (Index b = 0; b < s.B; ++b) ++running_[static_cast<std::size_t>(lengths[b] - 1)];
    for (Index t = s.T - 1; t > 0; --t) running_[t - 1] += running_[t];
  }

  /// True when every sequence runs all T steps.
  bool all() const { return order_.empty(); }
  Index count(Index t) const { return all() ? batch_ : running_[static_cast<std::size_t>(t)]; }
  Index row(Index k) const { return all() ? k : order_[static_cast<std::size_t>(k)]; }
  /// Row indices longest first, for the row-indexed packed product; null when all().
  const Index* order() const { return all() ? nullptr : order_.data(); }

 private:
  Index batch_;
  std::vector<Index> order_;
  std::vector<Index> running_;
};

/// norms[r] = ||row r of m||_2 (accumulated in double) for the rows running at step t, 0 for the others; a no-op
/// when norms is null. BPTT's dL/dh norms per step come out of the backward loop this way, at O(B*H) per step.
template <class Scalar>
void record_row_norms(const Eigen::Ref<const RowMatrix<Scalar>>& m, const ActiveRows& active, Index t,
                      Scalar* norms) {
  if (norms == nullptr) return;
  std::fill(norms, norms + m.rows(), Scalar(0));
  for (Index k = 0; k < active.count(t); ++k) {
    const Index r = active.row(k);
    norms[r] = static_cast<Scalar>(std::sqrt(m.row(r).template cast<double>().squaredNorm()));
  }
}

/// The rows of `m` [T*B, .] that run step t: its block of B rows, picked longest sequence first.
template <class Scalar, class Matrix>
LeftOperand<Scalar> step_rows(const Matrix& m, Index t, Index B, const ActiveRows& active) {
  LeftOperand<Scalar> rows;
  rows.first = strided_rows(m.middleRows(t * B, B));
  rows.rows = active.count(t);
  rows.row_index = active.order();
  return rows;
}

/// out = x W for the rows that run each step: one product over all T*B rows when every sequence runs every step,
/// else one per step over its running rows (a row's bits are the same either way; padding rows are left alone).
template <class Scalar>
void project_inputs(const PackedWeights<Scalar>& W, const Eigen::Ref<const RowMatrix<Scalar>>& x,
                    Eigen::Ref<RowMatrix<Scalar>> out, const Shape& s, const ActiveRows& active) {
  if (active.all()) {
    LeftOperand<Scalar> all_rows;
    all_rows.first = strided_rows(x);
    all_rows.rows = s.T * s.B;
    W.multiply(all_rows, strided_rows(out), Store::overwrite);
    return;
  }
  for (Index t = 0; t < s.T; ++t) {
    W.multiply(step_rows<Scalar>(x, t, s.B, active), strided_rows(out.middleRows(t * s.B, s.B)), Store::overwrite);
  }
}

}  // namespace fastbptt::detail
