// The forward and backward time loops that every cell shares (private to the core).
//
// A cell is a policy object with the few things in which cells differ: the product a step runs, the pointwise pass
// of one batch row over the calling thread's units, and the whole-sequence products of a block of steps. The
// drivers own the rest, alike for every cell: the team of threads and its wait per step (step_team.hpp; two for a
// cell whose state is a projection), the
// rows that run each step (active_rows.hpp), the dL/dh buffers of two steps, the blocks of steps that keep
// checkpointed BPTT exact (time_blocks.hpp), the zeroing of the gradients unless they accumulate, and the per-step
// gradient norms.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <type_traits>

#include "active_rows.hpp"
#include "backward_scratch.hpp"
#include "fastbptt/types.hpp"
#include "packed_product.hpp"
#include "step_team.hpp"
#include "time_blocks.hpp"

namespace fastbptt::detail {

/// The B rows of a state before a step (see previous_state).
template <class Scalar>
using StateRows = Eigen::Map<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;

/// The Eigen objects of the views that the cells hold (Element: Scalar or const Scalar).
template <class Element>
using MatrixMap = typename MatrixView<Element>::Map;
template <class Element>
using VectorMap = typename VectorView<Element>::Map;

/// The left operand [x_t, h_{t-1}] of a step's product with stacked weights [W_x; W_h], for the rows running step t.
template <class Scalar>
LeftOperand<Scalar> stacked_step_rows(const MatrixMap<const Scalar>& x, const StateRows<Scalar>& h_prev, Index t,
                                      const ActiveRows& active) {
  LeftOperand<Scalar> rows = step_rows<Scalar>(x.middleRows(t * h_prev.rows(), h_prev.rows()), t, active);
  rows.second = strided_rows(h_prev);
  return rows;
}

/// Whether a cell's pass of a step needs whole rows (`static constexpr bool whole_rows = true`: statistics over a
/// row's units), so that its time loops run on one thread; cells without the member split the units.
template <class Cell, class = void>
struct needs_whole_rows : std::false_type {};
template <class Cell>
struct needs_whole_rows<Cell, std::void_t<decltype(Cell::whole_rows)>> : std::bool_constant<Cell::whole_rows> {};

/// The checks that open every call: the sizes, then x [T*B, D] and h0 [B, H].
template <class SequenceView, class StateView>
void check_sequence(const Shape& s, const SequenceView& x, const StateView& h0) {
  check_sizes(s);
  check_shape("x", x, s.T * s.B, s.D);
  check_shape("h0", h0, s.B, s.H);
}

/// Throws std::invalid_argument unless the options fit the call's shape.
template <class Scalar>
void check_options(const Shape& s, const BackwardOptions<Scalar>& options) {
  if (options.dh_norms.empty()) return;
  check_shape("dh_norms", options.dh_norms, s.T + 1, s.B);
  if (options.dh_norms.outer_stride() != s.B) throw std::invalid_argument("dh_norms: expected contiguous rows");
}

/// The checks every backward makes besides its cell's: dhs [T*B, H], dh0 [B, H], dx [T*B, D] when asked for, and
/// the options.
template <class Scalar, class UpstreamView, class Gradients>
void check_backward(const Shape& s, const UpstreamView& dhs, const Gradients& grad,
                    const BackwardOptions<Scalar>& options) {
  check_shape("dhs", dhs, s.T * s.B, s.H);
  check_shape("dh0", grad.dh0, s.B, s.H);
  if (options.need_dx) check_shape("dx", grad.dx, s.T * s.B, s.D);
  check_options(s, options);
}

/// The packed matrix `part` of a call: the one `kept` holds (checked against the sizes K x N in `groups` column
/// groups, of which the first `split` rows multiply a row's first part, that the call's weights give), or, when
/// `kept` is empty, the one `pack()` makes, held in `own` for the call.
template <class Scalar, class Pack>
const PackedWeights<Scalar>& kept_or_packed(const Packed<Scalar>& kept, std::size_t part, Index K, Index N,
                                            Index groups, Index split, std::optional<PackedWeights<Scalar>>& own,
                                            Pack&& pack) {
  if (kept.empty()) return own.emplace(pack());
  if (part >= kept.parts().size()) throw std::invalid_argument("packed: not packed by this cell's pack");
  const PackedWeights<Scalar>& w = kept.parts()[part];
  if (w.depth() != K || w.cols() != N || w.group_width() * groups != N || w.split() != split) {
    throw std::invalid_argument("packed: made from weights of other sizes (packed " + std::to_string(w.split()) +
                                " + " + std::to_string(w.depth() - w.split()) + " x " + std::to_string(w.cols()) +
                                ", the call's " + std::to_string(split) + " + " + std::to_string(K - split) + " x " +
                                std::to_string(N) + " in " + std::to_string(groups) + " groups)");
  }
  return w;
}

/// Throws std::invalid_argument unless options.dz (when given) is [T*B, dz_columns]. A backward that writes an
/// output before its time loop checks it first.
template <class Scalar>
void check_dz(const Shape& s, const BackwardOptions<Scalar>& options, Index dz_columns) {
  if (!options.dz.empty()) check_shape("dz", options.dz, s.T * s.B, dz_columns);
}

/// Whether a cell's state is a projection of its units' outputs (`static constexpr bool projects = true`: the
/// project and before_pointwise hooks below); cells without the member do not project.
template <class Cell, class = void>
struct projects_state : std::false_type {};
template <class Cell>
struct projects_state<Cell, std::void_t<decltype(Cell::projects)>> : std::bool_constant<Cell::projects> {};

/// What a forward keeps: what backward reads (training), or only the state the next step needs (inference, where
/// memory beyond the outputs does not grow with T). A cell's forward policy takes it as a template argument, so
/// that both forwards run the same arithmetic per element and give the same bits.
enum class Keep { training_cache, current_state };

/// Runs a cell's forward over steps 0 .. T-1, writing h_t into `hs` (which the next step reads). It serves the
/// training forward and the forward-only one alike: the cell decides what it keeps (see Keep).
/// The cell provides
///   const PackedWeights<Scalar>& step_weights() const        the weights of a step's product (they set the team)
///   void step_product(Index t, const UnitSlice&, const StateRows<Scalar>& h_prev)
///                                                            the product of step t for its running rows, own units
///   void step_pointwise(Index t, Index r, const UnitSlice&, const Scalar* h_prev_row)
///                                                            the activations of row r at step t, own units
///   static constexpr bool projects                           whether the state is a product of the units' outputs
///   void project(Index t, const UnitSlice&)                  (when projects) that product for step t, after all
///                                                            units' outputs are in: the member's share of its columns
/// A projecting cell's state (what `hs` holds, what the next step multiplies) may be narrower than its units.
/// With handoffs (a wavefront of layers), step t waits for step t of x and publishes hs's steps as they are
/// written; the arithmetic, and so the bits, are the same.
template <class Scalar, class Cell>
void forward_time_loop(const Shape& s, const ActiveRows& active, ConstMatrixRef<Scalar> h0, MatrixRef<Scalar> hs,
                       Cell& cell, const Handoffs& handoffs = Handoffs()) {
  const auto steps = [&](const UnitSlice& own) {
    for (Index t = 0; t < s.T; ++t) {
      if (handoffs.input != nullptr) handoffs.input->wait_for(t + 1);
      const StateRows<Scalar> h_prev_t = previous_state<Scalar>(h0, hs, t, s.B);
      const Index running = active.count(t);
      cell.step_product(t, own, h_prev_t);
      for (Index k = 0; k < running; ++k) {
        const Index r = active.row(k);
        cell.step_pointwise(t, r, own, h_prev_t.row(r).data());
      }
      if constexpr (projects_state<Cell>::value) {
        team_barrier(own);  // the projection multiplies the outputs of all units
        cell.project(t, own);
      }
      team_barrier(own);  // step t+1 multiplies all of h_t
      if (handoffs.output != nullptr && own.member == 0) handoffs.output->publish(t + 1);
    }
  };
  run_team(cell.step_weights(), s.B, steps, needs_whole_rows<Cell>::value);
}

/// Where backward_time_loop writes dx, and the input weights it multiplies (see there).
template <class Scalar>
struct InputGradient {
  const PackedWeights<Scalar>* W_x_transposed = nullptr;  // W_x [D, columns] packed transposed
  StridedRows<Scalar> dx;                                   // [T*B, D]
};

/// The InputGradient of a backward call whose dx is [T*B, D] and whose dZ rows multiply W_xᵀ [K, D] with their
/// first `split` values and, when split < K, the rest from a second part (see LeftOperand): W_xᵀ is part `part` of
/// `kept` or, when `kept` is empty, what `pack()` makes, held in `own`; nothing when options.need_dx is false.
template <class Scalar, class DxMap, class Pack>
InputGradient<Scalar> input_gradient(const BackwardOptions<Scalar>& options, DxMap&& dx, const Packed<Scalar>& kept,
                                     std::size_t part, Index K, Index D, Index split,
                                     std::optional<PackedWeights<Scalar>>& own, Pack&& pack) {
  if (!options.need_dx) return {};
  return {&kept_or_packed(kept, part, K, D, 1, split, own, pack), strided_rows(dx)};
}

/// Backpropagation through time over steps T-1 .. 0: dL/dh_t (dhs plus what flows back from step t+1) becomes a
/// row of dZ, the gradient of the step's pre-activations, dL/dh_{t-1} = dhs_{t-1} + dZ_t W_hᵀ (+ a direct term
/// for cells whose state bypasses W_h) and dx_t = dZ_t W_xᵀ; each block of steps then adds its weight gradients.
/// W_h_transposed                  in   the recurrent weights W_h [H, recurrent columns] packed transposed; dZ's
///                                       first columns multiply W_hᵀ
/// h0, hs   [B, H], [T*B, H]        in   the states before each step come from them
/// dhs      [T*B, H]                in   dL/dh_t from above
/// dh0      [B, H]                  out  dL/dh_0
/// input                            out  dx [T*B, D], with W_x packed transposed (when options.need_dx)
/// options                          in   accumulate, dh_norms [T+1, B] (see BackwardOptions)
/// The cell provides
///   Index dz_columns() const                                  columns of a row of dZ
///   static constexpr bool direct_term                         whether dL/dh_{t-1} has a term that bypasses W_h
///   void zero_weight_gradients()                              sets its weight gradients to zero
///   void step_pointwise(Index t, Index r, const UnitSlice&, const Scalar* dh_row, Scalar* dz_row)
///   void add_direct_term(Index r, const UnitSlice&, Scalar* dh_prev_row)        (when direct_term)
///   void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dZ,
///                             const Eigen::Ref<const RowMatrix<Scalar>>& h_prev)
///                                 the block's share of dW and db; dZ and h_prev hold the rows of steps t0 ..
///   LeftOperand<Scalar> input_gradient_rows(LeftOperand<Scalar> dz) const
///                                 the left operand of dx's product from a step's rows of dZ: the columns that
///                                 multiply W_xᵀ
///   static constexpr bool projects                            whether the state is a projection of the units'
///                                                             outputs (then the three below)
///   const PackedWeights<Scalar>& unit_weights() const         a product whose columns are the units: the team splits
///                                                             the units by it (otherwise by W_hᵀ, whose columns are
///                                                             the state's, the units of a cell that does not project)
///   void before_pointwise(Index t, const UnitSlice&, const RowMatrix<Scalar>& dh_t)
///                                 dL/dh_t taken back through the projection, for the member's units and the rows
///                                 running at step t
/// dx [T*B, D] = dZ's input columns W_xᵀ (`input`: W_x packed transposed and dx, unused unless options.need_dx)
/// is computed after each block of steps, or with handoffs a step at a time in the team's step, so that a lower
/// layer running beside this one in a wavefront takes each step of it as soon as it is written; the same bits
/// either way. add_weight_gradients runs when options.need_weight_gradients.
/// With handoffs (a wavefront of layers, backwards: steps counted from the last), a step waits for the rows of
/// dhs it reads (the layer above writes them as its dx), and dx's steps are published as they are complete.
template <class Scalar, class Cell>
void backward_time_loop(const Shape& s, const ActiveRows& active, const PackedWeights<Scalar>& W_h_transposed,
                        ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> dhs,
                        MatrixRef<Scalar> dh0, const InputGradient<Scalar>& input,
                        const BackwardOptions<Scalar>& options, Cell& cell, const Handoffs& handoffs = Handoffs()) {
  const Index B = s.B, dz_columns = cell.dz_columns();
  check_dz(s, options, dz_columns);
  const bool with_dx = options.need_dx;
  // dx a step at a time when a layer below waits for it (a wavefront), else a block at a time (one product over
  // more rows, W_xᵀ read once a block): the packed product gives a row the same bits either way
  const bool dx_per_step = with_dx && handoffs.output != nullptr;
  if (dx_per_step && !active.all()) {  // the rows of finished sequences, which no step writes
    for (Index r = 0; r < s.T * B; ++r) std::fill_n(input.dx.data + r * input.dx.stride, s.D, Scalar(0));
  }
  const Index block_steps = std::min(s.T, backward_block_steps(B, dz_columns));
  BackwardScratch<Scalar> scratch(block_steps * B, dz_columns, s.H);
  RowMatrix<Scalar>& dZ = scratch.dZ();
  RowMatrix<Scalar>& h_prev = scratch.previous_states();
  if (options.need_weight_gradients && !options.accumulate) cell.zero_weight_gradients();
  Scalar* const dh_norms = options.dh_norms.data();  // null when not asked for
  // dL/dh_t of step t lies in dh_steps[t % 2]: a step reads one while the team writes dL/dh_{t-1} into the other.
  // A sequence that has not started yet (going backwards) has its upstream gradient there until its last step.
  RowMatrix<Scalar> dh_steps[2] = {RowMatrix<Scalar>(B, s.H), RowMatrix<Scalar>(B, s.H)};
  if (handoffs.input != nullptr) handoffs.input->wait_for(1);
  dh_steps[(s.T - 1) % 2] = dhs.bottomRows(B);
  for (Index t1 = s.T; t1 > 0;) {
    const Index t0 = block_start(t1, block_steps), rows = (t1 - t0) * B;
    if (!active.all()) dZ.setZero();  // finished sequences add nothing to the block's products
    const PackedWeights<Scalar>* team_weights = &W_h_transposed;
    if constexpr (projects_state<Cell>::value) team_weights = &cell.unit_weights();
    run_team(*team_weights, B, [&](const UnitSlice& own) {
      // the member's share of dL/dh_{t-1}'s columns: its units' unless the state is a projection of them
      const UnitSlice state = projects_state<Cell>::value ? share_of(W_h_transposed, own) : own;
      const Index state_units = state.u1 - state.u0;
      const PanelRange input_panels = dx_per_step ? share_of(*input.W_x_transposed, own).panels : PanelRange{};
      for (Index t = t1 - 1; t >= t0; --t) {
        auto dz_t = dZ.middleRows((t - t0) * B, B);
        const Index running = active.count(t);
        const RowMatrix<Scalar>& dh_t = dh_steps[t % 2];
        if constexpr (projects_state<Cell>::value) cell.before_pointwise(t, own, dh_t);
        for (Index k = 0; k < running; ++k) {
          const Index r = active.row(k);
          cell.step_pointwise(t, r, own, dh_t.row(r).data(), dz_t.row(r).data());
        }
        team_barrier(own);  // dL/dh_{t-1} and dx_t need every column of dz_t
        if (own.member == 0) {  // dh_t is complete, and nobody writes it during this step
          record_row_norms<Scalar>(dh_t, active, t, dh_norms ? dh_norms + (t + 1) * B : nullptr);
          // every member wrote its share of dx_{t+1} before the barrier
          if (handoffs.output != nullptr) handoffs.output->publish(s.T - t - 1);
        }
        if (dx_per_step) {
          const LeftOperand<Scalar> dz_rows = cell.input_gradient_rows(step_rows<Scalar>(dz_t, t, active));
          const StridedRows<Scalar> dx_t{input.dx.data + t * B * input.dx.stride, input.dx.stride};
          if constexpr (needs_whole_rows<Cell>::value) {
            input.W_x_transposed->multiply(dz_rows, dx_t, Store::overwrite);
          } else {
            input.W_x_transposed->multiply_units(dz_rows, input_panels, dx_t, Store::overwrite);
          }
        }
        // a team of one has written all of dx_t; a larger team publishes it at the next step's barrier
        if (handoffs.output != nullptr && own.members == 1) handoffs.output->publish(s.T - t);
        // dL/dh_{t-1} = dhs_{t-1} (+ the direct term) + dz_t W_hᵀ, for the member's share of the state's columns
        // (dL/dh_0 has no upstream term)
        auto dh_prev = t > 0 ? MatrixRef<Scalar>(dh_steps[(t - 1) % 2]) : dh0;
        if (t > 0) {
          if (handoffs.input != nullptr) handoffs.input->wait_for(s.T - t + 1);  // the row block of step t-1
          dh_prev.middleCols(state.u0, state_units) =
              dhs.middleRows((t - 1) * B, B).middleCols(state.u0, state_units);
        } else if (Cell::direct_term) {
          dh_prev.middleCols(state.u0, state_units).setZero();
        }
        if (Cell::direct_term) {
          for (Index k = 0; k < running; ++k) {
            const Index r = active.row(k);
            cell.add_direct_term(r, own, dh_prev.row(r).data());
          }
        }
        const Store store = t > 0 || Cell::direct_term ? Store::add : Store::overwrite;
        if constexpr (needs_whole_rows<Cell>::value) {  // a team of one: the product may still use the threads
          W_h_transposed.multiply(step_rows<Scalar>(dz_t, t, active), strided_rows(dh_prev), store);
        } else {
          W_h_transposed.multiply_units(step_rows<Scalar>(dz_t, t, active), state.panels, strided_rows(dh_prev), store);
        }
        // the next step projects all of dL/dh_{t-1} back
        if constexpr (projects_state<Cell>::value) team_barrier(own);
      }
    }, needs_whole_rows<Cell>::value);
    if (with_dx && !dx_per_step) {
      const LeftOperand<Scalar> block{StridedRows<const Scalar>{dZ.data(), dZ.outerStride()}, {}, rows};
      const LeftOperand<Scalar> dz_rows = cell.input_gradient_rows(block);
      input.W_x_transposed->multiply(dz_rows, {input.dx.data + t0 * B * input.dx.stride, input.dx.stride},
                                     Store::overwrite);
    }
    if (handoffs.output != nullptr) handoffs.output->publish(s.T - t0);
    if (options.need_weight_gradients) {
      const Eigen::Ref<const RowMatrix<Scalar>> before = previous_states_of_block<Scalar>(h0, hs, B, t0, t1, h_prev);
      cell.add_weight_gradients(t0, rows, dZ.topRows(rows), before);
    }
    if (!options.dz.empty()) options.dz.map().middleRows(t0 * B, rows) = dZ.topRows(rows);
    t1 = t0;
  }
  record_row_norms<Scalar>(dh0, active, 0, dh_norms);
}

}  // namespace fastbptt::detail
