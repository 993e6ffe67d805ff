"""Gradient-flow diagnostics against finite differences, explicit products and the spec's closed forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import LSTM_INPUTS, RNN_INPUTS, gru_problem, lstm_problem, rnn_problem

import fastbptt as fb
from fastbptt import diagnostics as dg


def scaled_lstm(rng, T: int, B: int, D: int, H: int, forget_gate: bool, scale: float):
    """(problem, forward's hs, forward's cache) of an LSTM whose recurrent weights are scaled by ``scale`` (so that
    the Jacobians are far from zero)."""
    p = lstm_problem(rng, T=T, B=B, D=D, H=H, forget_gate=forget_gate)
    p["W_h"] *= scale
    hs, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS), forget_gate=forget_gate)
    return p, hs, cache


def batch_jacobian(f, state: np.ndarray, b: int, eps: float = 1e-6) -> np.ndarray:
    """d f(state)[b] / d state[b] by central differences (f maps a [B, H] state to a [B, H] result)."""
    columns = []
    for j in range(state.shape[1]):
        up, down = state.copy(), state.copy()
        up[b, j] += eps
        down[b, j] -= eps
        columns.append((f(up)[b] - f(down)[b]) / (2 * eps))
    return np.stack(columns, axis=1)


def rnn_final_state(p, activation, start, stop, h_start):
    """h_stop from h_start by running steps start+1 .. stop."""
    hs, _ = fb.rnn_forward(p["x"][start:stop], p["W_xh"], p["W_hh"], p["b_h"], h_start, activation=activation)
    return hs[-1]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_rnn_jacobian_products_match_finite_differences(rng, activation):
    p = rnn_problem(rng, T=7, B=2, D=3, H=4)
    p["W_hh"] *= 3  # gradients far from trivially small
    hs, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=activation)
    t = 6
    result = dg.rnn_jacobian_norms(cache, t)
    steps = dg.rnn_step_jacobians(cache)
    for k in (0, 2, 5):
        h_k = p["h0"] if k == 0 else hs[k - 1]
        for b in range(2):
            numeric = batch_jacobian(lambda h, k=k: rnn_final_state(p, activation, k, t, h), h_k, b)
            explicit = np.eye(4)
            for j in range(t, k, -1):
                explicit = explicit @ steps[j - 1, b]
            np.testing.assert_allclose(explicit, numeric, rtol=1e-6, atol=1e-8)
            assert result.norms[k, b] == pytest.approx(np.linalg.norm(explicit, 2), rel=1e-10)
    assert np.all(result.norms <= result.data_bound * (1 + 1e-10))
    assert np.all(result.data_bound <= result.bound[:, None] * (1 + 1e-10))


def test_linear_rnn_with_symmetric_weights_decays_as_the_spectral_radius(rng):
    # relu with every pre-activation positive is the identity: dh_t/dh_k = (W_hhᵀ)^(t-k) exactly.
    H = 6
    A = rng.standard_normal((H, H))
    W_hh = 0.1 * (A + A.T)
    x = np.abs(rng.standard_normal((12, 3, 2)))
    hs, cache = fb.rnn_forward(x, np.abs(rng.standard_normal((2, H))), W_hh, np.full(H, 50.0), activation="relu")
    assert np.all(hs > 0)
    rho = dg.spectrum(W_hh).spectral_radius
    result = dg.rnn_jacobian_norms(cache)
    np.testing.assert_allclose(result.norms, (rho ** result.lags.astype(float))[:, None] * np.ones((1, 3)), rtol=1e-10)


def assert_bounds_hold_on_every_pair(pairs: dg.JacobianNormPairs) -> None:
    measured = ~np.isnan(pairs.norms)
    assert measured.sum() > 0
    norms, data_bound = pairs.norms[measured], pairs.data_bound[measured]
    assert np.all(norms <= data_bound * (1 + 1e-10) + 1e-300)
    if pairs.bound is not None:
        bound = np.broadcast_to(pairs.bound[..., None], pairs.norms.shape)[measured]
        assert np.all(data_bound <= bound * (1 + 1e-10))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_bound_holds_for_random_and_trained_networks(rng, activation):
    for scale in (0.5, 1.0, 2.0, 4.0):
        p = rnn_problem(rng, T=20, B=3, D=4, H=8)
        _, cache = fb.rnn_forward(p["x"], p["W_xh"], scale * p["W_hh"], p["b_h"], activation=activation)
        assert_bounds_hold_on_every_pair(dg.rnn_jacobian_norm_pairs(cache))
    model = fb.SequenceModel(5, 8, cell="rnn", activation=activation, seed=0, dtype=np.float64)
    stream = rng.integers(0, 5, size=(41, 4))
    fb.train_tbptt(model, stream[:-1], stream[1:], fb.Adam(model.params, lr=0.05), k1=10)
    model.loss_and_grad(stream[:-1], stream[1:])
    assert_bounds_hold_on_every_pair(dg.rnn_jacobian_norm_pairs(model.rnn.cell_cache()))
    lstm = fb.SequenceModel(5, 8, cell="lstm", seed=0, dtype=np.float64)
    fb.train_tbptt(lstm, stream[:-1], stream[1:], fb.Adam(lstm.params, lr=0.05), k1=10)
    lstm.loss_and_grad(stream[:-1], stream[1:])
    assert_bounds_hold_on_every_pair(dg.lstm_jacobian_norm_pairs(lstm.rnn.cell_cache()))


def test_spectrum():
    W = np.diag([0.5, -2.0, 1.0])
    s = dg.spectrum(W)
    assert s.spectral_radius == 2.0
    np.testing.assert_allclose(s.eigenvalues, [-2.0, 1.0, 0.5])
    np.testing.assert_allclose(s.singular_values, [2.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="square"):
        dg.spectrum(np.zeros((2, 3)))


@pytest.mark.parametrize("forget_gate", [True, False], ids=["forget", "original"])
def test_lstm_full_cell_jacobian_matches_finite_differences(rng, forget_gate):
    p, hs, cache = scaled_lstm(rng, 5, 2, 3, 4, forget_gate, 4)
    result = dg.lstm_cell_jacobians(cache)
    H = 4
    o = cache.gates[..., -H:]
    for t in (2, 4):  # C_t as a function of C_{t-1}, with h_{t-1} = o_{t-1} tanh(C_{t-1}) following it
        c_prev = cache.cs[t - 2]

        def c_t(c, t=t):
            h_prev = o[t - 2] * np.tanh(c)
            _, c_new, _ = fb.lstm_forward(
                p["x"][t - 1 : t], p["W_x"], p["W_h"], p["b"], h_prev, c, forget_gate=forget_gate
            )
            return c_new

        for b in range(2):
            np.testing.assert_allclose(result.full[t - 1, b], batch_jacobian(c_t, c_prev, b), rtol=1e-6, atol=1e-8)
    assert not np.allclose(result.full[1:], result.naive[1:, ..., None] * np.eye(H)), "the full derivative differs"


def test_lstm_cell_jacobian_without_recurrent_weights_is_the_forget_gate(rng):
    p = lstm_problem(rng, T=6, B=3, D=4, H=5)
    p["W_h"] = np.zeros_like(p["W_h"])
    _, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    result = dg.lstm_cell_jacobians(cache)
    f = cache.gates[..., 5:10]
    np.testing.assert_array_equal(result.naive, f)
    np.testing.assert_allclose(result.full, f[..., None] * np.eye(5), atol=0)


def test_lstm_hidden_jacobian_matches_finite_differences(rng):
    p = lstm_problem(rng, T=6, B=2, D=3, H=4)
    hs, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    t, k = 6, 2
    result = dg.lstm_jacobian_norms(cache, t)
    h_k, c_k = hs[k - 1], cache.cs[k - 1]
    for b in range(2):
        numeric = batch_jacobian(
            lambda h: fb.lstm_forward(p["x"][k:t], p["W_x"], p["W_h"], p["b"], h, c_k)[0][-1], h_k, b
        )
        assert result.norms[k, b] == pytest.approx(np.linalg.norm(numeric, 2), rel=1e-6)
    assert np.all(result.norms <= result.data_bound * (1 + 1e-10))


@pytest.mark.parametrize("lengths", [None, [8, 5, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_hidden_gradient_norms_are_what_bptt_carries(rng, cell, lengths):
    """dL/dh_k is the upstream gradient at k plus dh0 of the backward pass over the steps after k, run from the
    state at k: checked against that for every k (k = T: the upstream gradient alone; k = 0: dh0)."""
    T, B = 8, 3
    if cell == "rnn":
        p = rnn_problem(rng, T=T, B=B, D=4, H=5)
        weights = (p["W_xh"], p["W_hh"], p["b_h"])
        _, cache = fb.rnn_forward(p["x"], *weights, p["h0"], lengths=lengths)

        def tail_dh0(k, L):
            _, tail = fb.rnn_forward(p["x"][k:], *weights, cache.hs[k - 1], lengths=L)
            return fb.rnn_backward(tail, p["dhs"][k:]).dh0

    elif cell == "lstm":
        p = lstm_problem(rng, T=T, B=B, D=4, H=5)
        weights = (p["W_x"], p["W_h"], p["b"])
        _, _, cache = fb.lstm_forward(p["x"], *weights, p["h0"], p["c0"], lengths=lengths)

        def tail_dh0(k, L):
            _, _, tail = fb.lstm_forward(p["x"][k:], *weights, cache.hs[k - 1], cache.cs[k - 1], lengths=L)
            return fb.lstm_backward(tail, p["dhs"][k:], p["dc_T"]).dh0

    else:
        p = gru_problem(rng, T=T, B=B, D=4, H=5)
        weights = (p["W_x"], p["W_h"], p["b"], p["b_hn"])
        _, cache = fb.gru_forward(p["x"], *weights, p["h0"], lengths=lengths)

        def tail_dh0(k, L):
            _, tail = fb.gru_forward(p["x"][k:], *weights, cache.hs[k - 1], lengths=L)
            return fb.gru_backward(tail, p["dhs"][k:]).dh0

    if cell == "lstm":
        norms = dg.hidden_gradient_norms(cache, p["dhs"], p["dc_T"])
        full = fb.lstm_backward(cache, p["dhs"], p["dc_T"])
    else:
        norms = dg.hidden_gradient_norms(cache, p["dhs"])
        full = (fb.rnn_backward if cell == "rnn" else fb.gru_backward)(cache, p["dhs"])
    np.testing.assert_allclose(norms.per_sequence[0], np.linalg.norm(full.dh0, axis=1), rtol=1e-12)
    steps = np.full(B, T) if lengths is None else np.asarray(lengths)
    for k in range(1, T + 1):
        for b in range(B):
            if k > steps[b]:
                assert norms.per_sequence[k, b] == 0
                continue
            if k == steps[b]:  # a sequence's last state gets its upstream gradient only (dc_T enters through C)
                expected = p["dhs"][k - 1, b]
            else:
                L = None if lengths is None else np.maximum(steps - k, 1)
                expected = p["dhs"][k - 1, b] + tail_dh0(k, L)[b]
            np.testing.assert_allclose(norms.per_sequence[k, b], np.linalg.norm(expected), rtol=1e-10)
    np.testing.assert_allclose(norms.mean, norms.per_sequence.mean(axis=1))


def test_diagnose_command_prints_the_table(tmp_path):
    import io

    from fastbptt.cli.diagnose import run_diagnose

    out = io.StringIO()
    rows = run_diagnose(T=12, B=2, H=6, out_dir=tmp_path, out=out, timed_shape=(5, 2, 3))
    printed = out.getvalue()
    assert len(rows) == 11 and "decay per lag" in printed and "exact Jacobian sweeps at T=5, B=2, H=3" in printed
    assert "| LSTM ||dh_T/dh_k||_2, all k, bounds=False |" in printed
    by_rho = {row["rho"]: row for row in rows if row["model"] == "tanh RNN"}
    assert by_rho[0.5]["mean_norm"][10] < by_rho[1.5]["mean_norm"][10], "smaller radius, faster decay"
    for row in rows:
        if row["model"] != "LSTM":
            assert np.all(row["mean_norm"] <= row["bound"] * (1 + 1e-10))


# ---- the core's exact products and spectral norms against explicit NumPy ----


def explicit_products_back(steps: np.ndarray, t: int) -> list[np.ndarray]:
    """[k] -> steps[t-1] @ ... @ steps[k] (the product of step Jacobians k+1 .. t) for k = 0 .. t, per sequence."""
    B, n = steps.shape[1], steps.shape[-1]
    products = [None] * (t + 1)
    products[t] = np.broadcast_to(np.eye(n), (B, n, n))
    for k in range(t - 1, -1, -1):
        products[k] = products[k + 1] @ steps[k]
    return products


@pytest.mark.parametrize("shape", [(7, 7), (9, 4), (3, 11), (1, 6), (6, 1), (1, 1)])
def test_spectral_norms_match_lapack(rng, shape):
    A = rng.standard_normal((5, *shape))
    np.testing.assert_allclose(dg.spectral_norms(A), np.linalg.norm(A, 2, axis=(-2, -1)), rtol=1e-13)


def test_spectral_norms_of_extreme_scales_nan_inf_and_zero(rng):
    A = rng.standard_normal((3, 6, 6))
    expected = np.linalg.norm(A, 2, axis=(-2, -1))
    for scale in (1e300, 1e-300, 2.0**-1060):  # the squared norms under- or overflow double; the norms do not
        np.testing.assert_allclose(dg.spectral_norms(A * scale), expected * scale, rtol=1e-12)
    special = np.stack([np.zeros((6, 6)), A[0], A[1]])
    special[1, 2, 3] = np.nan
    special[2, 0, 0] = -np.inf
    np.testing.assert_array_equal(dg.spectral_norms(special), [0.0, np.nan, np.inf])
    assert dg.spectral_norms(rng.standard_normal((2, 3, 4, 5))).shape == (2, 3)
    symmetric = rng.standard_normal((8, 8))
    symmetric = symmetric + symmetric.T
    assert dg.spectral_norms(symmetric) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(symmetric))), rel=1e-13)
    np.testing.assert_array_equal(dg.spectral_norms(np.zeros((2, 0, 3))), [0.0, 0.0])
    assert dg.spectral_norms(np.zeros((0, 3, 3))).shape == (0,)
    assert dg.spectral_norms([[3, 4]]) == 5.0
    for bad in (np.ones(3), np.ones((2, 2), complex), [[1.0, 2.0], [3.0]]):
        with pytest.raises(ValueError, match="matrices"):
            dg.spectral_norms(bad)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_rnn_jacobian_norms_match_explicit_products_at_every_t(rng, activation):
    p = rnn_problem(rng, T=9, B=3, D=4, H=5)
    p["W_hh"] *= 2.5
    _, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=activation)
    steps = dg.rnn_step_jacobians(cache)
    pairs = dg.rnn_jacobian_norm_pairs(cache)
    for t in range(1, 10):
        expected = np.array([np.linalg.norm(P, 2, axis=(-2, -1)) for P in explicit_products_back(steps, t)])
        single = dg.rnn_jacobian_norms(cache, t)
        np.testing.assert_allclose(single.norms, expected, rtol=1e-12)
        np.testing.assert_array_equal(pairs.norms[t, : t + 1], single.norms)
        np.testing.assert_array_equal(pairs.bound[t, : t + 1], single.bound)
        np.testing.assert_array_equal(pairs.data_bound[t, : t + 1], single.data_bound)
        assert np.isnan(pairs.norms[t, t + 1 :]).all() and np.isnan(pairs.bound[t, t + 1 :]).all()
    assert np.all(pairs.norms[0, 0] == 1.0) and np.isnan(pairs.norms[0, 1:]).all()


def test_rnn_jacobian_norms_of_a_float32_cache_are_those_of_its_values_in_float64(rng):
    p = rnn_problem(rng, T=8, B=2, D=3, H=6)
    _, cache32 = fb.rnn_forward(*(p[k].astype(np.float32) for k in RNN_INPUTS))
    cache64 = dataclasses.replace(
        cache32, **{f: getattr(cache32, f).astype(np.float64) for f in ("x", "W_xh", "W_hh", "h0", "hs")}
    )
    np.testing.assert_array_equal(dg.rnn_jacobian_norms(cache32).norms, dg.rnn_jacobian_norms(cache64).norms)
    assert dg.rnn_jacobian_norms(cache32).norms.dtype == np.float64


@pytest.mark.parametrize("rho", [0.6, 1.5])
def test_long_lags_leave_no_range_problem(rng, rho):
    # A linear RNN (relu, every pre-activation positive) with symmetric W_hh: ||dh_t/dh_k||_2 = rho^(t-k) exactly.
    # At T = 1200 these reach 1e-266 and 1e211, whose squares (the Gram matrix's eigenvalues) leave double's range.
    H, T = 4, 1200
    Q = np.linalg.qr(rng.standard_normal((H, H)))[0]
    W_hh = Q @ np.diag([rho, -rho, 0.5 * rho, 0.1]) @ Q.T
    hs = np.ones((T, 1, H))  # relu' = 1 at every step, whatever the inputs were
    cache = fb.RNNCache(np.zeros((T, 1, 1)), np.zeros((1, H)), W_hh, np.zeros((1, H)), hs, "relu")
    result = dg.rnn_jacobian_norms(cache)
    np.testing.assert_allclose(result.norms[:, 0], rho ** result.lags.astype(float), rtol=1e-10)


def test_jacobian_norms_are_independent_of_the_thread_count(rng):
    p = lstm_problem(rng, T=12, B=5, D=3, H=6)
    _, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    before = fb.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fb.set_num_threads(threads)
            r = dg.lstm_jacobian_norms(cache)
            results.append((r.norms, r.data_bound, dg.lstm_cell_jacobians(cache).full_norms))
    finally:
        fb.set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("forget_gate", [True, False], ids=["forget", "original"])
def test_lstm_jacobian_norms_match_explicit_state_jacobian_products(rng, forget_gate):
    p, _, cache = scaled_lstm(rng, 8, 3, 3, 4, forget_gate, 4)
    H = 4
    steps = dg.lstm_state_jacobians(cache)  # [T, B, 2H, 2H], NumPy
    step_norms = np.linalg.norm(steps, 2, axis=(-2, -1))
    pairs = dg.lstm_jacobian_norm_pairs(cache)
    for t in (1, 5, 8):
        products = explicit_products_back(steps, t)
        expected = np.array([np.linalg.norm(P[:, :H, :H], 2, axis=(-2, -1)) for P in products])
        result = dg.lstm_jacobian_norms(cache, t)
        np.testing.assert_allclose(result.norms, expected, rtol=1e-12)
        expected_bound = np.array([np.prod(step_norms[k:t], axis=0) for k in range(t + 1)])
        np.testing.assert_allclose(result.data_bound, expected_bound, rtol=1e-12)
        np.testing.assert_array_equal(result.bound, result.data_bound.max(axis=1))
        assert np.all(result.norms <= result.data_bound * (1 + 1e-12))
        np.testing.assert_array_equal(pairs.norms[t, : t + 1], result.norms)
        quick = dg.lstm_jacobian_norms(cache, t, bounds=False)
        np.testing.assert_array_equal(quick.norms, result.norms)
        assert quick.bound is None and quick.data_bound is None
    with pytest.raises(TypeError, match="bounds"):
        dg.lstm_jacobian_norms(cache, bounds="no")


@pytest.mark.parametrize("forget_gate", [True, False], ids=["forget", "original"])
def test_lstm_cell_jacobians_match_the_state_jacobian_blocks(rng, forget_gate):
    # full dC_t/dC_{t-1} = dC_t/dC_{t-1}|_h + dC_t/dh_{t-1} dh_{t-1}/dC_{t-1}, from NumPy's explicit blocks
    p, _, cache = scaled_lstm(rng, 6, 2, 3, 5, forget_gate, 3)
    H = 5
    J = dg.lstm_state_jacobians(cache)
    o = cache.gates[..., -H:]
    through_h = np.zeros((6, 2, H))
    through_h[1:] = o[:-1] * (1 - np.tanh(cache.cs[:-1]) ** 2)
    expected = J[..., H:, H:] + J[..., H:, :H] * through_h[..., None, :]
    result = dg.lstm_cell_jacobians(cache)
    np.testing.assert_allclose(result.full, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.full_norms, np.linalg.norm(expected, 2, axis=(-2, -1)), rtol=1e-12)
    np.testing.assert_array_equal(result.naive, np.diagonal(J[..., H:, H:], axis1=-2, axis2=-1))


def forward_cache(cell: str, p: dict, lengths=None, sequence: int | None = None):
    """The cache of the RNN or LSTM problem p, or of its one sequence `sequence` run alone to its length."""
    inputs = {k: p[k] for k in (RNN_INPUTS if cell == "rnn" else LSTM_INPUTS)}
    if sequence is not None:
        steps = lengths[sequence]
        inputs["x"] = inputs["x"][:steps, sequence : sequence + 1]
        for state in ("h0", "c0"):
            if state in inputs:
                inputs[state] = inputs[state][sequence : sequence + 1]
        lengths = None
    if cell == "rnn":
        return fb.rnn_forward(*inputs.values(), lengths=lengths)[1]
    return fb.lstm_forward(*inputs.values(), lengths=lengths)[2]


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequences_shorter_than_t_have_no_jacobian(rng, cell):
    lengths = np.array([7, 3, 5])
    p = (rnn_problem if cell == "rnn" else lstm_problem)(rng, T=7, B=3, D=2, H=4)
    cache = forward_cache(cell, p, lengths)
    norms = dg.rnn_jacobian_norms if cell == "rnn" else dg.lstm_jacobian_norms
    pairs = dg.rnn_jacobian_norm_pairs if cell == "rnn" else dg.lstm_jacobian_norm_pairs
    at_5 = norms(cache, 5)
    assert np.isnan(at_5.norms[:, 1]).all() and np.isnan(at_5.data_bound[:, 1]).all()
    for b in range(3):  # every sequence reaches step 3 and is measured there as if run alone
        alone = norms(forward_cache(cell, p, lengths, sequence=b), 3)
        np.testing.assert_allclose(norms(cache, 3).norms[:, b], alone.norms[:, 0], rtol=1e-12)
        if b != 1:
            np.testing.assert_allclose(at_5.norms[:, b], norms(forward_cache(cell, p, lengths, b), 5).norms[:, 0])
    all_pairs = pairs(cache)
    assert np.isnan(all_pairs.norms[4:, :, 1]).all() and not np.isnan(all_pairs.norms[3, :4, 1]).any()
    if cell == "lstm":
        cells = dg.lstm_cell_jacobians(cache)
        assert np.isnan(cells.full_norms[3:, 1]).all() and not np.isnan(cells.full_norms[:3, 1]).any()
