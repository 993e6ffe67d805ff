// LSTM forward and BPTT (see lstm.hpp); explicit instantiations for float and double.
#include "fastbptt/lstm.hpp"

#include <algorithm>
#include <string>

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

/// A call's sizes besides its Shape (whose H is the units'): P, the state's features (H without a projection), and
/// the shape the time loops run, which read and write the state: the call's with H = P.
struct Sizes {
  Index GH, P;
  bool projection;
  Shape state;
};

template <class Scalar>
Sizes check_inputs(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  detail::check_sizes(s);
  const bool projection = !w.W_hr.empty();
  Sizes z{gate_count(forget_gate) * s.H, projection ? w.W_hr.cols() : s.H, projection, s};
  z.state.H = z.P;
  if (projection) detail::check_shape("W_hr", w.W_hr, s.H, z.P);
  detail::check_sequence(z.state, in.x, in.h0);
  detail::check_shape("c0", in.c0, s.B, s.H);
  detail::check_shape("W_x", w.W_x, s.D, z.GH);
  detail::check_shape("W_h", w.W_h, z.P, z.GH);
  return z;
}

template <class Element>
void check_cache(const Shape& s, const Sizes& z, const Cache<Element>& cache) {
  const Index N = s.T * s.B;
  detail::check_shape("gates", cache.gates, N, z.GH);
  detail::check_shape("hs", cache.hs, N, z.P);
  detail::check_shape("cs", cache.cs, N, s.H);
}

/// The LSTM's step: z_t = [x_t, h_{t-1}] [W_x; W_h] is one product, written into the gate rows; one pass per row
/// over the thread's units takes the pre-activations in and writes C_t and h_t. For training (Keep::training_cache)
/// `gates` and `cs` hold every step's rows and the pass puts the activated gates back in place; forward-only
/// (Keep::current_state) `gates` holds one step's B rows and `cs` the B rows of the current C, updated in place.
/// With a projection the pass writes m_t = o_t * tanh C_t into `outputs` (one step's B rows), and once every unit's
/// is in, h_t = m_t W_hr (project).
template <class Scalar, detail::Keep keep, bool projection>
struct ForwardCell {
  static constexpr bool keeps_cache = keep == detail::Keep::training_cache;
  static constexpr bool projects = projection;
  bool forget_gate;
  detail::MatrixMap<const Scalar> x, c0;
  detail::VectorMap<const Scalar> b;
  detail::MatrixMap<Scalar> gates, hs, cs, outputs;
  const detail::PackedWeights<Scalar>& packed_W;
  const detail::PackedWeights<Scalar>* packed_W_hr;  // with a projection
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
    Scalar* h = projection ? outputs.row(r).data() : hs.row(t * s.B + r).data();
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

  void project(Index t, const detail::UnitSlice& own) {
    packed_W_hr->multiply_units(detail::step_rows<Scalar>(outputs, t, active),
                                detail::share_of(*packed_W_hr, own).panels,
                                detail::strided_rows(hs.middleRows(t * s.B, s.B)), detail::Store::overwrite);
  }
};

/// The LSTM's BPTT step: dL/dC_t carries backwards in dc (dc0 at the end), and dz_t has one block per gate. With a
/// projection the gates see dL/dm_t = dL/dh_t W_hrᵀ (before_pointwise), and a row of dZ holds dL/dh_t after its
/// gate blocks, for dW_hr = Mᵀ dH.
template <class Scalar, bool projection>
struct BackwardCell {
  static constexpr bool direct_term = false;
  static constexpr bool projects = projection;
  bool forget_gate;
  detail::MatrixMap<const Scalar> x, c0, gates, cs;
  detail::MatrixMap<Scalar> dc, dW_x, dW_h, dW_hr;
  detail::VectorMap<Scalar> db;
  const Shape& s;
  const Sizes& z;
  GateColumns col;
  const detail::PackedWeights<Scalar>* W_hr_transposed;  // with a projection
  const detail::ActiveRows& active;
  RowMatrix<Scalar> dm;       // [B, H] dL/dm_t of the step (projection)
  RowMatrix<Scalar> outputs;  // m_t of a block's rows (projection)

  Index dz_columns() const { return z.GH + (projection ? z.P : 0); }

  const detail::PackedWeights<Scalar>& unit_weights() const { return *W_hr_transposed; }

  void zero_weight_gradients() {
    dW_x.setZero();
    dW_h.setZero();
    db.setZero();
    if (projection) dW_hr.setZero();
  }

