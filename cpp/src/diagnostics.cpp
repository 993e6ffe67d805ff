// Exact Jacobian products and spectral norms for the gradient-flow diagnostics (see diagnostics.hpp).
#include "fastbptt/diagnostics.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fastbptt/lstm.hpp"
#include "fastbptt/threads.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastbptt::diagnostics {
namespace {

using Matrix = RowMatrix<double>;

int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// The exponent e for which largest / 2^e lies in [1/2, 1); 0 when largest is zero or not finite. Dividing by that
/// power of two is exact, so scaled products round exactly as unscaled ones would, without leaving double's range.
int binary_exponent(double largest) {
  if (!(largest > 0.0) || !std::isfinite(largest)) return 0;
  int exponent = 0;
  std::frexp(largest, &exponent);
  return exponent;
}

/// Scratch of one thread for the spectral norms of [rows, cols] matrices; nothing is allocated per matrix.
/// The Gram matrix is column-major because Eigen's tridiagonalization works on column-major storage.
class SpectralNorm {
 public:
  SpectralNorm(Index rows, Index cols)
      : scaled_(rows, cols),
        gram_(std::min(rows, cols), std::min(rows, cols)),
        tridiagonal_(std::max<Index>(1, std::min(rows, cols))),
        diagonal_(std::min(rows, cols)),
        off_diagonal_(std::min(rows, cols)) {}

  double operator()(const Eigen::Ref<const Matrix>& A) {
    if (A.size() == 0) return 0.0;
    if (A.hasNaN()) return std::numeric_limits<double>::quiet_NaN();
    const double largest = A.cwiseAbs().maxCoeff();
    if (largest == 0.0) return 0.0;
    if (std::isinf(largest)) return std::numeric_limits<double>::infinity();
    // Scaled, every entry of the Gram matrix lies in [0, n]: no overflow for huge products, no underflow for
    // vanishing ones.
    const int exponent = binary_exponent(largest);
    if (std::abs(exponent) < 1000) {
      scaled_ = A * std::ldexp(1.0, -exponent);  // a normal power of two: the same bits as ldexp, much faster
    } else {
      scaled_ = A.unaryExpr([exponent](double v) { return std::ldexp(v, -exponent); });
    }
    // The smaller Gram matrix: AᵀA or AAᵀ have the same nonzero eigenvalues, the squared singular values.
    const Index n = std::min(A.rows(), A.cols());
    if (n != gram_.rows()) throw std::logic_error("SpectralNorm: matrix of another size than its scratch");
    auto& gram = gram_;
    gram.setZero();
    if (A.cols() <= A.rows()) {
      gram.selfadjointView<Eigen::Lower>().rankUpdate(scaled_.transpose());
    } else {
      gram.selfadjointView<Eigen::Lower>().rankUpdate(scaled_);
    }
    if (n == 1) return std::ldexp(std::sqrt(gram(0, 0)), exponent);
    tridiagonal_.compute(gram);
    diagonal_ = tridiagonal_.diagonal();
    off_diagonal_.head(n - 1) = tridiagonal_.subDiagonal();
    return std::ldexp(std::sqrt(largest_eigenvalue(n)), exponent);
  }

 private:
  /// The largest eigenvalue of the symmetric tridiagonal matrix (diagonal_, off_diagonal_) by bisection: the
  /// signs of the pivots of T - x I (a Sturm sequence) count the eigenvalues below x. Much cheaper than all
  /// eigenvalues, and as accurate as the reduction to tridiagonal form.
  double largest_eigenvalue(Index n) const {
    const auto d = diagonal_.head(n);
    const auto e = off_diagonal_.head(n - 1);
    double lower = d.maxCoeff();  // a Rayleigh quotient, so at most the largest eigenvalue
    double upper = lower;         // Gershgorin: at least the largest eigenvalue
    for (Index i = 0; i < n; ++i) {
      const double radius = (i > 0 ? std::abs(e(i - 1)) : 0.0) + (i + 1 < n ? std::abs(e(i)) : 0.0);
      upper = std::max(upper, d(i) + radius);
    }
    // A pivot smaller than this is replaced by it, so that no division by zero occurs (as in LAPACK's dstebz).
    const double tiny_pivot = std::numeric_limits<double>::min() * std::max(1.0, e.size() ? e.squaredNorm() : 0.0);
    const auto all_below = [&](double x) {
      double pivot = d(0) - x;
      Index below = 0;
      for (Index i = 0;; ++i) {
        if (std::abs(pivot) < tiny_pivot) pivot = -tiny_pivot;
        below += pivot < 0;
        if (i + 1 == n) break;
        pivot = d(i + 1) - x - e(i) * e(i) / pivot;
      }
      return below == n;
    };
    // The interval starts at most n wide with the eigenvalue at least 1/4 (the scaled matrix has an entry of
    // at least 1/2), so about 55 halvings reach adjacent doubles; the cap only guards against a broken invariant.
    for (int iteration = 0; iteration < 200; ++iteration) {
      const double middle = 0.5 * (lower + upper);
      if (middle <= lower || middle >= upper) break;
      (all_below(middle) ? upper : lower) = middle;
    }
    return 0.5 * (lower + upper);
  }

