// The layer-normalised LSTM's forward and BPTT (see layer_norm_lstm.hpp); explicit instantiations for float and
// double.
#include "fastbptt/layer_norm_lstm.hpp"

#include <cmath>

#include "pointwise.hpp"
#include "time_loop.hpp"

namespace fastbptt::layer_norm_lstm {
namespace {

namespace ei = Eigen::internal;
using detail::Lanes;

/// out = (v - mean(v)) / sqrt(var(v) + epsilon) over the n values of a row (out may be v); returns the inverse
/// deviation. The sums run in packets and then across the lanes, the same order for every row of n values wherever
/// it lies; the padded lanes of a last partial packet load as zeros and add nothing (the squares are taken of the
/// centred values once stored, so their padding is zero too).
template <class Scalar>
Scalar normalise(const Scalar* v, Scalar* out, Index n) {
  using P = detail::Packet<Scalar>;
  P sum = detail::constant<Scalar>(0);
  detail::for_each_packet<Scalar>(n, [&](const Lanes<Scalar>& lanes) { sum = ei::padd(sum, lanes.load(v)); });
  const P mean = detail::constant<Scalar>(ei::predux(sum) / Scalar(n));
  detail::for_each_packet<Scalar>(
      n, [&](const Lanes<Scalar>& lanes) { lanes.store(out, ei::psub(lanes.load(v), mean)); });
  P squares = detail::constant<Scalar>(0);
  detail::for_each_packet<Scalar>(n, [&](const Lanes<Scalar>& lanes) {
    const P centred = lanes.load(out);
    squares = ei::padd(squares, ei::pmul(centred, centred));
  });
  const Scalar inverse = Scalar(1) / std::sqrt(ei::predux(squares) / Scalar(n) + Scalar(epsilon));
  const P scale = detail::constant<Scalar>(inverse);
  detail::for_each_packet<Scalar>(
      n, [&](const Lanes<Scalar>& lanes) { lanes.store(out, ei::pmul(lanes.load(out), scale)); });
  return inverse;
}

/// The gradient through a normalisation: out = inverse * (d - mean(d) - v̂ * mean(d * v̂)) over n values, d the
/// gradient of the normalised values v̂ (out may be d).
template <class Scalar>
void normalise_backward(const Scalar* d, const Scalar* v_hat, Scalar inverse, Index n, Scalar* out) {
  using P = detail::Packet<Scalar>;
  P sum = detail::constant<Scalar>(0), weighted = detail::constant<Scalar>(0);
  detail::for_each_packet<Scalar>(n, [&](const Lanes<Scalar>& lanes) {
    const P gradient = lanes.load(d);
    sum = ei::padd(sum, gradient);
    weighted = ei::padd(weighted, ei::pmul(gradient, lanes.load(v_hat)));
  });
  const P mean = detail::constant<Scalar>(ei::predux(sum) / Scalar(n));
  const P mean_weighted = detail::constant<Scalar>(ei::predux(weighted) / Scalar(n));
  const P scale = detail::constant<Scalar>(inverse);
  detail::for_each_packet<Scalar>(n, [&](const Lanes<Scalar>& lanes) {
    const P centred = ei::psub(ei::psub(lanes.load(d), mean), ei::pmul(lanes.load(v_hat), mean_weighted));
    lanes.store(out, ei::pmul(centred, scale));
  });
}

/// acc[j] += a[j] * b[j] (b null: acc[j] += a[j]) over n values.
template <class Scalar>
void add_products(Scalar* acc, const Scalar* a, const Scalar* b, Index n) {
  detail::for_each_packet<Scalar>(n, [&](const Lanes<Scalar>& lanes) {
    const auto term = b == nullptr ? lanes.load(a) : ei::pmul(lanes.load(a), lanes.load(b));
    lanes.store(acc, ei::padd(lanes.load(acc), term));
  });
}

template <class Scalar>
void check_inputs(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w) {
  detail::check_sequence(s, in.x, in.h0);
  const Index GH = gate_count * s.H;
  detail::check_shape("c0", in.c0, s.B, s.H);
  detail::check_shape("W_x", w.W_x, s.D, GH);
  detail::check_shape("W_h", w.W_h, s.H, GH);
  detail::check_shape("gamma_ih", w.gamma_ih, 1, GH);
  detail::check_shape("gamma_hh", w.gamma_hh, 1, GH);
  detail::check_shape("gamma_c", w.gamma_c, 1, s.H);
  detail::check_shape("beta_c", w.beta_c, 1, s.H);
}

template <class Element>
void check_cache(const Shape& s, const Cache<Element>& cache) {
  const Index N = s.T * s.B, GH = gate_count * s.H;
  detail::check_shape("gates", cache.gates, N, GH);
  detail::check_shape("x_hat", cache.x_hat, N, GH);
  detail::check_shape("h_hat", cache.h_hat, N, GH);
  detail::check_shape("cs", cache.cs, N, s.H);
  detail::check_shape("c_hat", cache.c_hat, N, s.H);
  detail::check_shape("hs", cache.hs, N, s.H);
  detail::check_shape("inv_std", cache.inv_std, N, 3);
}

/// The step: h_{t-1} W_h into the step's rows of h_hat (and, forward-only, x_t W_x into x_hat), then one pass per
/// row normalises them, applies the gates, normalises C_t and writes h_t. For training (Keep::training_cache) the
/// arrays hold every step's rows and x_hat is normalised beforehand; forward-only they hold one step's B rows and
/// `cs` the current C.
template <class Scalar, detail::Keep keep>
struct ForwardCell {
  static constexpr bool keeps_cache = keep == detail::Keep::training_cache;
  static constexpr bool whole_rows = true;
  detail::MatrixMap<const Scalar> x, c0;
  detail::VectorMap<const Scalar> b, gamma_ih, gamma_hh, gamma_c, beta_c;
  detail::MatrixMap<Scalar> gates, x_hat, h_hat, cs, c_hat, hs, inv_std;
  const detail::PackedWeights<Scalar>& packed_W_x;
  const detail::PackedWeights<Scalar>& packed_W_h;
  const Shape& s;
  const detail::ActiveRows& active;

