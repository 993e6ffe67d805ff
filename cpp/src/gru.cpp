// GRU forward and BPTT (see gru.hpp); explicit instantiations for float and double.
#include "fastbptt/gru.hpp"

#include "active_rows.hpp"
#include "backward_scratch.hpp"
#include "packed_product.hpp"
#include "pointwise.hpp"
#include "step_team.hpp"
#include "time_blocks.hpp"

namespace fastbptt::gru {
namespace {

namespace ei = Eigen::internal;

template <class Scalar>
void check_inputs(const Shape& s, const Eigen::Ref<const RowMatrix<Scalar>>& x,
                  const Eigen::Ref<const RowMatrix<Scalar>>& W_x, const Eigen::Ref<const RowMatrix<Scalar>>& W_h,
                  const Eigen::Ref<const RowMatrix<Scalar>>& h0) {
  detail::check_sizes(s);
  detail::check_shape("x", x, s.T * s.B, s.D);
  detail::check_shape("W_x", W_x, s.D, gate_count * s.H);
  detail::check_shape("W_h", W_h, s.H, gate_count * s.H);
  detail::check_shape("h0", h0, s.B, s.H);
}

}  // namespace

template <class Scalar>
void forward(const Shape& s, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x, ConstMatrixRef<Scalar> W_h,
             ConstVectorRef<Scalar> b, ConstVectorRef<Scalar> b_hn, ConstMatrixRef<Scalar> h0,
             MatrixRef<Scalar> gates, MatrixRef<Scalar> hn, MatrixRef<Scalar> hs, ConstLengthsRef lengths) {
  check_inputs<Scalar>(s, x, W_x, W_h, h0);
  const Index H = s.H, B = s.B, N = s.T * s.B, GH = gate_count * H;
  detail::check_shape("b", b, 1, GH);
  detail::check_shape("b_hn", b_hn, 1, H);
  detail::check_shape("gates", gates, N, GH);
  detail::check_shape("hn", hn, N, H);
  detail::check_shape("hs", hs, N, H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    gates.setZero();
    hn.setZero();
    hs.setZero();
  }

  const detail::PackedWeights<Scalar> packed_W_x(W_x, false), packed_W_h(W_h, false, gate_count);
  detail::project_inputs(packed_W_x, x, gates, s, active);
  // Unlike the LSTM's, the recurrent product cannot be added onto the input projection: r scales its n block.
  RowMatrix<Scalar> recurrent(B, GH);
  detail::run_team(packed_W_h, B, [&](const detail::UnitSlice& own) {
    for (Index t = 0; t < s.T; ++t) {
      auto z_t = gates.middleRows(t * B, B);
      const auto h_prev_t = detail::previous_state<Scalar>(h0, hs, t, B);
      const Index running = active.count(t);
      packed_W_h.multiply_units(h_prev_t.data(), h_prev_t.outerStride(), running, recurrent.data(), GH, false,
                                active.order(), own.q0, own.q1);
      for (Index k = 0; k < running; ++k) {
        const Index r = active.row(k);
        Scalar* g = z_t.row(r).data();
        const Scalar* rec = recurrent.row(r).data();
        const Scalar* h_prev = h_prev_t.row(r).data();
        Scalar* hn_row = hn.row(t * B + r).data();
        Scalar* h = hs.row(t * B + r).data();
        detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
          const auto reset = detail::sigmoid<Scalar>(
              ei::padd(ei::padd(lanes.load(g), lanes.load(rec)), lanes.load(b.data())));
          const auto update = detail::sigmoid<Scalar>(
              ei::padd(ei::padd(lanes.load(g + H), lanes.load(rec + H)), lanes.load(b.data() + H)));
          const auto hidden_n = ei::padd(lanes.load(rec + 2 * H), lanes.load(b_hn.data()));
          const auto n = detail::tanh<Scalar>(
              ei::padd(ei::padd(lanes.load(g + 2 * H), lanes.load(b.data() + 2 * H)), ei::pmul(reset, hidden_n)));
          // (1 - z) n + z h_{t-1} rather than n + z (h_{t-1} - n): a saturated z = 1 keeps the state exactly.
          const auto keep = ei::pmul(update, lanes.load(h_prev));
          lanes.store(h, ei::padd(ei::pmul(ei::psub(detail::constant<Scalar>(1), update), n), keep));
          lanes.store(g, reset);
          lanes.store(g + H, update);
          lanes.store(g + 2 * H, n);
          lanes.store(hn_row, hidden_n);
        });
      }
      detail::team_barrier();  // step t+1 multiplies all of h_t
    }
  });
}