  void before_pointwise(Index t, const detail::UnitSlice& own, const RowMatrix<Scalar>& dh_t) {
    W_hr_transposed->multiply_units(detail::step_rows<Scalar>(dh_t, t, active), own.panels, detail::strided_rows(dm),
                                    detail::Store::overwrite);
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice& own, const Scalar* dh_row, Scalar* dz) {
    const Scalar* zt = gates.row(t * s.B + r).data();
    const Scalar* c = cs.row(t * s.B + r).data();
    const Scalar* c_prev = detail::previous_state<Scalar>(c0, cs, t, s.B).row(r).data();
    const Scalar* dm_row = projection ? dm.row(r).data() : dh_row;
    Scalar* dc_row = dc.row(r).data();
    detail::for_each_packet<Scalar>(own.u0, own.u1, [&](const detail::Lanes<Scalar>& lanes) {
      const auto one = detail::constant<Scalar>(1);
      const auto i = lanes.load(zt + col.i);
      const auto g = lanes.load(zt + col.g);
      const auto o = lanes.load(zt + col.o);
      const auto dh = lanes.load(dm_row);
      const auto tanh_c = detail::tanh<Scalar>(lanes.load(c));
      // dC_t = dC_t (from step t+1) + dh_t * o * (1 - tanh^2 C_t)
      const auto dc_t =
          ei::padd(lanes.load(dc_row), ei::pmul(ei::pmul(dh, o), ei::psub(one, ei::pmul(tanh_c, tanh_c))));
      lanes.store(dz + col.o, ei::pmul(ei::pmul(dh, tanh_c), ei::pmul(o, ei::psub(one, o))));
      lanes.store(dz + col.i, ei::pmul(ei::pmul(dc_t, g), ei::pmul(i, ei::psub(one, i))));
      lanes.store(dz + col.g, ei::pmul(ei::pmul(dc_t, i), ei::psub(one, ei::pmul(g, g))));
      if (forget_gate) {
        const auto f = lanes.load(zt + col.f);
        lanes.store(dz + col.f, ei::pmul(ei::pmul(dc_t, lanes.load(c_prev)), ei::pmul(f, ei::psub(one, f))));
        lanes.store(dc_row, ei::pmul(dc_t, f));
      } else {
        lanes.store(dc_row, dc_t);
      }
    });
    if (projection && own.member == 0) std::copy(dh_row, dh_row + z.P, dz + z.GH);
  }

  void add_direct_term(Index, const detail::UnitSlice&, Scalar*) const {}

  void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                            const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    if constexpr (projection) {
      const auto dz_gates = dz_block.leftCols(z.GH);
      dW_x.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_gates;
      dW_h.noalias() += h_prev.transpose() * dz_gates;
      detail::add_column_sums<Scalar>(dz_gates, db);
      // m_t = o_t * tanh C_t again, as forward computed it (rows past a sequence's end: zero gates and C, so zero);
      // the matrix grows to the largest block it meets: at most twice a call
      if (outputs.rows() < rows) outputs.resize(rows, s.H);
      for (Index row = 0; row < rows; ++row) {
        const Scalar* o = gates.row(t0 * s.B + row).data() + col.o;
        const Scalar* c = cs.row(t0 * s.B + row).data();
        Scalar* m = outputs.row(row).data();
        detail::for_each_packet<Scalar>(s.H, [&](const detail::Lanes<Scalar>& lanes) {
          lanes.store(m, ei::pmul(lanes.load(o), detail::tanh<Scalar>(lanes.load(c))));
        });
      }
      dW_hr.noalias() += outputs.topRows(rows).transpose() * dz_block.rightCols(z.P);
    } else {
      dW_x.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block;
      dW_h.noalias() += h_prev.transpose() * dz_block;
      detail::add_column_sums<Scalar>(dz_block, db);
    }
  }

  /// The gates' columns, dZ's first (W_xᵀ's depth: a projection's columns after them are not read).
  detail::LeftOperand<Scalar> input_gradient_rows(const detail::LeftOperand<Scalar>& dz) const { return dz; }
};

