// LSTM forward and BPTT (see lstm.hpp); explicit instantiations for float and double.
#include "fastbptt/lstm.hpp"

#include "pointwise.hpp"
#include "time_loop.hpp"

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
void check_inputs(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  detail::check_sequence(s, in.x, in.h0);
  const Index GH = gate_count(forget_gate) * s.H;
  detail::check_shape("c0", in.c0, s.B, s.H);
  detail::check_shape("W_x", w.W_x, s.D, GH);
  detail::check_shape("W_h", w.W_h, s.H, GH);
}

template <class Element>
void check_cache(const Shape& s, bool forget_gate, const Cache<Element>& cache) {
  const Index N = s.T * s.B;
  detail::check_shape("gates", cache.gates, N, gate_count(forget_gate) * s.H);
  detail::check_shape("hs", cache.hs, N, s.H);
  detail::check_shape("cs", cache.cs, N, s.H);
}

/// The LSTM's step: z_t = [x_t, h_{t-1}] [W_x; W_h] is one product, written into the gate rows; one pass per row
/// over the thread's units takes the pre-activations in and writes C_t and h_t. For training (Keep::training_cache)
/// `gates` and `cs` hold every step's rows and the pass puts the activated gates back in place; forward-only
/// (Keep::current_state) `gates` holds one step's B rows and `cs` the B rows of the current C, updated in place.
template <class Scalar, detail::Keep keep>
struct ForwardCell {
  static constexpr bool keeps_cache = keep == detail::Keep::training_cache;
  bool forget_gate;
  detail::MatrixMap<const Scalar> x, c0;
  detail::VectorMap<const Scalar> b;
  detail::MatrixMap<Scalar> gates, hs, cs;
  const detail::PackedWeights<Scalar>& packed_W;
  const Shape& s;
  const detail::ActiveRows& active;
  GateColumns col;

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W; }

  /// The row of `gates` and `cs` that holds batch row r at step t.
  Index kept_row(Index t, Index r) const { return keeps_cache ? t * s.B + r : r; }

  void step_product(Index t, const detail::UnitSlice& own, const detail::StateRows<Scalar>& h_prev_t) {
    packed_W.multiply_units(detail::stacked_step_rows<Scalar>(x, h_prev_t, t, active), own.panels,
                            detail::strided_rows(gates.middleRows(kept_row(t, 0), s.B)), detail::Store::overwrite);
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar*) {
    Scalar* z = gates.row(kept_row(t, r)).data();
    const Scalar* c_prev =
        keeps_cache ? detail::previous_state<Scalar>(c0, cs, t, s.B).row(r).data() : cs.row(r).data();
    Scalar* c = cs.row(kept_row(t, r)).data();
    Scalar* h = hs.row(t * s.B + r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      const auto gate = [&](Index column) { return ei::padd(lanes.load(z + column), lanes.load(b.data() + column)); };
      const auto i = detail::sigmoid<Scalar>(gate(col.i));
      const auto g = detail::tanh<Scalar>(gate(col.g));
      const auto o = detail::sigmoid<Scalar>(gate(col.o));
      auto c_new = ei::pmul(i, g);
      if (forget_gate) {
        const auto f = detail::sigmoid<Scalar>(gate(col.f));
        c_new = ei::padd(ei::pmul(f, lanes.load(c_prev)), c_new);
        if constexpr (keeps_cache) lanes.store(z + col.f, f);
      } else {
        c_new = ei::padd(lanes.load(c_prev), c_new);
      }
      if constexpr (keeps_cache) {
        lanes.store(z + col.i, i);
        lanes.store(z + col.g, g);
        lanes.store(z + col.o, o);
      }
      lanes.store(c, c_new);  // forward-only, c is c_prev: each lane is read before it is written
      lanes.store(h, ei::pmul(o, detail::tanh<Scalar>(c_new)));
    });
  }
};

/// The LSTM's BPTT step: dL/dC_t carries backwards in dc (dc0 at the end), and dz_t has one block per gate.
template <class Scalar>
struct BackwardCell {
  static constexpr bool direct_term = false;
  bool forget_gate;
  detail::MatrixMap<const Scalar> x, W_x, c0, gates, cs;
  detail::MatrixMap<Scalar> dc, dx, dW_x, dW_h;
  detail::VectorMap<Scalar> db;
  const Shape& s;
  GateColumns col;

  Index dz_columns() const { return gate_count(forget_gate) * s.H; }

