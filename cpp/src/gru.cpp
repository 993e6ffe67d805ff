// GRU forward and BPTT (see gru.hpp); explicit instantiations for float and double.
#include "fastbptt/gru.hpp"

#include "pointwise.hpp"
#include "time_loop.hpp"

namespace fastbptt::gru {
namespace {

namespace ei = Eigen::internal;

template <class Scalar>
void check_inputs(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  detail::check_sequence(s, in.x, in.h0);
  detail::check_shape("W_x", w.W_x, s.D, gate_count * s.H);
  detail::check_shape("W_h", w.W_h, s.H, gate_count * s.H);
}

/// A forward's checks: those of every call and the biases, which only the forwards read.
template <class Scalar>
void check_forward_inputs(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  check_inputs(s, in, w);
  detail::check_shape("b", w.b, 1, gate_count * s.H);
  detail::check_shape("b_hn", w.b_hn, 1, s.H);
}

template <class Element>
void check_cache(const Shape& s, const Cache<Element>& cache) {
  const Index N = s.T * s.B;
  detail::check_shape("gates", cache.gates, N, gate_count * s.H);
  detail::check_shape("hn", cache.hn, N, s.H);
  detail::check_shape("hs", cache.hs, N, s.H);
}

/// The GRU's step. Unlike the LSTM's, the recurrent product cannot be added onto the input projection (r scales
/// its n block): the step's product h_{t-1} W_h goes into `recurrent`, and one pass per row combines it with the
/// projected inputs in the gate rows. For training (Keep::training_cache) the projections of all steps are in
/// `gates` beforehand, and the pass writes the activated gates over them and h_{t-1} W_hn + b_hn into `hn`.
/// Forward-only (Keep::current_state) `gates` holds one step's B rows, which the step's product x_t W_x fills for
/// the thread's units, and nothing else is kept. A training forward whose inputs arrive step by step (a wavefront of
/// layers) projects each step's in its step product too. Either way each element of a projection is the same sum in
/// the same order (PackedWeights), so all forwards give the same bits.
template <class Scalar, detail::Keep keep>
struct ForwardCell {
  static constexpr bool keeps_cache = keep == detail::Keep::training_cache;
  detail::MatrixMap<const Scalar> x;
  detail::VectorMap<const Scalar> b, b_hn;
  detail::MatrixMap<Scalar> gates, hn, hs;
  const detail::PackedWeights<Scalar>& packed_W_x;  // grouped by gate block (forward-only; training projects ahead)
  const detail::PackedWeights<Scalar>& packed_W_h;
  const Shape& s;
  const detail::ActiveRows& active;
  RowMatrix<Scalar> recurrent;  // [B, 3H]
  bool projects_each_step;      // x_t W_x in the step product (always forward-only), not all steps' beforehand

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W_h; }

  /// The row of `gates` that holds batch row r at step t.
  Index kept_row(Index t, Index r) const { return keeps_cache ? t * s.B + r : r; }

  void step_product(Index t, const detail::UnitSlice& own, const detail::StateRows<Scalar>& h_prev_t) {
    if (projects_each_step) {
      packed_W_x.multiply_units(detail::step_rows<Scalar>(x.middleRows(t * s.B, s.B), t, active), own.panels,
                                detail::strided_rows(gates.middleRows(kept_row(t, 0), s.B)), detail::Store::overwrite);
    }
    packed_W_h.multiply_units(detail::step_rows<Scalar>(h_prev_t, t, active), own.panels,
                              detail::strided_rows(recurrent), detail::Store::overwrite);
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* h_prev) {
    const Index H = s.H;
    Scalar* g = gates.row(kept_row(t, r)).data();
    const Scalar* rec = recurrent.row(r).data();
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
      const auto keep_state = ei::pmul(update, lanes.load(h_prev));
      lanes.store(h, ei::padd(ei::pmul(ei::psub(detail::constant<Scalar>(1), update), n), keep_state));
      if constexpr (keeps_cache) {
        lanes.store(g, reset);
        lanes.store(g + H, update);
        lanes.store(g + 2 * H, n);
        lanes.store(hn.row(t * s.B + r).data(), hidden_n);
      }
    });
  }
};

