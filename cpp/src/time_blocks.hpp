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
#include "pointwise.hpp"

namespace fastbptt::detail {

/// The first step of the block that ends just before step t1.
inline Index block_start(Index t1, Index block_steps) { return (t1 - 1) / block_steps * block_steps; }

/// [h_{t0-1}; ...; h_{t1-2}], the states before steps t0 .. t1-1 (h_{-1} = h0), stacked so that one product
/// covers the block: rows of hs where they lie, or, for a block that starts at step 0, h0 and hs copied into
/// `scratch` (which must have (t1-t0)*B rows or more).
template <class Scalar>
Eigen::Ref<const RowMatrix<Scalar>> previous_states_of_block(const Eigen::Ref<const RowMatrix<Scalar>>& h0,
                                                             const Eigen::Ref<const RowMatrix<Scalar>>& hs, Index B,
                                                             Index t0, Index t1, RowMatrix<Scalar>& scratch) {
  const Index rows = (t1 - t0) * B;
  if (t0 > 0) return hs.middleRows((t0 - 1) * B, rows);
  scratch.topRows(B) = h0;
  if (rows > B) scratch.middleRows(B, rows - B) = hs.topRows(rows - B);
  return scratch.topRows(rows);
}

/// sums += the column sums of m, added row after row (see column_sums). A few packets of columns at a time go
/// down all the rows in registers: adding whole rows to `sums` loaded and stored every sum at every row.
template <class Scalar>
void add_column_sums(const Eigen::Ref<const RowMatrix<Scalar>>& m, Eigen::Ref<RowVector<Scalar>> sums) {
  using P = Packet<Scalar>;
  constexpr Index lanes = packet_size<Scalar>, packets = 4;
  const Index rows = m.rows(), cols = m.cols(), stride = m.outerStride();
  const Scalar* const data = m.data();
  Scalar* const out = sums.data();
  Index j = 0;
  for (; j + packets * lanes <= cols; j += packets * lanes) {
    P acc[packets];
#pragma GCC unroll 4
    for (Index q = 0; q < packets; ++q) acc[q] = ei::ploadu<P>(out + j + q * lanes);
    for (Index r = 0; r < rows; ++r) {
      const Scalar* row = data + r * stride + j;
#pragma GCC unroll 4
      for (Index q = 0; q < packets; ++q) acc[q] = ei::padd(acc[q], ei::ploadu<P>(row + q * lanes));
    }
#pragma GCC unroll 4
    for (Index q = 0; q < packets; ++q) ei::pstoreu(out + j + q * lanes, acc[q]);
  }
  for (; j < cols; j += lanes) {  // the last packets, the last one maybe partial
    const Lanes<Scalar> part{j, std::min(lanes, cols - j)};
    P acc = part.load(out);
    for (Index r = 0; r < rows; ++r) acc = ei::padd(acc, part.load(data + r * stride));
    part.store(out, acc);
  }
}

}  // namespace fastbptt::detail
