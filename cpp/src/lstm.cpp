// LSTM forward and BPTT (see lstm.hpp); explicit instantiations for float and double.
#include "fastbptt/lstm.hpp"

#include "fastbptt/activations.hpp"

namespace fastbptt::lstm {
namespace {

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
             ConstMatrixRef<Scalar> c0, MatrixRef<Scalar> gates, MatrixRef<Scalar> hs, MatrixRef<Scalar> cs) {
  check_inputs<Scalar>(s, forget_gate, x, W_x, W_h, h0, c0);
  const Index H = s.H, B = s.B, N = s.T * s.B, GH = gate_count(forget_gate) * H;
  detail::check_shape("b", b, 1, GH);
  detail::check_shape("gates", gates, N, GH);
  detail::check_shape("hs", hs, N, H);
  detail::check_shape("cs", cs, N, H);
  const GateColumns col(forget_gate, H);

  gates.noalias() = x * W_x;
  for (Index t = 0; t < s.T; ++t) {
    auto z = gates.middleRows(t * B, B);
    const auto h_prev = detail::previous_state<Scalar>(h0, hs, t, B);
    const auto c_prev = detail::previous_state<Scalar>(c0, cs, t, B);
    z.noalias() += h_prev * W_h;
    z.rowwise() += b;
    auto i = z.middleCols(col.i, H).array();
    auto g = z.middleCols(col.g, H).array();
    auto o = z.middleCols(col.o, H).array();
    i = detail::sigmoid(i);
    g = g.tanh();
    o = detail::sigmoid(o);
    auto c = cs.middleRows(t * B, B).array();
    if (forget_gate) {
      auto f = z.middleCols(col.f, H).array();
      f = detail::sigmoid(f);
      c = f * c_prev.array() + i * g;
    } else {
      c = c_prev.array() + i * g;
    }
    hs.middleRows(t * B, B).array() = o * c.tanh();
  }
}

template <class Scalar>
void backward(const Shape& s, bool forget_gate, ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> W_x,
              ConstMatrixRef<Scalar> W_h, ConstMatrixRef<Scalar> h0, ConstMatrixRef<Scalar> c0,
              ConstMatrixRef<Scalar> gates, ConstMatrixRef<Scalar> hs, ConstMatrixRef<Scalar> cs,
              ConstMatrixRef<Scalar> dhs, ConstMatrixRef<Scalar> dc_T, MatrixRef<Scalar> dx, MatrixRef<Scalar> dh0,
              MatrixRef<Scalar> dc0, MatrixRef<Scalar> dW_x, MatrixRef<Scalar> dW_h, VectorRef<Scalar> db) {
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

  RowMatrix<Scalar> dZ(N, GH);
  RowMatrix<Scalar> dh(B, H);
  RowMatrix<Scalar> tanh_c(B, H);
  // dc0 carries dL/dC_t backwards through the loop and holds dL/dC_0 at its end.
  dc0 = dc_T;
  dh = dhs.bottomRows(B);
  for (Index t = s.T - 1; t >= 0; --t) {
    const auto z = gates.middleRows(t * B, B);
    const auto i = z.middleCols(col.i, H).array();
    const auto g = z.middleCols(col.g, H).array();
    const auto o = z.middleCols(col.o, H).array();
    const auto c_prev = detail::previous_state<Scalar>(c0, cs, t, B);
    auto dz = dZ.middleRows(t * B, B);
    auto dc = dc0.array();

    tanh_c.array() = cs.middleRows(t * B, B).array().tanh();
    dc += dh.array() * o * (Scalar(1) - tanh_c.array().square());
    dz.middleCols(col.o, H).array() = dh.array() * tanh_c.array() * o * (Scalar(1) - o);
    dz.middleCols(col.i, H).array() = dc * g * i * (Scalar(1) - i);
    dz.middleCols(col.g, H).array() = dc * i * (Scalar(1) - g.square());
    if (forget_gate) {
      const auto f = z.middleCols(col.f, H).array();
      dz.middleCols(col.f, H).array() = dc * c_prev.array() * f * (Scalar(1) - f);
      dc *= f;
    }
    if (t > 0) {
      dh = dhs.middleRows((t - 1) * B, B);
      dh.noalias() += dz * W_h.transpose();
    } else {
      dh0.noalias() = dz * W_h.transpose();
    }
  }

  dW_x.noalias() = x.transpose() * dZ;
  // H_prev = [h0; h_1 .. h_{T-1}]: two products instead of a copy that stacks them.
  dW_h.noalias() = h0.transpose() * dZ.topRows(B);
  if (s.T > 1) dW_h.noalias() += hs.topRows(N - B).transpose() * dZ.bottomRows(N - B);
  db = dZ.colwise().sum();
  dx.noalias() = dZ * W_x.transpose();
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                            \
  template void forward<Scalar>(const Shape&, bool, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,            \
                                ConstMatrixRef<Scalar>, ConstVectorRef<Scalar>, ConstMatrixRef<Scalar>,         \
                                ConstMatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,                   \
                                MatrixRef<Scalar>);                                                             \
  template void backward<Scalar>(const Shape&, bool, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,           \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,        \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>,        \
                                 ConstMatrixRef<Scalar>, ConstMatrixRef<Scalar>, MatrixRef<Scalar>,             \
                                 MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>, MatrixRef<Scalar>,    \
                                 VectorRef<Scalar>);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::lstm
