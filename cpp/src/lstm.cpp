// LSTM forward and BPTT (see lstm.hpp); explicit instantiations for float and double.
#include "fastbptt/lstm.hpp"

#include "active_rows.hpp"
#include "backward_scratch.hpp"
#include "packed_product.hpp"
#include "pointwise.hpp"
#include "step_team.hpp"
#include "time_blocks.hpp"

namespace fastbptt::lstm {
namespace {

namespace ei = Eigen::internal;

/// Column offsets of the gate blocks inside a row of G*H pre-activations; f is absent without a forget gate.
struct GateColumns {
  Index i, f, g, o;
  explicit GateColumns(bool forget_gate, Index H)
      : i(0), f(forget_gate ? H : -1), g(forget_gate ? 2 * H : H), o(forget_gate ? 3 * H : 2 * H) {}
};

template <class Scalar>
void check_inputs(const Shape& s, bool forget_gate, const Eigen::Ref<const RowMatrix<Scalar>>& x,
                  const Eigen::Ref<const RowMatrix<Scalar>>& W_x, const Eigen::Ref<const RowMatrix<Scalar>>& W_h,
                  const Eigen::Ref<const RowMatrix<Scalar>>& h0, const Eigen::Ref<const RowMatrix<Scalar>>& c0) {
  detail::check_sizes(s);
  const Index GH = gate_count(forget_gate) * s.H;
  detail::check_shape("x", x, s.T * s.B, s.D);
  detail::check_shape("W_x", W_x, s.D, GH);
  detail::check_shape("W_h", W_h, s.H, GH);
  detail::check_shape("h0", h0, s.B, s.H);
  detail::check_shape("c0", c0, s.B, s.H);
}

}  // namespace

template <class Scalar>
void forward(const Shape& s, bool forget_gate, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x,
             ConstMatrixRef<Scalar> W_h, ConstVectorRef<Scalar> b, ConstMatrixRef<Scalar> h0,
             ConstMatrixRef<Scalar> c0, MatrixRef<Scalar> gates, MatrixRef<Scalar> hs, MatrixRef<Scalar> cs,
             ConstLengthsRef lengths) {
  check_inputs<Scalar>(s, forget_gate, x, W_x, W_h, h0, c0);
  const Index H = s.H, B = s.B, N = s.T * s.B, GH = gate_count(forget_gate) * H;
  detail::check_shape("b", b, 1, GH);
  detail::check_shape("gates", gates, N, GH);
  detail::check_shape("hs", hs, N, H);
  detail::check_shape("cs", cs, N, H);
  const GateColumns col(forget_gate, H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    gates.setZero();
    hs.setZero();
    cs.setZero();
  }

  // Each step's pre-activations are one product, [x_t, h_{t-1}] [W_x; W_h], with the weights packed once here. The
  // packed product rounds a row the same whatever rows a call covers, so chunked runs equal one run bit for bit
  // (Eigen's general product picks its code path by a row's position).
  const Index G = gate_count(forget_gate);
  const detail::PackedWeights<Scalar> packed_W(W_x, W_h, G);
  detail::run_team(packed_W, B, [&](const detail::UnitSlice& own) {
    for (Index t = 0; t < s.T; ++t) {
      auto z_t = gates.middleRows(t * B, B);
      const auto c_prev_t = detail::previous_state<Scalar>(c0, cs, t, B);
      const auto h_prev_t = detail::previous_state<Scalar>(h0, hs, t, B);
      const Index running = active.count(t);
      packed_W.multiply_units(x.row(t * B).data(), x.outerStride(), running, z_t.data(), gates.outerStride(), false,
                              active.order(), own.q0, own.q1, h_prev_t.data(), h_prev_t.outerStride());
      // One pass per row over this thread's units: pre-activations in, activated gates back in place, C_t and h_t
      // out.
      for (Index k = 0; k < running; ++k) {
        const Index r = active.row(k);
        Scalar* z = z_t.row(r).data();
        const Scalar* c_prev = c_prev_t.row(r).data();
        Scalar* c = cs.row(t * B + r).data();
        Scalar* h = hs.row(t * B + r).data();
        detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
          const auto gate = [&](Index column) {
            return ei::padd(lanes.load(z + column), lanes.load(b.data() + column));
          };
          const auto i = detail::sigmoid<Scalar>(gate(col.i));
          const auto g = detail::tanh<Scalar>(gate(col.g));
          const auto o = detail::sigmoid<Scalar>(gate(col.o));
          auto c_new = ei::pmul(i, g);
          if (forget_gate) {
            const auto f = detail::sigmoid<Scalar>(gate(col.f));
            c_new = ei::padd(ei::pmul(f, lanes.load(c_prev)), c_new);
            lanes.store(z + col.f, f);
          } else {
            c_new = ei::padd(lanes.load(c_prev), c_new);
          }
          lanes.store(z + col.i, i);
          lanes.store(z + col.g, g);
          lanes.store(z + col.o, o);
          lanes.store(c, c_new);
          lanes.store(h, ei::pmul(o, detail::tanh<Scalar>(c_new)));
        });
      }
      detail::team_barrier();  // step t+1 multiplies all of h_t
    }
  });
}