/// The GRU's BPTT step. A row of dZ is [dz_r, dz_z, d(hn)] (the gradient of h_{t-1} W_h, contiguous for the per-step
/// product), then dz_n (the gradient of x W_xn + b_n, which differs from d(hn) by the factor r); dh z reaches
/// h_{t-1} directly, past W_h.
template <class Scalar>
struct BackwardCell {
  static constexpr bool direct_term = true;
  detail::MatrixMap<const Scalar> x, h0, gates, hn, hs;
  detail::MatrixMap<Scalar> dW_x, dW_h;
  detail::VectorMap<Scalar> db, db_hn;
  const Shape& s;
  RowMatrix<Scalar> direct;  // [B, H] dh z of the step

  Index dz_columns() const { return gate_count * s.H + s.H; }

  void zero_weight_gradients() {
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

  void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
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
  }

  /// [dz_r, dz_z] and dz_n, which multiply W_xᵀ packed in two parts, its first 2H rows and its last H.
  detail::LeftOperand<Scalar> input_gradient_rows(detail::LeftOperand<Scalar> dz) const {
    dz.second = {dz.first.data + 3 * s.H, dz.first.stride};
    return dz;
  }
};

/// W_x and W_h, each in gate blocks (parts 0 and 1 of `pack`), so that a thread's panels of either hold the same
/// hidden units.
template <class Scalar>
struct StepWeights {
  std::optional<detail::PackedWeights<Scalar>> own_W_x, own_W_h;
  const detail::PackedWeights<Scalar>& W_x;
  const detail::PackedWeights<Scalar>& W_h;

  StepWeights(const Shape& s, const Weights<Scalar>& w, const Packed<Scalar>& kept)
      : W_x(detail::kept_or_packed(kept, 0, s.D, gate_count * s.H, gate_count, s.D, own_W_x, [&] {
          return detail::PackedWeights<Scalar>(w.W_x.map(), detail::Orientation::as_given, gate_count);
        })),
        W_h(detail::kept_or_packed(kept, 1, s.H, gate_count * s.H, gate_count, s.H, own_W_h, [&] {
          return detail::PackedWeights<Scalar>(w.W_h.map(), detail::Orientation::as_given, gate_count);
        })) {}
};

/// W_xᵀ [3H, D] for dx, in two parts that dZ's rows multiply apart: the rows of r and z, then those of n.
template <class Scalar>
detail::PackedWeights<Scalar> input_weights_transposed(const Weights<Scalar>& w) {
  const RowMatrix<Scalar> W_x_transposed = w.W_x.map().transpose();
  const Index H = W_x_transposed.rows() / gate_count;
  return detail::PackedWeights<Scalar>(W_x_transposed.topRows(2 * H), W_x_transposed.bottomRows(H), 1);
}

}  // namespace

template <class Scalar>
Packed<Scalar> pack(const Weights<Scalar>& w) {
  const Index H = w.W_h.rows();
  detail::check_shape("W_h", w.W_h, H, gate_count * H);
  detail::check_shape("W_x", w.W_x, w.W_x.rows(), gate_count * H);
  auto parts = std::make_shared<typename Packed<Scalar>::Parts>();
  parts->emplace_back(w.W_x.map(), detail::Orientation::as_given, gate_count);
  parts->emplace_back(w.W_h.map(), detail::Orientation::as_given, gate_count);
  parts->emplace_back(w.W_h.map(), detail::Orientation::transposed);
  parts->push_back(input_weights_transposed(w));
  return Packed<Scalar>(std::move(parts));
}

template <class Scalar>
void forward(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Cache<Scalar>& cache,
             ConstLengthsRef lengths, const Packed<Scalar>& kept, const Handoffs& handoffs) {
  check_forward_inputs(s, in, w);
  const Index H = s.H, B = s.B, GH = gate_count * H;
  check_cache(s, cache);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    cache.gates.map().setZero();
    cache.hn.map().setZero();
    cache.hs.map().setZero();
  }
  const StepWeights<Scalar> packed(s, w, kept);
  const bool inputs_arrive = handoffs.input != nullptr;  // step by step: each step projects its own
  if (!inputs_arrive) detail::project_inputs<Scalar>(packed.W_x, in.x.map(), cache.gates.map(), s, active);
  ForwardCell<Scalar, detail::Keep::training_cache> cell{
      in.x.map(), w.b.map(), w.b_hn.map(), cache.gates.map(), cache.hn.map(), cache.hs.map(), packed.W_x,
      packed.W_h, s,         active,       RowMatrix<Scalar>(B, GH), inputs_arrive};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), cache.hs.map(), cell, handoffs);
}

