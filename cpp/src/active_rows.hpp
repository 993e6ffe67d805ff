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
/// It holds O(B) numbers, none per step: a forward-only call's memory beyond its outputs does not grow with T.
class ActiveRows {
 public:
  /// Throws std::invalid_argument naming `lengths` unless it is empty or holds B values in 1 .. T.
  ActiveRows(const Shape& s, ConstLengthsRef lengths) : batch_(s.B), steps_(s.T) {
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
    lengths_.assign(lengths.data(), lengths.data() + s.B);
    order_.resize(static_cast<std::size_t>(s.B));
    std::iota(order_.begin(), order_.end(), Index(0));
    std::stable_sort(order_.begin(), order_.end(), [&](Index a, Index b) { return lengths[a] > lengths[b]; });
  }

  /// True when every sequence runs all T steps.
  bool all() const { return order_.empty(); }
  /// The number of sequences longer than t: those that run step t.
  Index count(Index t) const {
    if (all()) return batch_;
    const auto runs = [&](Index b) { return lengths_[static_cast<std::size_t>(b)] > t; };
    return std::partition_point(order_.begin(), order_.end(), runs) - order_.begin();
  }
  Index row(Index k) const { return all() ? k : order_[static_cast<std::size_t>(k)]; }
  /// The steps that batch row b runs.
  Index steps(Index b) const { return all() ? steps_ : lengths_[static_cast<std::size_t>(b)]; }
  /// Row indices longest first, for the row-indexed packed product; null when all().
  const Index* order() const { return all() ? nullptr : order_.data(); }

 private:
  Index batch_, steps_;
  std::vector<Index> lengths_;
  std::vector<Index> order_;  // batch rows, longest sequence first
};

/// final.row(b) = the state after sequence b's last step: row (steps(b) - 1) * B + b of `states` [T*B, H].
template <class Scalar>
void copy_final_states(const Eigen::Ref<const RowMatrix<Scalar>>& states, const ActiveRows& active,
                       Eigen::Ref<RowMatrix<Scalar>> final) {
  const Index B = final.rows();
  for (Index b = 0; b < B; ++b) final.row(b) = states.row((active.steps(b) - 1) * B + b);
}

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

/// The rows of a step's block of B rows that run step t, picked longest sequence first.
template <class Scalar, class Block>
LeftOperand<Scalar> step_rows(const Block& step_block, Index t, const ActiveRows& active) {
  LeftOperand<Scalar> rows;
  rows.first = strided_rows(step_block);
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
    W.multiply(step_rows<Scalar>(x.middleRows(t * s.B, s.B), t, active), strided_rows(out.middleRows(t * s.B, s.B)),
               Store::overwrite);
  }
}

}  // namespace fastbptt::detail
