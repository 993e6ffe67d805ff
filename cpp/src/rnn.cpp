// Plain RNN forward and BPTT (see rnn.hpp); explicit instantiations for float and double.
#include "fastbptt/rnn.hpp"

#include "pointwise.hpp"
#include "time_loop.hpp"

namespace fastbptt::rnn {
namespace {

namespace ei = Eigen::internal;

template <class Scalar>
void check_inputs(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  detail::check_sequence(s, in.x, in.h0);
  detail::check_shape("W_xh", w.W_xh, s.D, s.H);
  detail::check_shape("W_hh", w.W_hh, s.H, s.H);
}

/// A forward's checks: those of every call and the bias, which only the forwards read.
template <class Scalar>
void check_forward_inputs(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  check_inputs(s, in, w);
  detail::check_shape("b_h", w.b_h, 1, s.H);
}

/// The plain RNN's step: z_t = [x_t, h_{t-1}] [W_xh; W_hh] is one product, written into hs and activated in place.
template <class Scalar, class Phi>
struct ForwardCell {
  detail::MatrixMap<const Scalar> x;
  detail::VectorMap<const Scalar> b_h;
  detail::MatrixMap<Scalar> hs;
  const detail::PackedWeights<Scalar>& packed_W;
  const Shape& s;
  const detail::ActiveRows& active;

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W; }