  Matrix scaled_;
  Eigen::MatrixXd gram_;
  Eigen::Tridiagonalization<Eigen::MatrixXd> tridiagonal_;
  Eigen::VectorXd diagonal_, off_diagonal_;
};

/// 2^exponent * value, saturating to 0 or inf for exponents far outside double's range.
double times_power_of_two(double value, long exponent) {
  return std::ldexp(value, static_cast<int>(std::clamp(exponent, -4000L, 4000L)));
}

/// Every task (a sequence, or a step of a sequence) on one thread, with that thread's scratch (allocated before
/// the threads start, so that a failed allocation is an exception of the calling thread, not a crash inside a
/// parallel region).
template <class Scratch, class Work>
void for_each_task(Index tasks, std::vector<Scratch>& scratch, const Work& work) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic) num_threads(static_cast<int>(scratch.size()))
#endif
  for (Index task = 0; task < tasks; ++task) work(task, scratch[static_cast<std::size_t>(thread_index())]);
}

int threads_for(Index tasks) { return static_cast<int>(std::max<Index>(1, std::min<Index>(get_num_threads(), tasks))); }

/// The per-unit coefficients of LSTM step j (1-based) of sequence b; see lstm_jacobian_norms in the header.
struct LstmStep {
  Eigen::RowVectorXd in_i, in_f, in_g, in_o, dC_dC, out_gain;
  Eigen::ArrayXXd tanh_c;

  explicit LstmStep(Index H) : in_i(H), in_f(H), in_g(H), in_o(H), dC_dC(H), out_gain(H), tanh_c(1, H) {}

  void compute(const Shape& s, bool forget_gate, const Eigen::Ref<const Matrix>& gates,
               const Eigen::Ref<const Matrix>& cs, const Eigen::Ref<const Matrix>& c0, Index j, Index b) {
    const Index H = s.H, row = (j - 1) * s.B + b;
    const auto block = [&](Index q) { return gates.row(row).segment(q * H, H).array(); };
    const auto i = block(0), g = block(forget_gate ? 2 : 1), o = block(forget_gate ? 3 : 2);
    const auto c = cs.row(row).array();
    const auto c_prev = (j == 1 ? c0.row(b) : cs.row(row - s.B)).array();
    tanh_c = c.tanh();
    in_i = (g * i * (1 - i)).matrix();
    in_g = (i * (1 - g * g)).matrix();
    if (forget_gate) {
      const auto f = block(1);
      in_f = (c_prev * f * (1 - f)).matrix();
      dC_dC = f.matrix();
    } else {
      in_f.setZero();
      dC_dC.setOnes();
    }
    out_gain = (o * (1 - tanh_c * tanh_c)).matrix();
    in_o = (tanh_c * o * (1 - o)).matrix();
  }
};

/// The gates' column blocks of W_h, transposed: W_qᵀ [H, H] maps dh_{j-1} to gate q's pre-activation.
struct TransposedGateWeights {
  Index f = -1, g, o;  // block indices in W_h's order (i is 0; f is absent without a forget gate)
  std::vector<Matrix> blocks;

  TransposedGateWeights(const Eigen::Ref<const Matrix>& W_h, bool forget_gate)
      : f(forget_gate ? 1 : -1), g(forget_gate ? 2 : 1), o(forget_gate ? 3 : 2) {
    const Index H = W_h.rows();
    for (Index q = 0; q < lstm::gate_count(forget_gate); ++q) {
      blocks.push_back(W_h.middleCols(q * H, H).transpose());
    }
  }

  const Matrix& operator[](Index q) const { return blocks[static_cast<std::size_t>(q)]; }

  /// D = dC_j/dh_{j-1} = diag(in_i) W_iᵀ + diag(in_f) W_fᵀ + diag(in_g) W_gᵀ for step coefficients c.
  template <class Out>
  void cell_from_hidden(const LstmStep& c, Out&& D) const {
    D.noalias() = c.in_i.asDiagonal() * (*this)[0];
    if (f >= 0) D.noalias() += c.in_f.asDiagonal() * (*this)[f];
    D.noalias() += c.in_g.asDiagonal() * (*this)[g];
  }
};

