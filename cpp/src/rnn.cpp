// Plain RNN forward and BPTT (see rnn.hpp); explicit instantiations for float and double.
#include "fastbptt/rnn.hpp"

#include "active_rows.hpp"
#include "backward_scratch.hpp"
#include "packed_product.hpp"
#include "pointwise.hpp"
#include "step_team.hpp"
#include "time_blocks.hpp"

namespace fastbptt::rnn {
namespace {

namespace ei = Eigen::internal;

template <class Scalar>
void check_inputs(const Shape& s, const Eigen::Ref<const RowMatrix<Scalar>>& x,
                  const Eigen::Ref<const RowMatrix<Scalar>>& W_xh, const Eigen::Ref<const RowMatrix<Scalar>>& W_hh,
                  const Eigen::Ref<const RowMatrix<Scalar>>& h0) {
  detail::check_sizes(s);
  detail::check_shape("x", x, s.T * s.B, s.D);
  detail::check_shape("W_xh", W_xh, s.D, s.H);
  detail::check_shape("W_hh", W_hh, s.H, s.H);
  detail::check_shape("h0", h0, s.B, s.H);
}

}  // namespace

template <class Scalar>
void forward(const Shape& s, Activation activation, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_xh,
             ConstMatrixRef<Scalar> W_hh, ConstVectorRef<Scalar> b_h, ConstMatrixRef<Scalar> h0, MatrixRef<Scalar> hs,
             ConstLengthsRef lengths) {
  check_inputs<Scalar>(s, x, W_xh, W_hh, h0);
  detail::check_shape("b_h", b_h, 1, s.H);
  detail::check_shape("hs", hs, s.T * s.B, s.H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) hs.setZero();  // the outputs of finished sequences

  // z_t = [x_t, h_{t-1}] [W_xh; W_hh] is one product per step, written into hs and activated in place (see
  // lstm.cpp for why the packed product keeps chunked runs exact).
  const detail::PackedWeights<Scalar> packed_W(W_xh, W_hh, 1);
  detail::with_activation(activation, [&](auto phi) {
    using Phi = decltype(phi);
    detail::run_team(packed_W, s.B, [&](const detail::UnitSlice& own) {
      for (Index t = 0; t < s.T; ++t) {
        auto z_t = hs.middleRows(t * s.B, s.B);
        const auto h_prev_t = detail::previous_state<Scalar>(h0, hs, t, s.B);
        const Index running = active.count(t);
        packed_W.multiply_units(x.row(t * s.B).data(), x.outerStride(), running, z_t.data(), hs.outerStride(), false,
                                active.order(), own.q0, own.q1, h_prev_t.data(), h_prev_t.outerStride());
        for (Index k = 0; k < running; ++k) {
          Scalar* z = z_t.row(active.row(k)).data();
          detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
            lanes.store(z, Phi::template value<Scalar>(ei::padd(lanes.load(z), lanes.load(b_h.data()))));
          });
        }
        detail::team_barrier();  // step t+1 multiplies all of h_t
      }
    });
  });
}

