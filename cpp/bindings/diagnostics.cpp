// Binding of the gradient-flow diagnostics: float64 arrays only (the Python layer converts), GIL released.
#include "fastbptt/diagnostics.hpp"

#include <vector>

#include "arrays.hpp"

namespace fastbptt::bindings {
namespace {

using Array64 = Array<double>;

Array64 spectral_norms(const Array64& matrices) {
  check_ndim(matrices, "matrices", 3);
  const Index count = matrices.shape(0);
  const Eigen::Map<const RowMatrix<double>> stacked(matrices.data(), count * matrices.shape(1), matrices.shape(2));
  Array64 norms(std::vector<py::ssize_t>{count});
  auto norms_v = as_mutable_vector(norms);
  {
    py::gil_scoped_release release;
    diagnostics::spectral_norms(count, stacked, norms_v);
  }
  return norms;
}

Array64 rnn_jacobian_norms(const Array64& phi_prime, const Array64& W_hh, Index t) {
  check_ndim(phi_prime, "phi_prime", 3);
  const Index T = phi_prime.shape(0), B = phi_prime.shape(1);
  const auto phi_prime_m = as_matrix(phi_prime, "phi_prime", 3);
  const auto W_hh_m = as_matrix(W_hh, "W_hh", 2);
  if (t < 1 || t > T) throw py::value_error("t: expected a state index in 1 .. " + std::to_string(T));
  Array64 norms({t + 1, B});
  auto norms_m = as_mutable_matrix(norms);
  {
    py::gil_scoped_release release;
    diagnostics::rnn_jacobian_norms(T, B, phi_prime_m, W_hh_m, t, norms_m);
  }
  return norms;
}

/// The arrays of an LSTM cache that the diagnostics read, as matrices, and the shape they imply.
struct LstmCache {
  ConstMatrixMap<double> gates, cs, c0, W_h;  // first: as_matrix checks the ndim that `s` relies on
  Shape s;

  LstmCache(const Array64& gates_, const Array64& cs_, const Array64& c0_, const Array64& W_h_)
      : gates(as_matrix(gates_, "gates", 3)),
        cs(as_matrix(cs_, "cs", 3)),
        c0(as_matrix(c0_, "c0", 2)),
        W_h(as_matrix(W_h_, "W_h", 2)),
        s{gates_.shape(0), gates_.shape(1), 0, W_h_.shape(0)} {}
};

py::tuple lstm_jacobian_norms(const Array64& gates, const Array64& cs, const Array64& c0, const Array64& W_h,
                              bool forget_gate, Index t, bool step_norms) {
  const LstmCache c(gates, cs, c0, W_h);
  const Shape& s = c.s;
  if (t < 1 || t > s.T) throw py::value_error("t: expected a state index in 1 .. " + std::to_string(s.T));
  Array64 norms({t + 1, s.B});
  auto norms_m = as_mutable_matrix(norms);
  Array64 steps(std::vector<py::ssize_t>{step_norms ? t : 0, s.B});
  {
    py::gil_scoped_release release;
    diagnostics::lstm_jacobian_norms(s, forget_gate, c.gates, c.cs, c.c0, c.W_h, t, norms_m,
                                     step_norms ? steps.mutable_data() : nullptr);
  }
  return py::make_tuple(norms, steps);
}

py::tuple lstm_cell_jacobians(const Array64& gates, const Array64& cs, const Array64& c0, const Array64& W_h,
                              bool forget_gate) {
  const LstmCache c(gates, cs, c0, W_h);
  const Shape& s = c.s;
  Array64 full({s.T, s.B, s.H, s.H}), full_norms({s.T, s.B});
  auto full_m = as_mutable_matrix(full);
  auto full_norms_m = as_mutable_matrix(full_norms);
  {
    py::gil_scoped_release release;
    diagnostics::lstm_cell_jacobians(s, forget_gate, c.gates, c.cs, c.c0, c.W_h, full_m, full_norms_m);
  }
  return py::make_tuple(full, full_norms);
}

}  // namespace

void bind_diagnostics(py::module_& m) {
  m.def("spectral_norms", &spectral_norms, py::arg("matrices").noconvert(),
        "norms [N] = ||A_n||_2 of matrices [N, r, c] (float64).");
  m.def("rnn_jacobian_norms", &rnn_jacobian_norms, py::arg("phi_prime").noconvert(), py::arg("W_hh").noconvert(),
        py::arg("t"), "norms [t+1, B] = ||dh_t/dh_k||_2 of the RNN; see fastbptt.diagnostics.rnn_jacobian_norms.");
  m.def("lstm_jacobian_norms", &lstm_jacobian_norms, py::arg("gates").noconvert(), py::arg("cs").noconvert(),
        py::arg("c0").noconvert(), py::arg("W_h").noconvert(), py::arg("forget_gate"), py::arg("t"),
        py::arg("step_norms"),
        "(norms [t+1, B], step_norms [t or 0, B]) for the LSTM; see fastbptt.diagnostics.lstm_jacobian_norms.");
  m.def("lstm_cell_jacobians", &lstm_cell_jacobians, py::arg("gates").noconvert(), py::arg("cs").noconvert(),
        py::arg("c0").noconvert(), py::arg("W_h").noconvert(), py::arg("forget_gate"),
        "(full [T, B, H, H], full_norms [T, B]) = dC_t/dC_{t-1}; see fastbptt.diagnostics.lstm_cell_jacobians.");
}

}  // namespace fastbptt::bindings