void check_lstm(const Shape& s, bool forget_gate, const Eigen::Ref<const Matrix>& gates,
                const Eigen::Ref<const Matrix>& cs, const Eigen::Ref<const Matrix>& c0,
                const Eigen::Ref<const Matrix>& W_h) {
  const Index G = lstm::gate_count(forget_gate);
  if (s.T < 1 || s.B < 1 || s.H < 1) throw std::invalid_argument("shape: T, B and H must be >= 1");
  detail::check_shape("gates", gates, s.T * s.B, G * s.H);
  detail::check_shape("cs", cs, s.T * s.B, s.H);
  detail::check_shape("c0", c0, s.B, s.H);
  detail::check_shape("W_h", W_h, s.H, G * s.H);
}

void check_t(Index t, Index T) {
  if (t < 1 || t > T) {
    throw std::invalid_argument("t: expected a state index in 1 .. " + std::to_string(T) + ", got " +
                                std::to_string(t));
  }
}

}  // namespace

void spectral_norms(Index count, ConstMatrixRef<double> matrices, VectorRef<double> norms) {
  if (count < 0 || (count == 0 && matrices.rows() != 0) || (count > 0 && matrices.rows() % count != 0)) {
    throw std::invalid_argument("matrices: " + std::to_string(matrices.rows()) + " rows do not split into " +
                                std::to_string(count) + " matrices");
  }
  detail::check_shape("norms", norms, 1, count);
  if (count == 0) return;
  const Index rows = matrices.rows() / count, cols = matrices.cols();
  std::vector<SpectralNorm> scratch(static_cast<std::size_t>(threads_for(count)), SpectralNorm(rows, cols));
  for_each_task(count, scratch, [&](Index n, SpectralNorm& norm) {
    norms(n) = norm(matrices.middleRows(n * rows, rows));
  });
}

void rnn_jacobian_norms(Index T, Index B, ConstMatrixRef<double> phi_prime, ConstMatrixRef<double> W_hh, Index t,
                        MatrixRef<double> norms) {
  if (T < 1 || B < 1) throw std::invalid_argument("T and B must be >= 1");
  const Index H = W_hh.rows();
  detail::check_shape("W_hh", W_hh, H, H);
  detail::check_shape("phi_prime", phi_prime, T * B, H);
  check_t(t, T);
  detail::check_shape("norms", norms, t + 1, B);
  const Matrix W_hh_t = W_hh.transpose();

  struct Scratch {
    Matrix product, scaled;
    SpectralNorm norm;
    explicit Scratch(Index H) : product(H, H), scaled(H, H), norm(H, H) {}
  };
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads_for(B)), Scratch(H));
  for_each_task(B, scratch, [&](Index b, Scratch& w) {
    // product = dh_t/dh_k / 2^exponent, from k = t down: dh_t/dh_{k-1} = dh_t/dh_k diag(phi'(z_k)) W_hhᵀ.
    w.product.setIdentity();
    long exponent = 0;
    norms(t, b) = 1.0;
    for (Index k = t; k >= 1; --k) {
      w.scaled.noalias() = w.product * phi_prime.row((k - 1) * B + b).asDiagonal();
      w.product.noalias() = w.scaled * W_hh_t;
      const int e = binary_exponent(w.product.cwiseAbs().maxCoeff());
      w.product *= std::ldexp(1.0, -e);
      exponent += e;
      norms(k - 1, b) = times_power_of_two(w.norm(w.product), exponent);
    }
  });
}