/// The forward time loop of both forwards (see ForwardCell for what `gates` and `cs` hold in each).
template <class Scalar, detail::Keep keep>
void run_forward(const Shape& s, const Sizes& z, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
                 detail::MatrixMap<Scalar> gates, detail::MatrixMap<Scalar> hs, detail::MatrixMap<Scalar> cs,
                 const detail::ActiveRows& active, const Packed<Scalar>& kept, const Handoffs& handoffs) {
  const Index G = gate_count(forget_gate);
  // The weights are packed once per call (or kept across calls). The packed product rounds a row the same whatever
  // rows a call covers, so chunked runs equal one run bit for bit (Eigen's general product picks its code path by
  // a row's position).
  std::optional<detail::PackedWeights<Scalar>> own_W, own_W_hr;
  const detail::PackedWeights<Scalar>& packed_W = detail::kept_or_packed(kept, 0, s.D + z.P, z.GH, G, s.D, own_W, [&] {
    return detail::PackedWeights<Scalar>(w.W_x.map(), w.W_h.map(), G);
  });
  const GateColumns col(forget_gate, s.H);
  if (z.projection) {
    const detail::PackedWeights<Scalar>& packed_W_hr = detail::kept_or_packed(kept, 3, s.H, z.P, 1, s.H, own_W_hr, [&] {
      return detail::PackedWeights<Scalar>(w.W_hr.map(), detail::Orientation::as_given);
    });
    RowMatrix<Scalar> outputs(s.B, s.H);
    ForwardCell<Scalar, keep, true> cell{forget_gate, in.x.map(), in.c0.map(), w.b.map(),
                                         gates, hs, cs, MatrixView<Scalar>(outputs).map(),
                                         packed_W, &packed_W_hr, s, active, col};
    detail::forward_time_loop<Scalar>(z.state, active, in.h0.map(), hs, cell, handoffs);
  } else {
    ForwardCell<Scalar, keep, false> cell{forget_gate, in.x.map(), in.c0.map(), w.b.map(),
                                          gates, hs, cs, MatrixView<Scalar>().map(),
                                          packed_W, nullptr, s, active, col};
    detail::forward_time_loop<Scalar>(z.state, active, in.h0.map(), hs, cell, handoffs);
  }
}

}  // namespace

template <class Scalar>
Packed<Scalar> pack(bool forget_gate, const Weights<Scalar>& w) {
  const Index G = gate_count(forget_gate), GH = w.W_h.cols(), H = GH / G;
  const bool projection = !w.W_hr.empty();
  const Index P = projection ? w.W_hr.cols() : H;
  if (GH % G != 0) {
    throw std::invalid_argument("W_h: expected whole gate blocks, " + std::to_string(G) + " x H columns, got " +
                                std::to_string(GH));
  }
  detail::check_shape("W_h", w.W_h, P, GH);
  detail::check_shape("W_x", w.W_x, w.W_x.rows(), GH);
  if (projection) detail::check_shape("W_hr", w.W_hr, H, P);
  auto parts = std::make_shared<typename Packed<Scalar>::Parts>();
  parts->emplace_back(w.W_x.map(), w.W_h.map(), G);
  parts->emplace_back(w.W_h.map(), detail::Orientation::transposed);
  parts->emplace_back(w.W_x.map(), detail::Orientation::transposed);
  if (projection) {
    parts->emplace_back(w.W_hr.map(), detail::Orientation::as_given);
    parts->emplace_back(w.W_hr.map(), detail::Orientation::transposed);
  }
  return Packed<Scalar>(std::move(parts));
}

template <class Scalar>
void forward(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
             const Cache<Scalar>& cache, ConstLengthsRef lengths, const Packed<Scalar>& kept,
             const Handoffs& handoffs) {
  const Sizes z = check_inputs(s, forget_gate, in, w);
  detail::check_shape("b", w.b, 1, z.GH);
  check_cache(s, z, cache);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    cache.gates.map().setZero();
    cache.hs.map().setZero();
    cache.cs.map().setZero();
  }
  run_forward<Scalar, detail::Keep::training_cache>(s, z, forget_gate, in, w, cache.gates.map(), cache.hs.map(),
                                                    cache.cs.map(), active, kept, handoffs);
}

template <class Scalar>
void forward_inference(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
                       const Outputs<Scalar>& out, ConstLengthsRef lengths, const Packed<Scalar>& kept,
                       const Handoffs& handoffs) {
  const Sizes z = check_inputs(s, forget_gate, in, w);
  detail::check_shape("b", w.b, 1, z.GH);
  detail::check_shape("hs", out.hs, s.T * s.B, z.P);
  detail::check_shape("h_T", out.h_T, s.B, z.P);
  detail::check_shape("c_T", out.c_T, s.B, s.H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) out.hs.map().setZero();  // the rows of finished sequences
  // c_T holds the current C of every sequence; a finished sequence's row stops changing at its last step.
  out.c_T.map() = in.c0.map();
  RowMatrix<Scalar> step_gates(s.B, z.GH);
  run_forward<Scalar, detail::Keep::current_state>(s, z, forget_gate, in, w, MatrixView<Scalar>(step_gates).map(),
                                                   out.hs.map(), out.c_T.map(), active, kept, handoffs);
  detail::copy_final_states<Scalar>(out.hs.map(), active, out.h_T.map());
}

