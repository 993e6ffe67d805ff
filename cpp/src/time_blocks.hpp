// BPTT's whole-sequence products computed one block of time steps at a time (private to the core).
//
// After the per-step loop has produced dZ for a block of steps, that block adds its share to dW_x, dW_h and db
// and writes its rows of dx. dZ then needs only a block's rows, which stay in cache whatever T is. Blocks start
// at multiples of backward_block_steps() counted from the call's first step, and are visited last to first; a
// sequence split into segments that start at such multiples, run one backward call per segment (last segment
// first) with the weight gradients accumulated, makes the very same operations as one call: checkpointed BPTT
// gives the bits of full BPTT.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::detail {

/// The first step of the block that ends just before step t1.
inline Index block_start(Index t1, Index block_steps) { return (t1 - 1) / block_steps * block_steps; }

/// out.topRows((t1-t0)*B) = [h_{t0-1}; ...; h_{t1-2}], the states before steps t0 .. t1-1 (h_{-1} = h0), stacked
/// so that one product covers the block.
template <class Scalar>
void gather_previous_states(const Eigen::Ref<const RowMatrix<Scalar>>& h0,
                            const Eigen::Ref<const RowMatrix<Scalar>>& hs, Index B, Index t0, Index t1,
                            RowMatrix<Scalar>& out) {
  const Index rows = (t1 - t0) * B;
  if (t0 > 0) {
    out.topRows(rows) = hs.middleRows((t0 - 1) * B, rows);
    return;
  }
  out.topRows(B) = h0;
  if (rows > B) out.middleRows(B, rows - B) = hs.topRows(rows - B);
}

/// sums += the column sums of m, added row after row (see column_sums).
template <class Scalar>
void add_column_sums(const Eigen::Ref<const RowMatrix<Scalar>>& m, Eigen::Ref<RowVector<Scalar>> sums) {
  for (Index r = 0; r < m.rows(); ++r) sums += m.row(r);
}

}  // namespace fastbptt::detail