  void step_product(Index t, const detail::UnitSlice& own, const detail::StateRows<Scalar>& h_prev_t) {
    packed_W.multiply_units(detail::stacked_step_rows<Scalar>(x, h_prev_t, t, active), own.panels,
                            detail::strided_rows(hs.middleRows(t * s.B, s.B)), detail::Store::overwrite);
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
  detail::MatrixMap<const Scalar> x, hs;
  detail::MatrixMap<Scalar> dW_xh, dW_hh;
  detail::VectorMap<Scalar> db_h;
  const Shape& s;

  Index dz_columns() const { return s.H; }

  void zero_weight_gradients() {
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

  void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                            const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    dW_xh.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block;
    dW_hh.noalias() += h_prev.transpose() * dz_block;
    detail::add_column_sums<Scalar>(dz_block, db_h);
  }

  detail::LeftOperand<Scalar> input_gradient_rows(const detail::LeftOperand<Scalar>& dz) const { return dz; }
};

/// The time loop of both forwards: hs, which the RNN's step writes in place, is all it keeps either way.
template <class Scalar>
void run_forward(const Shape& s, Activation activation, const Inputs<Scalar>& in, const Weights<Scalar>& w,
                 detail::MatrixMap<Scalar> hs, const detail::ActiveRows& active, const Packed<Scalar>& kept,
                 const Handoffs& handoffs) {
  if (!active.all()) hs.setZero();  // the outputs of finished sequences
  // The packed product rounds a row the same whatever rows a call covers, so chunked runs equal one run bit for
  // bit (Eigen's general product picks its code path by a row's position).
  std::optional<detail::PackedWeights<Scalar>> own;
  const detail::PackedWeights<Scalar>& packed_W = detail::kept_or_packed(
      kept, 0, s.D + s.H, s.H, 1, s.D, own,
      [&] { return detail::PackedWeights<Scalar>(w.W_xh.map(), w.W_hh.map(), 1); });
  detail::with_activation(activation, [&](auto phi) {
    ForwardCell<Scalar, decltype(phi)> cell{in.x.map(), w.b_h.map(), hs, packed_W, s, active};
    detail::forward_time_loop<Scalar>(s, active, in.h0.map(), hs, cell, handoffs);
  });
}

}  // namespace

template <class Scalar>
Packed<Scalar> pack(const Weights<Scalar>& w) {
  const Index H = w.W_hh.rows();
  detail::check_shape("W_hh", w.W_hh, H, H);
  detail::check_shape("W_xh", w.W_xh, w.W_xh.rows(), H);
  auto parts = std::make_shared<typename Packed<Scalar>::Parts>();
  parts->emplace_back(w.W_xh.map(), w.W_hh.map(), 1);
  parts->emplace_back(w.W_hh.map(), detail::Orientation::transposed);
  parts->emplace_back(w.W_xh.map(), detail::Orientation::transposed);
  return Packed<Scalar>(std::move(parts));
}

template <class Scalar>
void forward(const Shape& s, Activation activation, const Inputs<Scalar>& in, const Weights<Scalar>& w,
             const Cache<Scalar>& cache, ConstLengthsRef lengths, const Packed<Scalar>& kept,
             const Handoffs& handoffs) {
  check_forward_inputs(s, in, w);
  detail::check_shape("hs", cache.hs, s.T * s.B, s.H);
  run_forward(s, activation, in, w, cache.hs.map(), detail::ActiveRows(s, lengths), kept, handoffs);
}

template <class Scalar>
void forward_inference(const Shape& s, Activation activation, const Inputs<Scalar>& in, const Weights<Scalar>& w,
                       const Outputs<Scalar>& out, ConstLengthsRef lengths, const Packed<Scalar>& kept,
                       const Handoffs& handoffs) {
  check_forward_inputs(s, in, w);
  detail::check_shape("hs", out.hs, s.T * s.B, s.H);
  detail::check_shape("h_T", out.h_T, s.B, s.H);
  const detail::ActiveRows active(s, lengths);
  run_forward(s, activation, in, w, out.hs.map(), active, kept, handoffs);
  detail::copy_final_states<Scalar>(out.hs.map(), active, out.h_T.map());
}

template <class Scalar>
void backward(const Shape& s, Activation activation, const Inputs<Scalar>& in, const Weights<Scalar>& w,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& up, const Gradients<Scalar>& grad,
              ConstLengthsRef lengths, const BackwardOptions<Scalar>& options, const Packed<Scalar>& kept,
              const Handoffs& handoffs) {
  check_inputs(s, in, w);
  const Index N = s.T * s.B;
  detail::check_shape("hs", cache.hs, N, s.H);
  detail::check_backward(s, up.dhs, grad, options);
  if (options.need_weight_gradients) {
    detail::check_shape("dW_xh", grad.dW_xh, s.D, s.H);
    detail::check_shape("dW_hh", grad.dW_hh, s.H, s.H);
    detail::check_shape("db_h", grad.db_h, 1, s.H);
  }
  const detail::ActiveRows active(s, lengths);
  std::optional<detail::PackedWeights<Scalar>> own_W_hh, own_W_xh;
  const detail::PackedWeights<Scalar>& W_hh_transposed = detail::kept_or_packed(
      kept, 1, s.H, s.H, 1, s.H, own_W_hh,
      [&] { return detail::PackedWeights<Scalar>(w.W_hh.map(), detail::Orientation::transposed); });
  const auto input = detail::input_gradient(options, grad.dx.map(), kept, 2, s.H, s.D, s.H, own_W_xh, [&] {
    return detail::PackedWeights<Scalar>(w.W_xh.map(), detail::Orientation::transposed);
  });
  detail::with_activation(activation, [&](auto phi) {
    BackwardCell<Scalar, decltype(phi)> cell{in.x.map(),       cache.hs.map(),   grad.dW_xh.map(),
                                             grad.dW_hh.map(), grad.db_h.map(), s};
    detail::backward_time_loop<Scalar>(s, active, W_hh_transposed, in.h0.map(), cache.hs.map(), up.dhs.map(),
                                       grad.dh0.map(), input, options, cell, handoffs);
  });
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                             \
  template void forward<Scalar>(const Shape&, Activation, const Inputs<Scalar>&, const Weights<Scalar>&,         \
                                const Cache<Scalar>&, ConstLengthsRef, const Packed<Scalar>&, const Handoffs&);  \
  template void forward_inference<Scalar>(const Shape&, Activation, const Inputs<Scalar>&,                       \
                                          const Weights<Scalar>&, const Outputs<Scalar>&, ConstLengthsRef,       \
                                          const Packed<Scalar>&, const Handoffs&);                               \
  template void backward<Scalar>(const Shape&, Activation, const Inputs<Scalar>&, const Weights<Scalar>&,        \
                                 const Cache<const Scalar>&, const Upstream<Scalar>&, const Gradients<Scalar>&,  \
                                 ConstLengthsRef, const BackwardOptions<Scalar>&, const Packed<Scalar>&,         \
                                 const Handoffs&);                                                               \
  template Packed<Scalar> pack<Scalar>(const Weights<Scalar>&);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::rnn