  const detail::PackedWeights<Scalar>& step_weights() const { return packed_W_h; }

  Index kept_row(Index t, Index r) const { return keeps_cache ? t * s.B + r : r; }

  void step_product(Index t, const detail::UnitSlice&, const detail::StateRows<Scalar>& h_prev_t) {
    if constexpr (!keeps_cache) {
      packed_W_x.multiply(detail::step_rows<Scalar>(x.middleRows(t * s.B, s.B), t, active), detail::strided_rows(x_hat),
                          detail::Store::overwrite);
    }
    packed_W_h.multiply(detail::step_rows<Scalar>(h_prev_t, t, active),
                        detail::strided_rows(h_hat.middleRows(kept_row(t, 0), s.B)), detail::Store::overwrite);
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice&, const Scalar*) {
    const Index H = s.H, GH = gate_count * H;
    Scalar* xr = x_hat.row(kept_row(t, r)).data();
    Scalar* hr = h_hat.row(kept_row(t, r)).data();
    const Scalar inv_x = keeps_cache ? inv_std(t * s.B + r, 0) : normalise(xr, xr, GH);
    const Scalar inv_h = normalise(hr, hr, GH);
    Scalar* z = gates.row(kept_row(t, r)).data();
    const Scalar* c_prev =
        keeps_cache ? detail::previous_state<Scalar>(c0, cs, t, s.B).row(r).data() : cs.row(r).data();
    Scalar* c = cs.row(kept_row(t, r)).data();
    detail::for_each_packet<Scalar>(H, [&](const Lanes<Scalar>& lanes) {
      const auto pre = [&](Index block) {
        const Index q = block * H;
        const auto scaled = ei::padd(ei::pmul(lanes.load(xr + q), lanes.load(gamma_ih.data() + q)),
                                     ei::pmul(lanes.load(hr + q), lanes.load(gamma_hh.data() + q)));
        return ei::padd(scaled, lanes.load(b.data() + q));
      };
      const auto i = detail::sigmoid<Scalar>(pre(0));
      const auto f = detail::sigmoid<Scalar>(pre(1));
      const auto g = detail::tanh<Scalar>(pre(2));
      const auto o = detail::sigmoid<Scalar>(pre(3));
      lanes.store(z, i);
      lanes.store(z + H, f);
      lanes.store(z + 2 * H, g);
      lanes.store(z + 3 * H, o);
      lanes.store(c, ei::padd(ei::pmul(f, lanes.load(c_prev)), ei::pmul(i, g)));  // forward-only, c is c_prev
    });
    Scalar* cr = c_hat.row(kept_row(t, r)).data();
    const Scalar inv_c = normalise(c, cr, H);
    Scalar* h = hs.row(t * s.B + r).data();
    detail::for_each_packet<Scalar>(H, [&](const Lanes<Scalar>& lanes) {
      const auto y = ei::padd(ei::pmul(lanes.load(cr), lanes.load(gamma_c.data())), lanes.load(beta_c.data()));
      lanes.store(h, ei::pmul(lanes.load(z + 3 * H), detail::tanh<Scalar>(y)));
    });
    if constexpr (keeps_cache) {
      Scalar* kept = inv_std.row(t * s.B + r).data();
      kept[0] = inv_x;
      kept[1] = inv_h;
      kept[2] = inv_c;
    }
  }
};

/// The BPTT step. A row of dZ is [dL/d(h_{t-1} W_h), dL/d(x_t W_x)]: the first half multiplies W_hᵀ in the step,
/// the second W_xᵀ for dx once per block; the vectors' gradients are added row by row (one thread runs the steps).
template <class Scalar>
struct BackwardCell {
  static constexpr bool direct_term = false;
  static constexpr bool whole_rows = true;
  detail::MatrixMap<const Scalar> x, c0, gates, x_hat, h_hat, cs, c_hat, inv_std;
  detail::VectorMap<const Scalar> gamma_ih, gamma_hh, gamma_c, beta_c;
  detail::MatrixMap<Scalar> dc, dW_x, dW_h;
  detail::VectorMap<Scalar> db, dgamma_ih, dgamma_hh, dgamma_c, dbeta_c;
  const Shape& s;
  bool weight_gradients;
  RowVector<Scalar> dz;  // [4H] the pre-activations' gradient of the row
  RowVector<Scalar> dy;  // [H]

