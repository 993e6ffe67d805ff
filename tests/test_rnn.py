"""The correctness triangle for the plain RNN: reference vs finite differences, fast path vs reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DTYPES,
    SHAPES,
    assert_close,
    assert_nontrivial,
    central_difference,
    max_relative_error,
    rnn_problem,
    rounded,
)

import fastbptt as fb
from fastbptt import reference as ref

ACTIVATIONS = ["tanh", "relu", "sigmoid"]
PARAMS = ["x", "h0", "W_xh", "W_hh", "b_h"]
GRAD_OF = {"x": "dx", "h0": "dh0", "W_xh": "dW_xh", "W_hh": "dW_hh", "b_h": "db_h"}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_gradients_match_central_differences(rng, activation):
    p = rnn_problem(rng, T=4, B=2, D=3, H=5)
    inputs = {name: p[name] for name in PARAMS}

    def loss():  # L = sum_t <dhs_t, h_t>, so dL/dh_t = dhs_t
        hs, _ = ref.rnn_forward(**inputs, activation=activation)
        return float(np.sum(p["dhs"] * hs))

    hs, cache = ref.rnn_forward(**inputs, activation=activation)
    if activation == "relu":  # finite differences are meaningless across a kink of relu
        pre = [
            inputs["x"][t] @ inputs["W_xh"] + (hs[t - 1] if t else inputs["h0"]) @ inputs["W_hh"] + inputs["b_h"]
            for t in range(hs.shape[0])
        ]
        assert np.min(np.abs(pre)) > 1e-4, "a pre-activation lies within eps of the relu kink"
    grads = ref.rnn_backward(cache, p["dhs"])
    for name in PARAMS:
        numeric = central_difference(loss, inputs[name])
        err = max_relative_error(getattr(grads, GRAD_OF[name]), numeric)
        assert err <= 1e-7, f"{GRAD_OF[name]} ({activation}): relative error {err:.2e}"


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_matches_reference(rng, shape, dtype, activation):
    low, exact = rounded(rnn_problem(rng, *shape), dtype)
    hs, cache = fb.rnn_forward(low["x"], low["W_xh"], low["W_hh"], low["b_h"], low["h0"], activation=activation)
    assert hs.dtype == dtype
    grads = fb.rnn_backward(cache, low["dhs"])
    hs_ref, cache_ref = ref.rnn_forward(
        exact["x"], exact["W_xh"], exact["W_hh"], exact["b_h"], exact["h0"], activation=activation
    )
    grads_ref = ref.rnn_backward(cache_ref, exact["dhs"])
    if shape[0] * shape[1] * shape[3] >= 20:
        assert_nontrivial(hs_ref, min_active=0.2 if activation == "relu" else 0.5)
    assert_close(hs, hs_ref, dtype, "outputs", "hs")
    for name in grads._fields:
        assert getattr(grads, name).dtype == dtype
        assert_close(getattr(grads, name), getattr(grads_ref, name), dtype, "grads", name)


def test_h0_defaults_to_zeros(rng):
    p = rnn_problem(rng, 5, 3, 4, 6)
    hs, _ = fb.rnn_forward(p["x"], p["W_xh"], p["W_hh"], p["b_h"])
    hs_zero, _ = fb.rnn_forward(p["x"], p["W_xh"], p["W_hh"], p["b_h"], np.zeros((3, 6)))
    np.testing.assert_array_equal(hs, hs_zero)


def test_caches_are_interchangeable(rng):
    p = rnn_problem(rng, 6, 4, 5, 7)
    inputs = {name: p[name] for name in PARAMS}
    _, fast_cache = fb.rnn_forward(**inputs)
    _, ref_cache = ref.rnn_forward(**inputs)
    from_fast = ref.rnn_backward(fast_cache, p["dhs"])
    from_ref = fb.rnn_backward(ref_cache, p["dhs"])
    for name in from_fast._fields:
        assert_close(getattr(from_ref, name), getattr(from_fast, name), np.float64, "grads", name)


def test_final_state_is_last_step(rng):
    p = rnn_problem(rng, 9, 2, 3, 4)
    hs, _ = fb.rnn_forward(p["x"], p["W_xh"], p["W_hh"], p["b_h"], p["h0"])
    # Running the last step alone from hs[-2] must give hs[-1]: the state really is carried.
    last, _ = fb.rnn_forward(p["x"][-1:], p["W_xh"], p["W_hh"], p["b_h"], hs[-2])
    np.testing.assert_allclose(last[0], hs[-1], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_results_are_deterministic(rng, activation):
    p = rnn_problem(rng, 20, 8, 16, 24)
    inputs = {name: p[name] for name in PARAMS}
    first_hs, first_cache = fb.rnn_forward(**inputs, activation=activation)
    first = fb.rnn_backward(first_cache, p["dhs"])
    for _ in range(3):
        hs, cache = fb.rnn_forward(**inputs, activation=activation)
        np.testing.assert_array_equal(hs, first_hs)
        for a, b in zip(fb.rnn_backward(cache, p["dhs"]), first):
            np.testing.assert_array_equal(a, b)


def test_float64_tanh_within_four_ulp_of_numpy(rng):
    """The core's double tanh (a series near 0, exp beyond 0.4) against NumPy's, element by element: with
    W_xh = I and W_hh = 0 the pre-activations are the inputs exactly, so hs = tanh(x) as the core computes it."""
    H = 257  # a partial packet at the end of each row
    parts = [
        rng.uniform(-0.4, 0.4, 20 * H),
        rng.uniform(-1.0, 1.0, 20 * H),
        rng.uniform(-25.0, 25.0, 20 * H),
        np.geomspace(1e-300, 1e-3, 5 * H) * rng.choice([-1.0, 1.0], 5 * H),
        np.nextafter(0.4, [0.0, 1.0] * (5 * H // 2) + [0.0] * (5 * H % 2)),
    ]
    x = np.concatenate(parts).reshape(1, -1, H)
    B = x.shape[1]
    hs, _ = fb.rnn_forward(x, np.eye(H), np.zeros((H, H)), np.zeros(H), activation="tanh")
    expected = np.tanh(x)
    assert np.all(np.sign(hs) == np.sign(expected)) and B > 60
    ulps = np.abs(hs - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 4.0, f"worst {ulps.max():.1f} ulp at x = {x.flat[np.argmax(ulps)]!r}"