  void zero_weight_gradients() {
    dW_x.setZero();
    dW_h.setZero();
    db.setZero();
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* dh_row, Scalar* dz) {
    const Scalar* z = gates.row(t * s.B + r).data();
    const Scalar* c = cs.row(t * s.B + r).data();
    const Scalar* c_prev = detail::previous_state<Scalar>(c0, cs, t, s.B).row(r).data();
    Scalar* dc_row = dc.row(r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      const auto one = detail::constant<Scalar>(1);
      const auto i = lanes.load(z + col.i);
      const auto g = lanes.load(z + col.g);
      const auto o = lanes.load(z + col.o);
      const auto dh = lanes.load(dh_row);
      const auto tanh_c = detail::tanh<Scalar>(lanes.load(c));
      // dC_t = dC_t (from step t+1) + dh_t * o * (1 - tanh^2 C_t)
      const auto dc_t =
          ei::padd(lanes.load(dc_row), ei::pmul(ei::pmul(dh, o), ei::psub(one, ei::pmul(tanh_c, tanh_c))));
      lanes.store(dz + col.o, ei::pmul(ei::pmul(dh, tanh_c), ei::pmul(o, ei::psub(one, o))));
      lanes.store(dz + col.i, ei::pmul(ei::pmul(dc_t, g), ei::pmul(i, ei::psub(one, i))));
      lanes.store(dz + col.g, ei::pmul(ei::pmul(dc_t, i), ei::psub(one, ei::pmul(g, g))));
      if (forget_gate) {
        const auto f = lanes.load(z + col.f);
        lanes.store(dz + col.f, ei::pmul(ei::pmul(dc_t, lanes.load(c_prev)), ei::pmul(f, ei::psub(one, f))));
        lanes.store(dc_row, ei::pmul(dc_t, f));
      } else {
        lanes.store(dc_row, dc_t);
      }
    });
  }

  void add_direct_term(Index, const detail::UnitSlice&, Scalar*) const {}

  void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                            const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    dW_x.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block;
    dW_h.noalias() += h_prev.transpose() * dz_block;
    detail::add_column_sums<Scalar>(dz_block, db);
  }

  void write_dx(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block) {
    dx.middleRows(t0 * s.B, rows).noalias() = dz_block * W_x.transpose();
  }
};

/// The step product's weights [W_x; W_h], in gate blocks (part 0 of `pack`).
template <class Scalar>
const detail::PackedWeights<Scalar>& step_weights(const Shape& s, bool forget_gate, const Weights<Scalar>& w,
                                                  const Packed<Scalar>& kept,
                                                  std::optional<detail::PackedWeights<Scalar>>& own) {
  const Index G = gate_count(forget_gate);
  return detail::kept_or_packed(kept, 0, s.D + s.H, G * s.H, G, own, [&] {
    return detail::PackedWeights<Scalar>(w.W_x.map(), w.W_h.map(), G);
  });
}

}  // namespace

template <class Scalar>
Packed<Scalar> pack(bool forget_gate, const Weights<Scalar>& w) {
  const Index H = w.W_h.rows(), GH = gate_count(forget_gate) * H;
  detail::check_shape("W_h", w.W_h, H, GH);
  detail::check_shape("W_x", w.W_x, w.W_x.rows(), GH);
  auto parts = std::make_shared<typename Packed<Scalar>::Parts>();
  parts->emplace_back(w.W_x.map(), w.W_h.map(), gate_count(forget_gate));
  parts->emplace_back(w.W_h.map(), detail::Orientation::transposed);
  return Packed<Scalar>(std::move(parts));
}

template <class Scalar>
void forward(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
             const Cache<Scalar>& cache, ConstLengthsRef lengths, const Packed<Scalar>& kept) {
  check_inputs(s, forget_gate, in, w);
  const Index H = s.H, GH = gate_count(forget_gate) * H;
  detail::check_shape("b", w.b, 1, GH);
  check_cache(s, forget_gate, cache);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    cache.gates.map().setZero();
    cache.hs.map().setZero();
    cache.cs.map().setZero();
  }
  // The weights are packed once per call (or kept across calls). The packed product rounds a row the same whatever
  // rows a call covers, so chunked runs equal one run bit for bit (Eigen's general product picks its code path by
  // a row's position).
  std::optional<detail::PackedWeights<Scalar>> own;
  const detail::PackedWeights<Scalar>& packed_W = step_weights(s, forget_gate, w, kept, own);
  ForwardCell<Scalar, detail::Keep::training_cache> cell{
      forget_gate, in.x.map(), in.c0.map(), w.b.map(), cache.gates.map(), cache.hs.map(), cache.cs.map(),
      packed_W,    s,          active,      GateColumns(forget_gate, H)};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), cache.hs.map(), cell);
}