  Index dz_columns() const { return 2 * gate_count * s.H; }

  void zero_weight_gradients() {
    dW_x.setZero();
    dW_h.setZero();
    for (auto* v : {&db, &dgamma_ih, &dgamma_hh, &dgamma_c, &dbeta_c}) v->setZero();
  }

  void step_pointwise(Index t, Index r, const detail::UnitSlice&, const Scalar* dh_row, Scalar* dz_row) {
    const Index H = s.H, GH = gate_count * H, row = t * s.B + r;
    const Scalar* z = gates.row(row).data();
    const Scalar* xr = x_hat.row(row).data();
    const Scalar* hr = h_hat.row(row).data();
    const Scalar* cr = c_hat.row(row).data();
    const Scalar* c_prev = detail::previous_state<Scalar>(c0, cs, t, s.B).row(r).data();
    const Scalar* inverse = inv_std.row(row).data();
    Scalar* dc_row = dc.row(r).data();
    Scalar* dzv = dz.data();
    Scalar* dyv = dy.data();
    const auto one = detail::constant<Scalar>(1);
    // through h_t = o tanh(y), y = Ĉ gamma_c + beta_c: dz_o, and dL/dĈ = dy gamma_c (dy kept for the vectors)
    detail::for_each_packet<Scalar>(H, [&](const Lanes<Scalar>& lanes) {
      const auto o = lanes.load(z + 3 * H);
      const auto dh = lanes.load(dh_row);
      const auto tanh_y = detail::tanh<Scalar>(
          ei::padd(ei::pmul(lanes.load(cr), lanes.load(gamma_c.data())), lanes.load(beta_c.data())));
      const auto d_y = ei::pmul(ei::pmul(dh, o), ei::psub(one, ei::pmul(tanh_y, tanh_y)));
      lanes.store(dzv + 3 * H, ei::pmul(ei::pmul(dh, tanh_y), ei::pmul(o, ei::psub(one, o))));
      lanes.store(dyv, d_y);
    });
    if (weight_gradients) {
      add_products<Scalar>(dgamma_c.data(), dyv, cr, H);
      add_products<Scalar>(dbeta_c.data(), dyv, nullptr, H);
    }
    detail::for_each_packet<Scalar>(H, [&](const Lanes<Scalar>& lanes) {
      lanes.store(dyv, ei::pmul(lanes.load(dyv), lanes.load(gamma_c.data())));  // dL/dĈ = dy gamma_c
    });
    normalise_backward<Scalar>(dyv, cr, inverse[2], H, dyv);  // dL/dC_t through the normalisation
    detail::for_each_packet<Scalar>(H, [&](const Lanes<Scalar>& lanes) {
      const auto i = lanes.load(z);
      const auto f = lanes.load(z + H);
      const auto g = lanes.load(z + 2 * H);
      const auto dc_t = ei::padd(lanes.load(dc_row), lanes.load(dyv));
      lanes.store(dzv, ei::pmul(ei::pmul(dc_t, g), ei::pmul(i, ei::psub(one, i))));
      lanes.store(dzv + H, ei::pmul(ei::pmul(dc_t, lanes.load(c_prev)), ei::pmul(f, ei::psub(one, f))));
      lanes.store(dzv + 2 * H, ei::pmul(ei::pmul(dc_t, i), ei::psub(one, ei::pmul(g, g))));
      lanes.store(dc_row, ei::pmul(dc_t, f));
    });
    if (weight_gradients) {
      add_products<Scalar>(dgamma_ih.data(), dzv, xr, GH);
      add_products<Scalar>(dgamma_hh.data(), dzv, hr, GH);
      add_products<Scalar>(db.data(), dzv, nullptr, GH);
    }
    Scalar* d_recurrent = dz_row;
    Scalar* d_input = dz_row + GH;
    detail::for_each_packet<Scalar>(GH, [&](const Lanes<Scalar>& lanes) {
      const auto d = lanes.load(dzv);
      lanes.store(d_recurrent, ei::pmul(d, lanes.load(gamma_hh.data())));
      lanes.store(d_input, ei::pmul(d, lanes.load(gamma_ih.data())));
    });
    normalise_backward<Scalar>(d_recurrent, hr, inverse[1], GH, d_recurrent);
    normalise_backward<Scalar>(d_input, xr, inverse[0], GH, d_input);
  }

