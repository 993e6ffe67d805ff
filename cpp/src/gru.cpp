// GRU forward and BPTT (see gru.hpp); explicit instantiations for float and double.
#include "fastbptt/gru.hpp"

#include "pointwise.hpp"
#include "time_loop.hpp"

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

/// The GRU's step. Unlike the LSTM's, the recurrent product cannot be added onto the input projection (r scales
/// its n block): the step's product h_{t-1} W_h goes into `recurrent`, and one pass per row combines it with the
/// projected inputs already in the gate rows.
template <class Scalar>
struct ForwardCell {
  ConstVectorRef<Scalar> b, b_hn;
  MatrixRef<Scalar> gates, hn, hs;
  const detail::PackedWeights<Scalar>& packed_W_h;
  const Shape& s;
  const detail::ActiveRows& active;
  RowMatrix<Scalar> recurrent;  // [B, 3H]

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W_h; }

  void step_product(Index, Index running, const detail::UnitSlice& own, const detail::StateRows<Scalar>& h_prev_t) {
    packed_W_h.multiply_units(h_prev_t.data(), h_prev_t.outerStride(), running, recurrent.data(), recurrent.cols(),
                              false, active.order(), own.q0, own.q1);
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* h_prev) {
    const Index H = s.H;
    Scalar* g = gates.row(t * s.B + r).data();
    const Scalar* rec = recurrent.row(r).data();
    Scalar* hn_row = hn.row(t * s.B + r).data();
    Scalar* h = hs.row(t * s.B + r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      const auto reset =
          detail::sigmoid<Scalar>(ei::padd(ei::padd(lanes.load(g), lanes.load(rec)), lanes.load(b.data())));
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
};

/// The GRU's BPTT step. A row of dZ is [dz_r, dz_z, d(hn)] (the gradient of h_{t-1} W_h, contiguous for the per-step
/// product), then dz_n (the gradient of x W_xn + b_n, which differs from d(hn) by the factor r); dh z reaches
/// h_{t-1} directly, past W_h.
template <class Scalar>
struct BackwardCell {
  static constexpr bool direct_term = true;
  ConstMatrixRef<Scalar> x, W_x, h0, gates, hn, hs;
  MatrixRef<Scalar> dx, dW_x, dW_h;
  VectorRef<Scalar> db, db_hn;
  const Shape& s;
  RowMatrix<Scalar> direct;  // [B, H] dh z of the step

  Index dz_columns() const { return gate_count * s.H + s.H; }

  void zero_gradients() {
    dW_x.setZero();
    dW_h.setZero();
    db.setZero();
    db_hn.setZero();
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* dh_row, Scalar* dz) {
    const Index H = s.H;
    const Scalar* g = gates.row(t * s.B + r).data();
    const Scalar* hn_row = hn.row(t * s.B + r).data();
    const Scalar* h_prev_row = detail::previous_state<Scalar>(h0, hs, t, s.B).row(r).data();
    Scalar* direct_row = direct.row(r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      const auto one = detail::constant<Scalar>(1);
      const auto reset = lanes.load(g);
      const auto update = lanes.load(g + H);
      const auto n = lanes.load(g + 2 * H);
      const auto dh = lanes.load(dh_row);
      const auto dz_n = ei::pmul(ei::pmul(dh, ei::psub(one, update)), ei::psub(one, ei::pmul(n, n)));
      const auto dz_z =
          ei::pmul(ei::pmul(dh, ei::psub(lanes.load(h_prev_row), n)), ei::pmul(update, ei::psub(one, update)));
      const auto dz_r = ei::pmul(ei::pmul(dz_n, lanes.load(hn_row)), ei::pmul(reset, ei::psub(one, reset)));
      lanes.store(dz, dz_r);
      lanes.store(dz + H, dz_z);
      lanes.store(dz + 2 * H, ei::pmul(dz_n, reset));
      lanes.store(dz + 3 * H, dz_n);
      lanes.store(direct_row, ei::pmul(dh, update));
    });
  }

  void add_direct_term(Index r, const detail::UnitSlice& own, Scalar* dh_row) const {
    const Scalar* direct_row = direct.row(r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      lanes.store(dh_row, ei::padd(lanes.load(dh_row), lanes.load(direct_row)));
    });
  }

  void block_products(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                      const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    const Index H = s.H;
    const auto dz_rz = dz_block.leftCols(2 * H);
    const auto dz_n = dz_block.rightCols(H);
    const auto x_block = x.middleRows(t0 * s.B, rows);
    dW_x.leftCols(2 * H).noalias() += x_block.transpose() * dz_rz;
    dW_x.rightCols(H).noalias() += x_block.transpose() * dz_n;
    dW_h.noalias() += h_prev.transpose() * dz_block.leftCols(gate_count * H);
    detail::add_column_sums<Scalar>(dz_rz, db.head(2 * H));
    detail::add_column_sums<Scalar>(dz_n, db.tail(H));
    detail::add_column_sums<Scalar>(dz_block.middleCols(2 * H, H), db_hn);
    auto dx_block = dx.middleRows(t0 * s.B, rows);
    dx_block.noalias() = dz_rz * W_x.leftCols(2 * H).transpose();
    dx_block.noalias() += dz_n * W_x.rightCols(H).transpose();
  }
};

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
  ForwardCell<Scalar> cell{b, b_hn, gates, hn, hs, packed_W_h, s, active, RowMatrix<Scalar>(B, GH)};
  detail::forward_time_loop<Scalar>(s, active, h0, hs, cell);
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
  BackwardCell<Scalar> cell{x, W_x, h0, gates, hn, hs, dx, dW_x, dW_h, db, db_hn, s, RowMatrix<Scalar>(B, H)};
  detail::backward_time_loop<Scalar>(s, active, W_h, h0, hs, dhs, dh0, accumulate, dh_norms, cell);
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
