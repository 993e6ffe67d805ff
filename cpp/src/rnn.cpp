// Plain RNN forward and BPTT (see rnn.hpp); explicit instantiations for float and double.
#include "fastbptt/rnn.hpp"

#include "pointwise.hpp"
#include "time_loop.hpp"

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

/// The plain RNN's step: z_t = [x_t, h_{t-1}] [W_xh; W_hh] is one product, written into hs and activated in place.
template <class Scalar, class Phi>
struct ForwardCell {
  ConstMatrixRef<Scalar> x;
  ConstVectorRef<Scalar> b_h;
  MatrixRef<Scalar> hs;
  const detail::PackedWeights<Scalar>& packed_W;
  const Shape& s;
  const detail::ActiveRows& active;

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W; }

  void step_product(Index t, Index running, const detail::UnitSlice& own,
                    const detail::StateRows<Scalar>& h_prev_t) {
    packed_W.multiply_units(x.row(t * s.B).data(), x.outerStride(), running, hs.row(t * s.B).data(), hs.outerStride(),
                            false, active.order(), own.q0, own.q1, h_prev_t.data(), h_prev_t.outerStride());
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar*) {
    Scalar* z = hs.row(t * s.B + r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      lanes.store(z, Phi::template value<Scalar>(ei::padd(lanes.load(z), lanes.load(b_h.data()))));
    });
  }
};

/// The plain RNN's BPTT step: dz_t = phi'(z_t) dh_t, with phi' written through h_t.
template <class Scalar, class Phi>
struct BackwardCell {
  static constexpr bool direct_term = false;
  ConstMatrixRef<Scalar> x, W_xh, hs;
  MatrixRef<Scalar> dx, dW_xh, dW_hh;
  VectorRef<Scalar> db_h;
  const Shape& s;

  Index dz_columns() const { return s.H; }

  void zero_gradients() {
    dW_xh.setZero();
    dW_hh.setZero();
    db_h.setZero();
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* dh, Scalar* dz) const {
    const Scalar* h = hs.row(t * s.B + r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      lanes.store(dz, Phi::template gradient<Scalar>(lanes.load(dh), lanes.load(h)));
    });
  }

  void add_direct_term(Index, const detail::UnitSlice&, Scalar*) const {}

  void block_products(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                      const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    dW_xh.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block;
    dW_hh.noalias() += h_prev.transpose() * dz_block;
    detail::add_column_sums<Scalar>(dz_block, db_h);
    dx.middleRows(t0 * s.B, rows).noalias() = dz_block * W_xh.transpose();
  }
};

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

  // The packed product rounds a row the same whatever rows a call covers, so chunked runs equal one run bit for
  // bit (Eigen's general product picks its code path by a row's position).
  const detail::PackedWeights<Scalar> packed_W(W_xh, W_hh, 1);
  detail::with_activation(activation, [&](auto phi) {
    ForwardCell<Scalar, decltype(phi)> cell{x, b_h, hs, packed_W, s, active};
    detail::forward_time_loop<Scalar>(s, active, h0, hs, cell);
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
  detail::with_activation(activation, [&](auto phi) {
    BackwardCell<Scalar, decltype(phi)> cell{x, W_xh, hs, dx, dW_xh, dW_hh, db_h, s};
    detail::backward_time_loop<Scalar>(s, active, W_hh, h0, hs, dhs, dh0, accumulate, dh_norms, cell);
  });
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