  void add_direct_term(Index, const detail::UnitSlice&, Scalar*) const {}

  void add_weight_gradients(Index t0, Index rows, const Eigen::Ref<const RowMatrix<Scalar>>& dz_block,
                            const Eigen::Ref<const RowMatrix<Scalar>>& h_prev) {
    const Index GH = gate_count * s.H;
    dW_x.noalias() += x.middleRows(t0 * s.B, rows).transpose() * dz_block.rightCols(GH);
    dW_h.noalias() += h_prev.transpose() * dz_block.leftCols(GH);
  }

  /// The input products' gradient, the second half of a row of dZ.
  detail::LeftOperand<Scalar> input_gradient_rows(detail::LeftOperand<Scalar> dz) const {
    dz.first.data += gate_count * s.H;
    return dz;
  }
};

}  // namespace

template <class Scalar>
void forward(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Cache<Scalar>& cache,
             ConstLengthsRef lengths) {
  check_inputs(s, in, w);
  const Index GH = gate_count * s.H;
  detail::check_shape("b", w.b, 1, GH);
  check_cache(s, cache);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) {  // the rows of finished sequences
    for (const auto& kept : {cache.gates, cache.x_hat, cache.h_hat, cache.cs, cache.c_hat, cache.hs, cache.inv_std}) {
      kept.map().setZero();
    }
  }
  const detail::PackedWeights<Scalar> packed_W_x(w.W_x.map(), detail::Orientation::as_given),
      packed_W_h(w.W_h.map(), detail::Orientation::as_given);
  // The input projections of every step, normalised row by row, before the time loop.
  detail::project_inputs<Scalar>(packed_W_x, in.x.map(), cache.x_hat.map(), s, active);
  for (Index t = 0; t < s.T; ++t) {
    for (Index k = 0; k < active.count(t); ++k) {
      const Index row = t * s.B + active.row(k);
      Scalar* projection = cache.x_hat.map().row(row).data();
      cache.inv_std.map()(row, 0) = normalise(projection, projection, GH);
    }
  }
  ForwardCell<Scalar, detail::Keep::training_cache> cell{
      in.x.map(),      in.c0.map(),       w.b.map(),        w.gamma_ih.map(),    w.gamma_hh.map(),
      w.gamma_c.map(), w.beta_c.map(),    cache.gates.map(), cache.x_hat.map(),  cache.h_hat.map(),
      cache.cs.map(),  cache.c_hat.map(), cache.hs.map(),   cache.inv_std.map(), packed_W_x,
      packed_W_h,      s,                 active};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), cache.hs.map(), cell);
}

template <class Scalar>
void forward_inference(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Outputs<Scalar>& out,
                       ConstLengthsRef lengths) {
  check_inputs(s, in, w);
  const Index GH = gate_count * s.H;
  detail::check_shape("b", w.b, 1, GH);
  detail::check_shape("hs", out.hs, s.T * s.B, s.H);
  detail::check_shape("h_T", out.h_T, s.B, s.H);
  detail::check_shape("c_T", out.c_T, s.B, s.H);
  const detail::ActiveRows active(s, lengths);
  if (!active.all()) out.hs.map().setZero();
  out.c_T.map() = in.c0.map();  // the current C of every sequence
  RowMatrix<Scalar> gates(s.B, GH), x_hat(s.B, GH), h_hat(s.B, GH), c_hat(s.B, s.H);
  const detail::PackedWeights<Scalar> packed_W_x(w.W_x.map(), detail::Orientation::as_given),
      packed_W_h(w.W_h.map(), detail::Orientation::as_given);
  const auto map = [](RowMatrix<Scalar>& m) { return MatrixView<Scalar>(m).map(); };
  ForwardCell<Scalar, detail::Keep::current_state> cell{
      in.x.map(),      in.c0.map(),    w.b.map(),   w.gamma_ih.map(), w.gamma_hh.map(),
      w.gamma_c.map(), w.beta_c.map(), map(gates),  map(x_hat),       map(h_hat),
      out.c_T.map(),   map(c_hat),     out.hs.map(), MatrixView<Scalar>().map(), packed_W_x,
      packed_W_h,      s,              active};
  detail::forward_time_loop<Scalar>(s, active, in.h0.map(), out.hs.map(), cell);
  detail::copy_final_states<Scalar>(out.hs.map(), active, out.h_T.map());
}

