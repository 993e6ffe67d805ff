// Gradient-flow diagnostics: exact products of BPTT's step Jacobians and their spectral norms.
//
// States are numbered as in the forward pass: h_0 is the initial state and h_j (j = 1 .. T) comes out of step j,
// row (j-1)*B + b of the [T*B, .] arrays for sequence b. Everything is computed in double, whatever the dtype of
// the forward pass: the Jacobians are exact functions of the stored activations, and products over long lags
// leave float's range quickly. Each sequence is computed on its own, by one thread, so results do not depend on
// the thread count.
#pragma once

#include "fastbptt/types.hpp"

namespace fastbptt::diagnostics {

/// ||A_n||_2 (the largest singular value) of each of `count` matrices stacked as A_n = rows n*r .. n*r+r-1 of
/// `matrices` [count*r, c]. Exact to a few units in the last place: the largest eigenvalue of the Gram matrix
/// (scaled by a power of two so that nothing overflows), reduced to tridiagonal form and bisected.
/// A matrix holding NaN gives NaN; one holding an infinity (and no NaN) gives +inf.
void spectral_norms(Index count, ConstMatrixRef<double> matrices, VectorRef<double> norms);

/// Plain RNN: ||dh_t/dh_k||_2 for k = 0 .. t and every sequence, from the step Jacobians
/// dh_j/dh_{j-1} = diag(phi'(z_j)) W_hhᵀ, multiplied backwards from t (the product carries exact powers of two
/// beside it, so it neither overflows nor underflows however long the lag).
/// phi_prime [T*B, H]  in   row (j-1)*B + b: phi'(z_j) of sequence b
/// W_hh      [H, H]    in
/// t                   in   1 .. T
/// norms     [t+1, B]  out  row k: ||dh_t/dh_k||_2 (row t: 1, the identity)
void rnn_jacobian_norms(Index T, Index B, ConstMatrixRef<double> phi_prime, ConstMatrixRef<double> W_hh, Index t,
                        MatrixRef<double> norms);

/// LSTM hidden state: ||dh_t/dh_k||_2 for k = 0 .. t and every sequence, for a perturbation of h_k alone (C_k is
/// not a function of h_k) carried through the full (h, C) recursion. With W_q the gate-q column block of W_h, a
/// step moves the state by
///   dC_j = diag(f_j) dC_{j-1} + D_j dh_{j-1},   dh_j = diag(o_j (1 - tanh² C_j)) dC_j + diag(in_o) W_oᵀ dh_{j-1}
///   D_j = diag(g i(1-i)) W_iᵀ + diag(C_{j-1} f(1-f)) W_fᵀ + diag(i (1-g²)) W_gᵀ,   in_o = tanh C_j o(1-o)
/// (without a forget gate f_j is 1 and the W_f term is absent).
/// shape, forget_gate, gates, cs, c0, W_h   in   as given to / returned by lstm::forward (double)
/// t                                        in   1 .. T
/// norms       [t+1, B]                      out  row k: ||dh_t/dh_k||_2 (row t: 1)
/// step_norms  [t, B]                        out  optional (null: not computed): row j-1 holds ||J_j||_2, the
///                                                spectral norm of the whole [2H, 2H] Jacobian of (h_j, C_j) with
///                                                respect to (h_{j-1}, C_{j-1}); their products bound `norms`
void lstm_jacobian_norms(const Shape& shape, bool forget_gate, ConstMatrixRef<double> gates,
                         ConstMatrixRef<double> cs, ConstMatrixRef<double> c0, ConstMatrixRef<double> W_h, Index t,
                         MatrixRef<double> norms, double* step_norms = nullptr);

/// LSTM cell state: the full dC_t/dC_{t-1} of every step (through h_{t-1} = o_{t-1} tanh C_{t-1} into the gates,
/// plus the direct diag(f_t)) and its spectral norm. At t = 1, h_0 is an input, so the full derivative is diag(f_1).
/// shape, forget_gate, gates, cs, c0, W_h   in   as given to / returned by lstm::forward (double)
/// full        [T*B*H, H]                    out  rows ((t-1)*B + b)*H .. +H-1: dC_t/dC_{t-1} of sequence b
/// full_norms  [T, B]                        out
void lstm_cell_jacobians(const Shape& shape, bool forget_gate, ConstMatrixRef<double> gates,
                         ConstMatrixRef<double> cs, ConstMatrixRef<double> c0, ConstMatrixRef<double> W_h,
                         MatrixRef<double> full, MatrixRef<double> full_norms);

}  // namespace fastbptt::diagnostics