template <class Scalar>
void forward_inference(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
                       const Outputs<Scalar>& out, ConstLengthsRef lengths, const Packed<Scalar>& kept) {
  check_inputs(s, forget_gate, in, w);
  const Index H = s.H, GH = gate_count(forget_gate) * H;
  detail::check_shape("b", w.b, 1, GH);
  detail::check_shape("hs", out.hs, s.T * s.B, H);
  detail::check_shape("h_T", out.h_T, s.B, H);
  detail::check_shape("c_T", out.c_T, s.B, H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) out.hs.map().setZero();  // the rows of finished sequences
  // c_T holds the current C of every sequence; a finished sequence's row stops changing at its last step.
  out.c_T.map() = in.c0.map();
  RowMatrix<Scalar> step_gates(s.B, GH);
  std::optional<detail::PackedWeights<Scalar>> own;
  const detail::PackedWeights<Scalar>& packed_W = step_weights(s, forget_gate, w, kept, own);
  ForwardCell<Scalar, detail::Keep::current_state> cell{
      forget_gate,   in.x.map(), in.c0.map(), w.b.map(), MatrixView<Scalar>(step_gates).map(), out.hs.map(),
      out.c_T.map(), packed_W,   s,           active,    GateColumns(forget_gate, H)};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), out.hs.map(), cell);
  detail::copy_final_states<Scalar>(out.hs.map(), active, out.h_T.map());
}

template <class Scalar>
void backward(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& up, const Gradients<Scalar>& grad,
              ConstLengthsRef lengths, const BackwardOptions<Scalar>& options, const Packed<Scalar>& kept) {
  check_inputs(s, forget_gate, in, w);
  check_cache(s, forget_gate, cache);
  const Index H = s.H, B = s.B, GH = gate_count(forget_gate) * H;
  detail::check_backward(s, up.dhs, grad, options);
  detail::check_shape("dc_T", up.dc_T, B, H);
  detail::check_shape("dc0", grad.dc0, B, H);
  if (options.need_weight_gradients) {
    detail::check_shape("dW_x", grad.dW_x, s.D, GH);
    detail::check_shape("dW_h", grad.dW_h, H, GH);
    detail::check_shape("db", grad.db, 1, GH);
  }
  const detail::ActiveRows active(s, lengths);
  // dc0 carries dL/dC_t backwards through the loop and holds dL/dC_0 at its end. A sequence shorter than T
  // keeps dc_T there, untouched, until the loop reaches its last step.
  grad.dc0.map() = up.dc_T.map();
  BackwardCell<Scalar> cell{forget_gate,    in.x.map(),       w.W_x.map(),      in.c0.map(),
                            cache.gates.map(), cache.cs.map(),  grad.dc0.map(),   grad.dx.map(),
                            grad.dW_x.map(), grad.dW_h.map(),  grad.db.map(),    s,
                            GateColumns(forget_gate, H)};
  std::optional<detail::PackedWeights<Scalar>> own;
  const detail::PackedWeights<Scalar>& W_h_transposed = detail::kept_or_packed(
      kept, 1, GH, H, 1, own,
      [&] { return detail::PackedWeights<Scalar>(w.W_h.map(), detail::Orientation::transposed); });
  detail::backward_time_loop<Scalar>(s, active, W_h_transposed, in.h0.map(), cache.hs.map(), up.dhs.map(),
                                     grad.dh0.map(), options, cell);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                             \
  template void forward<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,               \
                                const Cache<Scalar>&, ConstLengthsRef, const Packed<Scalar>&);                   \
  template void forward_inference<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,     \
                                          const Outputs<Scalar>&, ConstLengthsRef, const Packed<Scalar>&);       \
  template void backward<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,              \
                                 const Cache<const Scalar>&, const Upstream<Scalar>&, const Gradients<Scalar>&,  \
                                 ConstLengthsRef, const BackwardOptions<Scalar>&, const Packed<Scalar>&);        \
  template Packed<Scalar> pack<Scalar>(bool, const Weights<Scalar>&);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::lstm
