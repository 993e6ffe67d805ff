// The threads of a time loop, each owning a slice of the hidden units (private to the core).
//
// Within a step a thread computes the recurrent product's columns of its own units in every gate block
// (PackedWeights::multiply_units) and then applies the gates to those units; the threads wait for each other once
// per step, where the next step needs every unit of the state (twice for a projected state: the projection needs
// every unit's output first). A parallel product followed by a one-thread gate
// pass would start and stop the threads at every step and leave one of them idle during the gate pass.
// Every element is computed by the same code whatever the slice, so results do not depend on the team's size.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastbptt/threads.hpp"
#include "fastbptt/types.hpp"
#include "packed_product.hpp"

namespace fastbptt::detail {

/// One member's share: `panels` of every gate block, which hold the hidden units u0 .. u1-1.
struct UnitSlice {
  int member;   // 0 .. members - 1; member 0 also does what one thread must do alone
  int members;  // the team's size
  PanelRange panels;
  Index u0, u1;
};

/// Member `member` of `members`'s contiguous share of the column panels of W's groups (the units of every gate).
template <class Scalar>
UnitSlice slice_of(const PackedWeights<Scalar>& W, int member, int members) {
  const Index unit_panels = W.group_panels(), units = W.group_width(), lanes = PackedWeights<Scalar>::lanes;
  const Index q0 = unit_panels * member / members, q1 = unit_panels * (member + 1) / members;
  return UnitSlice{member, members, PanelRange{q0, q1}, std::min(units, q0 * lanes), std::min(units, q1 * lanes)};
}

/// The same member's share of another product's columns within a step (a projection to another width).
template <class Scalar>
UnitSlice share_of(const PackedWeights<Scalar>& W, const UnitSlice& own) {
  return slice_of(W, own.member, own.members);
}

/// Runs body(UnitSlice) on a team whose members split the hidden units of W's column groups (the gate blocks)
/// into contiguous slices, for a loop whose steps multiply `rows` rows by W. The team has call_threads() members,
/// fewer when the units come in fewer packets, and one when a step is too small to repay a wait for the other
/// thread, or when each step's pass needs `whole_rows` (statistics of a row's units: layer normalisation). The body
/// separates steps with team_barrier().
template <class Scalar, class Body>
void run_team(const PackedWeights<Scalar>& W, Index rows, Body&& body, bool whole_rows = false) {
  if (whole_rows) {
    body(slice_of(W, 0, 1));
    return;
  }
  constexpr Index min_step_work = Index(1) << 16;  // multiply-adds per step; below it one thread is as fast
#if defined(_OPENMP)
  const Index threads = std::min<Index>(call_threads(), W.group_panels());
  if (threads > 1 && rows * W.depth() * W.cols() >= min_step_work) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    body(slice_of(W, omp_get_thread_num(), omp_get_num_threads()));
    return;
  }
#endif
  body(slice_of(W, 0, 1));
}

/// Waits until every member of `own`'s team has arrived. A team of one waits for nothing: its body may run inside
/// an enclosing parallel region (a task of run_concurrently), whose other threads a barrier here would wait for.
inline void team_barrier(const UnitSlice& own) {
#if defined(_OPENMP)
  if (own.members > 1) {
#pragma omp barrier
  }
#else
  static_cast<void>(own);
#endif
}

}  // namespace fastbptt::detail