template <class Scalar>
void backward(const Shape& s, bool forget_gate, const Inputs<Scalar>& in, const Weights<Scalar>& w,
              const Cache<const Scalar>& cache, const Upstream<Scalar>& up, const Gradients<Scalar>& grad,
              ConstLengthsRef lengths, const BackwardOptions<Scalar>& options, const Packed<Scalar>& kept,
              const Handoffs& handoffs) {
  const Sizes z = check_inputs(s, forget_gate, in, w);
  check_cache(s, z, cache);
  const Index H = s.H, B = s.B;
  detail::check_backward(z.state, up.dhs, grad, options);
  detail::check_shape("dc_T", up.dc_T, B, H);
  detail::check_shape("dc0", grad.dc0, B, H);
  if (options.need_weight_gradients) {
    detail::check_shape("dW_x", grad.dW_x, s.D, z.GH);
    detail::check_shape("dW_h", grad.dW_h, z.P, z.GH);
    detail::check_shape("db", grad.db, 1, z.GH);
    if (z.projection) detail::check_shape("dW_hr", grad.dW_hr, H, z.P);
  }
  detail::check_dz(s, options, z.GH + (z.projection ? z.P : 0));
  const detail::ActiveRows active(s, lengths);
  // dc0 carries dL/dC_t backwards through the loop and holds dL/dC_0 at its end. A sequence shorter than T
  // keeps dc_T there, untouched, until the loop reaches its last step.
  grad.dc0.map() = up.dc_T.map();
  std::optional<detail::PackedWeights<Scalar>> own_W_h, own_W_x, own_W_hr;
  const detail::PackedWeights<Scalar>& W_h_transposed =
      detail::kept_or_packed(kept, 1, z.GH, z.P, 1, z.GH, own_W_h, [&] {
        return detail::PackedWeights<Scalar>(w.W_h.map(), detail::Orientation::transposed);
      });
  const auto input = detail::input_gradient(options, grad.dx.map(), kept, 2, z.GH, s.D, z.GH, own_W_x, [&] {
    return detail::PackedWeights<Scalar>(w.W_x.map(), detail::Orientation::transposed);
  });
  const GateColumns col(forget_gate, H);
  const auto run = [&](auto& cell) {
    detail::backward_time_loop<Scalar>(z.state, active, W_h_transposed, in.h0.map(), cache.hs.map(), up.dhs.map(),
                                       grad.dh0.map(), input, options, cell, handoffs);
  };
  if (z.projection) {
    const detail::PackedWeights<Scalar>& W_hr_transposed =
        detail::kept_or_packed(kept, 4, z.P, H, 1, z.P, own_W_hr, [&] {
          return detail::PackedWeights<Scalar>(w.W_hr.map(), detail::Orientation::transposed);
        });
    BackwardCell<Scalar, true> cell{forget_gate,     in.x.map(),       in.c0.map(),      cache.gates.map(),
                                    cache.cs.map(),  grad.dc0.map(),   grad.dW_x.map(),  grad.dW_h.map(),
                                    grad.dW_hr.map(), grad.db.map(),
                                    s,               z,              col,              &W_hr_transposed,
                                    active,          RowMatrix<Scalar>(B, H), RowMatrix<Scalar>()};
    run(cell);
  } else {
    BackwardCell<Scalar, false> cell{forget_gate,     in.x.map(),       in.c0.map(),      cache.gates.map(),
                                     cache.cs.map(),  grad.dc0.map(),   grad.dW_x.map(),  grad.dW_h.map(),
                                     grad.dW_hr.map(), grad.db.map(),
                                     s,               z,              col,              nullptr,
                                     active,          RowMatrix<Scalar>(), RowMatrix<Scalar>()};
    run(cell);
  }
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                             \
  template void forward<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,               \
                                const Cache<Scalar>&, ConstLengthsRef, const Packed<Scalar>&, const Handoffs&);  \
  template void forward_inference<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,     \
                                          const Outputs<Scalar>&, ConstLengthsRef, const Packed<Scalar>&,        \
                                          const Handoffs&);                                                      \
  template void backward<Scalar>(const Shape&, bool, const Inputs<Scalar>&, const Weights<Scalar>&,              \
                                 const Cache<const Scalar>&, const Upstream<Scalar>&, const Gradients<Scalar>&,  \
                                 ConstLengthsRef, const BackwardOptions<Scalar>&, const Packed<Scalar>&,         \
                                 const Handoffs&);                                                               \
  template Packed<Scalar> pack<Scalar>(bool, const Weights<Scalar>&);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::lstm