template <class Scalar>
void forward_inference(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Outputs<Scalar>& out,
                       ConstLengthsRef lengths, const Packed<Scalar>& kept, const Handoffs& handoffs) {
  check_forward_inputs(s, in, w);
  const Index H = s.H, B = s.B, GH = gate_count * H;
  detail::check_shape("hs", out.hs, s.T * B, H);
  detail::check_shape("h_T", out.h_T, B, H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) out.hs.map().setZero();  // the rows of finished sequences
  const StepWeights<Scalar> packed(s, w, kept);
  RowMatrix<Scalar> step_gates(B, GH);
  const detail::MatrixMap<Scalar> not_kept = MatrixView<Scalar>().map();  // hn
  ForwardCell<Scalar, detail::Keep::current_state> cell{
      in.x.map(), w.b.map(), w.b_hn.map(), MatrixView<Scalar>(step_gates).map(), not_kept,
      out.hs.map(), packed.W_x, packed.W_h, s, active, RowMatrix<Scalar>(B, GH), true};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), out.hs.map(), cell, handoffs);
  detail::copy_final_states<Scalar>(out.hs.map(), active, out.h_T.map());
}

template <class Scalar>
void backward(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Cache<const Scalar>& cache,
              const Upstream<Scalar>& up, const Gradients<Scalar>& grad, ConstLengthsRef lengths,
              const BackwardOptions<Scalar>& options, const Packed<Scalar>& kept, const Handoffs& handoffs) {
  check_inputs(s, in, w);
  check_cache(s, cache);
  const Index H = s.H, B = s.B, GH = gate_count * H;
  detail::check_backward(s, up.dhs, grad, options);
  if (options.need_weight_gradients) {
    detail::check_shape("dW_x", grad.dW_x, s.D, GH);
    detail::check_shape("dW_h", grad.dW_h, H, GH);
    detail::check_shape("db", grad.db, 1, GH);
    detail::check_shape("db_hn", grad.db_hn, 1, H);
  }
  const detail::ActiveRows active(s, lengths);
  BackwardCell<Scalar> cell{in.x.map(),      in.h0.map(),     cache.gates.map(), cache.hn.map(),
                            cache.hs.map(),  grad.dW_x.map(), grad.dW_h.map(),   grad.db.map(),
                            grad.db_hn.map(), s,              RowMatrix<Scalar>(B, H)};
  std::optional<detail::PackedWeights<Scalar>> own_W_h, own_W_x;
  const detail::PackedWeights<Scalar>& W_h_transposed = detail::kept_or_packed(
      kept, 2, GH, H, 1, GH, own_W_h,
      [&] { return detail::PackedWeights<Scalar>(w.W_h.map(), detail::Orientation::transposed); });
  const auto input = detail::input_gradient(options, grad.dx.map(), kept, 3, GH, s.D, 2 * H, own_W_x,
                                            [&] { return input_weights_transposed(w); });
  detail::backward_time_loop<Scalar>(s, active, W_h_transposed, in.h0.map(), cache.hs.map(), up.dhs.map(),
                                     grad.dh0.map(), input, options, cell, handoffs);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                             \
  template void forward<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&,                     \
                                const Cache<Scalar>&, ConstLengthsRef, const Packed<Scalar>&, const Handoffs&);  \
  template void forward_inference<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&,           \
                                          const Outputs<Scalar>&, ConstLengthsRef, const Packed<Scalar>&,        \
                                          const Handoffs&);                                                      \
  template void backward<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&,                    \
                                 const Cache<const Scalar>&, const Upstream<Scalar>&, const Gradients<Scalar>&,  \
                                 ConstLengthsRef, const BackwardOptions<Scalar>&, const Packed<Scalar>&,         \
                                 const Handoffs&);                                                               \
  template Packed<Scalar> pack<Scalar>(const Weights<Scalar>&);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::gru