void lstm_jacobian_norms(const Shape& s, bool forget_gate, ConstMatrixRef<double> gates, ConstMatrixRef<double> cs,
                         ConstMatrixRef<double> c0, ConstMatrixRef<double> W_h, Index t, MatrixRef<double> norms,
                         double* step_norms) {
  check_lstm(s, forget_gate, gates, cs, c0, W_h);
  check_t(t, s.T);
  detail::check_shape("norms", norms, t + 1, s.B);
  const Index H = s.H, G = lstm::gate_count(forget_gate), B = s.B;
  // Columns of gate q in the product M W_hᵀ below; the forget block multiplies zeros without a forget gate.
  const Matrix W_h_t = W_h.transpose();  // [G*H, H]

  struct Scratch {
    Matrix P_h, P_c, Q, M, step;
    LstmStep coefficients;
    SpectralNorm norm, step_norm;
    Scratch(Index H, Index G, bool steps)
        : P_h(H, H), P_c(H, H), Q(H, H), M(H, G * H), step(steps ? 2 * H : 0, steps ? 2 * H : 0),
          coefficients(H), norm(H, H), step_norm(steps ? 2 * H : 0, steps ? 2 * H : 0) {}
  };
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads_for(B)), Scratch(H, G, step_norms != nullptr));
  const TransposedGateWeights W_t(W_h, forget_gate);
  for_each_task(B, scratch, [&](Index b, Scratch& w) {
    // [P_h, P_c] = d h_t / d(h_k, C_k) / 2^exponent, from k = t down. With Q = P_h diag(out_gain) + P_c (the
    // gradient reaching C_k's successor), one step back is
    //   P_h <- [Q diag(in_i), Q diag(in_f), Q diag(in_g), P_h diag(in_o)] W_hᵀ   (one product for all gates)
    //   P_c <- Q diag(dC_dC)
    w.P_h.setIdentity();
    w.P_c.setZero();
    long exponent = 0;
    norms(t, b) = 1.0;
    for (Index k = t; k >= 1; --k) {
      LstmStep& c = w.coefficients;
      c.compute(s, forget_gate, gates, cs, c0, k, b);
      w.Q.noalias() = w.P_h * c.out_gain.asDiagonal();
      w.Q += w.P_c;
      w.M.middleCols(0, H).noalias() = w.Q * c.in_i.asDiagonal();
      if (forget_gate) w.M.middleCols(W_t.f * H, H).noalias() = w.Q * c.in_f.asDiagonal();
      w.M.middleCols(W_t.g * H, H).noalias() = w.Q * c.in_g.asDiagonal();
      w.M.middleCols(W_t.o * H, H).noalias() = w.P_h * c.in_o.asDiagonal();
      w.P_h.noalias() = w.M * W_h_t;
      w.P_c.noalias() = w.Q * c.dC_dC.asDiagonal();
      // One power of two for both halves keeps them on the same scale.
      const int e = binary_exponent(std::max(w.P_h.cwiseAbs().maxCoeff(), w.P_c.cwiseAbs().maxCoeff()));
      w.P_h *= std::ldexp(1.0, -e);
      w.P_c *= std::ldexp(1.0, -e);
      exponent += e;
      norms(k - 1, b) = times_power_of_two(w.norm(w.P_h), exponent);
      if (step_norms) {
        // J_k = [[diag(in_o) W_oᵀ + diag(out_gain) D, diag(out_gain dC_dC)], [D, diag(dC_dC)]]
        auto D = w.step.bottomLeftCorner(H, H);
        W_t.cell_from_hidden(c, D);
        w.step.topLeftCorner(H, H).noalias() = c.in_o.asDiagonal() * W_t[W_t.o];
        w.step.topLeftCorner(H, H).noalias() += c.out_gain.asDiagonal() * D;
        w.step.topRightCorner(H, H) = c.out_gain.cwiseProduct(c.dC_dC).asDiagonal();
        w.step.bottomRightCorner(H, H) = c.dC_dC.asDiagonal();
        step_norms[(k - 1) * B + b] = w.step_norm(w.step);
      }
    }
  });
}

void lstm_cell_jacobians(const Shape& s, bool forget_gate, ConstMatrixRef<double> gates, ConstMatrixRef<double> cs,
                         ConstMatrixRef<double> c0, ConstMatrixRef<double> W_h, MatrixRef<double> full,
                         MatrixRef<double> full_norms) {
  check_lstm(s, forget_gate, gates, cs, c0, W_h);
  const Index H = s.H, B = s.B;
  detail::check_shape("full", full, s.T * B * H, H);
  detail::check_shape("full_norms", full_norms, s.T, B);
  const TransposedGateWeights W_t(W_h, forget_gate);

  struct Scratch {
    LstmStep coefficients, previous;
    SpectralNorm norm;
    explicit Scratch(Index H) : coefficients(H), previous(H), norm(H, H) {}
  };
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads_for(s.T * B)), Scratch(H));
  // One task per (step, sequence): full_t = diag(dC_dC_t) + D_t diag(out_gain_{t-1}) (dh_{t-1}/dC_{t-1}).
  for_each_task(s.T * B, scratch, [&](Index task, Scratch& w) {
    const Index t = task / B + 1, b = task % B;
    w.coefficients.compute(s, forget_gate, gates, cs, c0, t, b);
    auto J = full.middleRows(task * H, H);
    if (t == 1) {
      J.setZero();
    } else {
      w.previous.compute(s, forget_gate, gates, cs, c0, t - 1, b);
      W_t.cell_from_hidden(w.coefficients, J);
      J = J * w.previous.out_gain.asDiagonal();
    }
    J.diagonal() += w.coefficients.dC_dC.transpose();
    full_norms(t - 1, b) = w.norm(J);
  });
}

}  // namespace fastbptt::diagnostics