template <class Scalar>
void backward(const Shape& s, Activation activation, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_xh,
              ConstMatrixRef<Scalar> W_hh, ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> hs,
              ConstMatrixRef<Scalar> dhs, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0, MatrixRef<Scalar> dW_xh,
              MatrixRef<Scalar> dW_hh, VectorRef<Scalar> db_h, ConstLengthsRef lengths, bool accumulate,
              Scalar* dh_norms) {
  check_inputs<Scalar>(s, x, W_xh, W_hh, h0);
  const Index N = s.T * s.B;
  detail::check_shape("hs", hs, N, s.H);
  detail::check_shape("dhs", dhs, N, s.H);
  detail::check_shape("dx", dx, N, s.D);
  detail::check_shape("dh0", dh0, s.B, s.H);
  detail::check_shape("dW_xh", dW_xh, s.D, s.H);
  detail::check_shape("dW_hh", dW_hh, s.H, s.H);
  detail::check_shape("db_h", db_h, 1, s.H);
  const detail::ActiveRows active(s, lengths);
  const Index block_steps = std::min(s.T, backward_block_steps(s.B, s.H));

  detail::BackwardScratch<Scalar> scratch(block_steps * s.B, s.H, s.H);
  RowMatrix<Scalar>& dZ = scratch.dZ();
  RowMatrix<Scalar>& h_prev = scratch.previous_states();
  if (!accumulate) {
    dW_xh.setZero();
    dW_hh.setZero();
    db_h.setZero();
  }
  // dL/dh_t of step t lies in dh_steps[t % 2]: a step reads one while the team writes dL/dh_{t-1} into the other.
  // A sequence that has not started yet (going backwards) has its upstream gradient there until its last step.
  RowMatrix<Scalar> dh_steps[2] = {RowMatrix<Scalar>(s.B, s.H), RowMatrix<Scalar>(s.B, s.H)};
  dh_steps[(s.T - 1) % 2] = dhs.bottomRows(s.B);
  const detail::PackedWeights<Scalar> packed_W_hh_transposed(W_hh, true);
  detail::with_activation(activation, [&](auto phi) {
    using Phi = decltype(phi);
    for (Index t1 = s.T; t1 > 0;) {
      const Index t0 = detail::block_start(t1, block_steps), rows = (t1 - t0) * s.B;
      if (!active.all()) dZ.setZero();  // finished sequences add nothing to the block's products
      detail::run_team(packed_W_hh_transposed, s.B, [&](const detail::UnitSlice& own) {
        const Index units = own.u1 - own.u0;
        for (Index t = t1 - 1; t >= t0; --t) {
          auto dz_t = dZ.middleRows((t - t0) * s.B, s.B);
          const Index running = active.count(t);
          const RowMatrix<Scalar>& dh_t = dh_steps[t % 2];
          for (Index k = 0; k < running; ++k) {
            const Index r = active.row(k);
            Scalar* dz = dz_t.row(r).data();
            const Scalar* dh = dh_t.row(r).data();
            const Scalar* h = hs.row(t * s.B + r).data();
            detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
              lanes.store(dz, Phi::template gradient<Scalar>(lanes.load(dh), lanes.load(h)));
            });
          }
          detail::team_barrier();  // dL/dh_{t-1} needs every column of dz_t
          if (own.member == 0) {  // dh_t is complete, and nobody writes it during this step
            detail::record_row_norms<Scalar>(dh_t, active, t, dh_norms ? dh_norms + (t + 1) * s.B : nullptr);
          }
          // dL/dh_{t-1} = dhs_{t-1} + dz_t W_hhᵀ, for this thread's units (dL/dh_0 has no upstream term)
          auto dh_prev = t > 0 ? MatrixRef<Scalar>(dh_steps[(t - 1) % 2]) : dh0;
          if (t > 0) dh_prev.middleCols(own.u0, units) = dhs.middleRows((t - 1) * s.B, s.B).middleCols(own.u0, units);
          packed_W_hh_transposed.multiply_units(dz_t.data(), s.H, running, dh_prev.data(), dh_prev.outerStride(), t > 0,
                                                active.order(), own.q0, own.q1);
        }
      });
      // The block's share of the whole-sequence products (see time_blocks.hpp).
      const auto dz_block = dZ.topRows(rows);
      dW_xh.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block;
      detail::gather_previous_states<Scalar>(h0, hs, s.B, t0, t1, h_prev);
      dW_hh.noalias() += h_prev.topRows(rows).transpose() * dz_block;
      detail::add_column_sums<Scalar>(dz_block, db_h);
      dx.middleRows(t0 * s.B, rows).noalias() = dz_block * W_xh.transpose();
      t1 = t0;
    }
  });
  detail::record_row_norms<Scalar>(dh0, active, 0, dh_norms);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                           \
  template void forward<Scalar>(const Shape&, Activation, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,      \
                                ConstMatrixRef<Scalar>, ConstVectorRef<Scalar>, ConstMatrixRef<Scalar>,        \
                                MatrixRef<Scalar>, ConstLengthsRef);                                           \
  template void backward<Scalar>(const Shape&, Activation, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,     \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,       \
                                 ConstMatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,                 \
                                 MatrixRef<Scalar>, MatrixRef<Scalar>, VectorRef<Scalar>, ConstLengthsRef, bool, \
                                 Scalar*);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::rnn