template <class Scalar>
void backward(const Shape& s, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x, ConstMatrixRef<Scalar> W_h,
              ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> gates, ConstMatrixRef<Scalar> hn,
              ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> dhs, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0,
              MatrixRef<Scalar> dW_x, MatrixRef<Scalar> dW_h, VectorRef<Scalar> db, VectorRef<Scalar> db_hn,
              ConstLengthsRef lengths, bool accumulate, Scalar* dh_norms) {
  check_inputs<Scalar>(s, x, W_x, W_h, h0);
  const Index H = s.H, B = s.B, N = s.T * s.B, GH = gate_count * H;
  detail::check_shape("gates", gates, N, GH);
  detail::check_shape("hn", hn, N, H);
  detail::check_shape("hs", hs, N, H);
  detail::check_shape("dhs", dhs, N, H);
  detail::check_shape("dx", dx, N, s.D);
  detail::check_shape("dh0", dh0, B, H);
  detail::check_shape("dW_x", dW_x, s.D, GH);
  detail::check_shape("dW_h", dW_h, H, GH);
  detail::check_shape("db", db, 1, GH);
  detail::check_shape("db_hn", db_hn, 1, H);
  const detail::ActiveRows active(s, lengths);
  const Index block_steps = std::min(s.T, backward_block_steps(B, GH + H));

  // A row of dZ: [dz_r, dz_z, d(hn)] (the gradient of h_{t-1} W_h, contiguous for the per-step product), then dz_n
  // (the gradient of x W_xn + b_n, which differs from d(hn) by the factor r).
  detail::BackwardScratch<Scalar> scratch(block_steps * B, GH + H, H);
  RowMatrix<Scalar>& dZ = scratch.dZ();
  RowMatrix<Scalar>& h_prev = scratch.previous_states();
  if (!accumulate) {
    dW_x.setZero();
    dW_h.setZero();
    db.setZero();
    db_hn.setZero();
  }
  RowMatrix<Scalar> direct(B, H);  // dh z: the part of dL/dh_{t-1} that bypasses the gates
  // dL/dh_t of step t lies in dh_steps[t % 2]: a step reads one while the team writes dL/dh_{t-1} into the other.
  // A sequence that has not started yet (going backwards) has its upstream gradient there until its last step.
  RowMatrix<Scalar> dh_steps[2] = {RowMatrix<Scalar>(B, H), RowMatrix<Scalar>(B, H)};
  dh_steps[(s.T - 1) % 2] = dhs.bottomRows(B);
  const detail::PackedWeights<Scalar> packed_W_h_transposed(W_h, true);
  for (Index t1 = s.T; t1 > 0;) {
    const Index t0 = detail::block_start(t1, block_steps), rows = (t1 - t0) * B;
    if (!active.all()) dZ.setZero();  // finished sequences add nothing to the block's products
    detail::run_team(packed_W_h_transposed, B, [&](const detail::UnitSlice& own) {
      const Index units = own.u1 - own.u0;
      for (Index t = t1 - 1; t >= t0; --t) {
        auto dz_t = dZ.middleRows((t - t0) * B, B);
        const auto h_prev_t = detail::previous_state<Scalar>(h0, hs, t, B);
        const Index running = active.count(t);
        const RowMatrix<Scalar>& dh_t = dh_steps[t % 2];
        for (Index k = 0; k < running; ++k) {
          const Index r = active.row(k);
          const Scalar* g = gates.row(t * B + r).data();
          const Scalar* hn_row = hn.row(t * B + r).data();
          const Scalar* h_prev_row = h_prev_t.row(r).data();
          const Scalar* dh_row = dh_t.row(r).data();
          Scalar* dz = dz_t.row(r).data();
          Scalar* direct_row = direct.row(r).data();
          detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
            const auto one = detail::constant<Scalar>(1);
            const auto reset = lanes.load(g);
            const auto update = lanes.load(g + H);
            const auto n = lanes.load(g + 2 * H);
            const auto dh = lanes.load(dh_row);
            const auto dz_n = ei::pmul(ei::pmul(dh, ei::psub(one, update)), ei::psub(one, ei::pmul(n, n)));
            const auto dz_z = ei::pmul(ei::pmul(dh, ei::psub(lanes.load(h_prev_row), n)),
                                       ei::pmul(update, ei::psub(one, update)));
            const auto dz_r = ei::pmul(ei::pmul(dz_n, lanes.load(hn_row)), ei::pmul(reset, ei::psub(one, reset)));
            lanes.store(dz, dz_r);
            lanes.store(dz + H, dz_z);
            lanes.store(dz + 2 * H, ei::pmul(dz_n, reset));
            lanes.store(dz + 3 * H, dz_n);
            lanes.store(direct_row, ei::pmul(dh, update));
          });
        }
        detail::team_barrier();  // dL/dh_{t-1} needs every column of dz_t
        if (own.member == 0) {  // dh_t is complete, and nobody writes it during this step
          detail::record_row_norms<Scalar>(dh_t, active, t, dh_norms ? dh_norms + (t + 1) * B : nullptr);
        }
        // dL/dh_{t-1} = dhs_{t-1} + dh z + [dz_r, dz_z, d(hn)] W_hᵀ, for this thread's units
        auto dh_prev = t > 0 ? MatrixRef<Scalar>(dh_steps[(t - 1) % 2]) : dh0;
        if (t > 0) {
          dh_prev.middleCols(own.u0, units) = dhs.middleRows((t - 1) * B, B).middleCols(own.u0, units);
        } else {
          dh_prev.middleCols(own.u0, units).setZero();
        }
        for (Index k = 0; k < running; ++k) {
          const Index r = active.row(k);
          Scalar* dh_row = dh_prev.row(r).data();
          const Scalar* direct_row = direct.row(r).data();
          detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
            lanes.store(dh_row, ei::padd(lanes.load(dh_row), lanes.load(direct_row)));
          });
        }
        packed_W_h_transposed.multiply_units(dz_t.data(), GH + H, running, dh_prev.data(), dh_prev.outerStride(),
                                             true, active.order(), own.q0, own.q1);
      }
    });
    // The block's share of the whole-sequence products (see time_blocks.hpp).
    const auto dz_rz = dZ.topRows(rows).leftCols(2 * H);
    const auto dz_n = dZ.topRows(rows).rightCols(H);
    const auto x_block = x.middleRows(t0 * B, rows);
    dW_x.leftCols(2 * H).noalias() += x_block.transpose() * dz_rz;
    dW_x.rightCols(H).noalias() += x_block.transpose() * dz_n;
    detail::gather_previous_states<Scalar>(h0, hs, B, t0, t1, h_prev);
    dW_h.noalias() += h_prev.topRows(rows).transpose() * dZ.topRows(rows).leftCols(GH);
    detail::add_column_sums<Scalar>(dz_rz, db.head(2 * H));
    detail::add_column_sums<Scalar>(dz_n, db.tail(H));
    detail::add_column_sums<Scalar>(dZ.topRows(rows).middleCols(2 * H, H), db_hn);
    auto dx_block = dx.middleRows(t0 * B, rows);
    dx_block.noalias() = dz_rz * W_x.leftCols(2 * H).transpose();
    dx_block.noalias() += dz_n * W_x.rightCols(H).transpose();
    t1 = t0;
  }
  detail::record_row_norms<Scalar>(dh0, active, 0, dh_norms);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                             \
  template void forward<Scalar>(const Shape&, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,                   \
                                ConstMatrixRef<Scalar>, ConstVectorRef<Scalar>, ConstVectorRef<Scalar>,          \
                                ConstMatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>, \
                                ConstLengthsRef);                                                                \
  template void backward<Scalar>(const Shape&, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,                  \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,         \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,         \
                                 MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,     \
                                 VectorRef<Scalar>, VectorRef<Scalar>, ConstLengthsRef, bool, Scalar*);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::gru