template <class Scalar>
void backward(const Shape& s, const Inputs<Scalar>& in, const Weights<Scalar>& w, const Cache<const Scalar>& cache,
              const Upstream<Scalar>& up, const Gradients<Scalar>& grad, ConstLengthsRef lengths,
              const BackwardOptions<Scalar>& options) {
  check_inputs(s, in, w);
  check_cache(s, cache);
  const Index H = s.H, B = s.B, GH = gate_count * H;
  detail::check_backward(s, up.dhs, grad, options);
  detail::check_shape("dc_T", up.dc_T, B, H);
  detail::check_shape("dc0", grad.dc0, B, H);
  if (options.need_weight_gradients) {
    detail::check_shape("dW_x", grad.dW_x, s.D, GH);
    detail::check_shape("dW_h", grad.dW_h, H, GH);
    detail::check_shape("db", grad.db, 1, GH);
    detail::check_shape("dgamma_ih", grad.dgamma_ih, 1, GH);
    detail::check_shape("dgamma_hh", grad.dgamma_hh, 1, GH);
    detail::check_shape("dgamma_c", grad.dgamma_c, 1, H);
    detail::check_shape("dbeta_c", grad.dbeta_c, 1, H);
  }
  detail::check_dz(s, options, 2 * GH);
  const detail::ActiveRows active(s, lengths);
  grad.dc0.map() = up.dc_T.map();  // carries dL/dC_t backwards, as in lstm::backward
  const detail::PackedWeights<Scalar> W_h_transposed(w.W_h.map(), detail::Orientation::transposed);
  std::optional<detail::PackedWeights<Scalar>> W_x_transposed;
  const Packed<Scalar> nothing_kept;
  const auto input = detail::input_gradient(options, grad.dx.map(), nothing_kept, 0, GH, s.D, GH, W_x_transposed, [&] {
    return detail::PackedWeights<Scalar>(w.W_x.map(), detail::Orientation::transposed);
  });
  BackwardCell<Scalar> cell{in.x.map(),          in.c0.map(),         cache.gates.map(),    cache.x_hat.map(),
                            cache.h_hat.map(),   cache.cs.map(),      cache.c_hat.map(),    cache.inv_std.map(),
                            w.gamma_ih.map(),    w.gamma_hh.map(),    w.gamma_c.map(),      w.beta_c.map(),
                            grad.dc0.map(),      grad.dW_x.map(),     grad.dW_h.map(),      grad.db.map(),
                            grad.dgamma_ih.map(), grad.dgamma_hh.map(), grad.dgamma_c.map(), grad.dbeta_c.map(),
                            s,                   options.need_weight_gradients, RowVector<Scalar>(GH),
                            RowVector<Scalar>(H)};
  detail::backward_time_loop<Scalar>(s, active, W_h_transposed, in.h0.map(), cache.hs.map(), up.dhs.map(),
                                     grad.dh0.map(), input, options, cell);
}

#define FASTBPTT_INSTANTIATE(Scalar)                                                                              \
  template void forward<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&, const Cache<Scalar>&, \
                                ConstLengthsRef);                                                                 \
  template void forward_inference<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&,            \
                                          const Outputs<Scalar>&, ConstLengthsRef);                               \
  template void backward<Scalar>(const Shape&, const Inputs<Scalar>&, const Weights<Scalar>&,                     \
                                 const Cache<const Scalar>&, const Upstream<Scalar>&, const Gradients<Scalar>&,   \
                                 ConstLengthsRef, const BackwardOptions<Scalar>&);
FASTBPTT_INSTANTIATE(float)
FASTBPTT_INSTANTIATE(double)
#undef FASTBPTT_INSTANTIATE

}  // namespace fastbptt::layer_norm_lstm