template <class Scalar>
void backward(const Shape& s, bool forget_gate, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x,
              ConstMatrixRef<Scalar> W_h, ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> c0,
              ConstMatrixRef<Scalar> gates, ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> cs,
              ConstMatrixRef<Scalar> dhs, ConstMatrixRef<Scalar> dc_T, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0,
              MatrixRef<Scalar> dc0, MatrixRef<Scalar> dW_x, MatrixRef<Scalar> dW_h, VectorRef<Scalar> db,
              ConstLengthsRef lengths, bool accumulate, Scalar* dh_norms) {
  check_inputs<Scalar>(s, forget_gate, x, W_x, W_h, h0, c0);
  const Index H = s.H, B = s.B, N = s.T * s.B, GH = gate_count(forget_gate) * H;
  detail::check_shape("gates", gates, N, GH);
  detail::check_shape("hs", hs, N, H);
  detail::check_shape("cs", cs, N, H);
  detail::check_shape("dhs", dhs, N, H);
  detail::check_shape("dc_T", dc_T, B, H);
  detail::check_shape("dx", dx, N, s.D);
  detail::check_shape("dh0", dh0, B, H);
  detail::check_shape("dc0", dc0, B, H);
  detail::check_shape("dW_x", dW_x, s.D, GH);
  detail::check_shape("dW_h", dW_h, H, GH);
  detail::check_shape("db", db, 1, GH);
  const GateColumns col(forget_gate, H);

  const detail::ActiveRows active(s, lengths);
  const Index block_steps = std::min(s.T, backward_block_steps(B, GH));

  detail::BackwardScratch<Scalar> scratch(block_steps * B, GH, H);
  RowMatrix<Scalar>& dZ = scratch.dZ();
  RowMatrix<Scalar>& h_prev = scratch.previous_states();
  if (!accumulate) {
    dW_x.setZero();
    dW_h.setZero();
    db.setZero();
  }
  // dL/dh_t of step t lies in dh_steps[t % 2]: a step reads one while the team writes dL/dh_{t-1} into the other.
  RowMatrix<Scalar> dh_steps[2] = {RowMatrix<Scalar>(B, H), RowMatrix<Scalar>(B, H)};
  dh_steps[(s.T - 1) % 2] = dhs.bottomRows(B);
  const detail::PackedWeights<Scalar> packed_W_h_transposed(W_h, true);
  // dc0 carries dL/dC_t backwards through the loop and holds dL/dC_0 at its end. A sequence shorter than T
  // keeps dc_T there, untouched, until the loop reaches its last step.
  dc0 = dc_T;
  for (Index t1 = s.T; t1 > 0;) {
    const Index t0 = detail::block_start(t1, block_steps), rows = (t1 - t0) * B;
    if (!active.all()) dZ.setZero();  // finished sequences add nothing to the block's products
    detail::run_team(packed_W_h_transposed, B, [&](const detail::UnitSlice& own) {
      const Index units = own.u1 - own.u0;
      for (Index t = t1 - 1; t >= t0; --t) {
        const auto c_prev_t = detail::previous_state<Scalar>(c0, cs, t, B);
        auto dz_t = dZ.middleRows((t - t0) * B, B);
        const Index running = active.count(t);
        const RowMatrix<Scalar>& dh_t = dh_steps[t % 2];
        for (Index k = 0; k < running; ++k) {
          const Index r = active.row(k);
          const Scalar* z = gates.row(t * B + r).data();
          const Scalar* c = cs.row(t * B + r).data();
          const Scalar* c_prev = c_prev_t.row(r).data();
          const Scalar* dh_row = dh_t.row(r).data();
          Scalar* dc_row = dc0.row(r).data();
          Scalar* dz = dz_t.row(r).data();
          detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
            const auto one = detail::constant<Scalar>(1);
            const auto i = lanes.load(z + col.i);
            const auto g = lanes.load(z + col.g);
            const auto o = lanes.load(z + col.o);
            const auto dh = lanes.load(dh_row);
            const auto tanh_c = detail::tanh<Scalar>(lanes.load(c));
            // dC_t = dC_t (from step t+1) + dh_t * o * (1 - tanh^2 C_t)
            const auto dc = ei::padd(lanes.load(dc_row),
                                     ei::pmul(ei::pmul(dh, o), ei::psub(one, ei::pmul(tanh_c, tanh_c))));
            lanes.store(dz + col.o, ei::pmul(ei::pmul(dh, tanh_c), ei::pmul(o, ei::psub(one, o))));
            lanes.store(dz + col.i, ei::pmul(ei::pmul(dc, g), ei::pmul(i, ei::psub(one, i))));
            lanes.store(dz + col.g, ei::pmul(ei::pmul(dc, i), ei::psub(one, ei::pmul(g, g))));
            if (forget_gate) {
              const auto f = lanes.load(z + col.f);
              lanes.store(dz + col.f, ei::pmul(ei::pmul(dc, lanes.load(c_prev)), ei::pmul(f, ei::psub(one, f))));
              lanes.store(dc_row, ei::pmul(dc, f));
            } else {
              lanes.store(dc_row, dc);
            }
          });
        }
        detail::team_barrier();  // dL/dh_{t-1} needs every column of dz_t
        if (own.member == 0) {  // dh_t is complete, and nobody writes it during this step
          detail::record_row_norms<Scalar>(dh_t, active, t, dh_norms ? dh_norms + (t + 1) * B : nullptr);
        }
        // dL/dh_{t-1} = dhs_{t-1} + dz_t W_hᵀ, for this thread's units (dL/dh_0 has no upstream term)
        auto dh_prev = t > 0 ? MatrixRef<Scalar>(dh_steps[(t - 1) % 2]) : dh0;
        if (t > 0) dh_prev.middleCols(own.u0, units) = dhs.middleRows((t - 1) * B, B).middleCols(own.u0, units);
        packed_W_h_transposed.multiply_units(dz_t.data(), GH, running, dh_prev.data(), dh_prev.outerStride(), t > 0,
                                             active.order(), own.q0, own.q1);
      }
    });
    // The block's share of the whole-sequence products: dW_x += X_blockᵀ dZ, dW_h += H_prevᵀ dZ, db, dx.
    const auto dz_block = dZ.topRows(rows);
    dW_x.noalias() += x.middleRows(t0 * B, rows).transpose() * dz_block;
    detail::gather_previous_states<Scalar>(h0, hs, B, t0, t1, h_prev);
    dW_h.noalias() += h_prev.topRows(rows).transpose() * dz_block;
    detail::add_column_sums<Scalar>(dz_block, db);
    dx.middleRows(t0 * B, rows).noalias() = dz_block * W_x.transpose();
    t1 = t0;
  }
  detail::record_row_norms<Scalar>(dh0, active, 0, dh_norms);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                            \
  template void forward<Scalar>(const Shape&, bool, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,            \
                                ConstMatrixRef<Scalar>, ConstVectorRef<Scalar>, ConstMatrixRef<Scalar>,         \
                                ConstMatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,                   \
                                MatrixRef<Scalar>, ConstLengthsRef);                                            \
  template void backward<Scalar>(const Shape&, bool, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,           \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,        \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,        \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, MatrixRef<Scalar>,             \
                                 MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,    \
                                 VectorRef<Scalar>, ConstLengthsRef, bool, Scalar*);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::lstm
