"""Shared fixtures and the one tolerance table of the test suite (DESIGN.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest

# Fast path vs the float64 reference. float64: rtol 1e-10. float32 (computed in float32, compared with the float64
# reference on the same float32-rounded inputs): 1e-5 for outputs, 1e-4 for gradients, relative and absolute.
TOL = {
    np.float64: {"outputs": 1e-10, "grads": 1e-10},
    np.float32: {"outputs": 1e-5, "grads": 1e-4},
}

# T, B, D, H: T=1, B=1, sizes that are not multiples of 8, D != H, and one larger case.
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 7, 13),
    (7, 1, 13, 3),
    (13, 17, 3, 7),
    (17, 7, 17, 13),
    (40, 16, 48, 72),
]

DTYPES = [np.float64, np.float32]

# The arrays each forward takes, in its order, by their names in the problems below.
RNN_INPUTS = ["x", "W_xh", "W_hh", "b_h", "h0"]
LSTM_INPUTS = ["x", "W_x", "W_h", "b", "h0", "c0"]
GRU_INPUTS = ["x", "W_x", "W_h", "b", "b_hn", "h0"]


def assert_close(actual, expected, dtype, kind: str, name: str = "") -> None:
    """Fast result vs float64 reference within TOL[dtype][kind].

    The absolute part of the tolerance scales with the largest entry of ``expected``: a gradient entry that is a
    sum of cancelling terms can be far smaller than its rounding error, so a purely relative test of it is
    meaningless. For float32 the absolute part is the DESIGN.md value itself (1e-5 / 1e-4) times that scale.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    tol = TOL[dtype][kind]
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=name)


def assert_nontrivial(hs: np.ndarray, min_active: float = 0.5) -> None:
    """Guards against a test that passes because everything is zero or saturated (relu zeroes about half)."""
    assert np.mean(np.abs(hs) > 1e-3) > min_active, "outputs are mostly zero: the test would pass trivially"
    assert np.mean(np.abs(hs) > 0.999) < 0.5, "outputs are mostly saturated: gradients would be trivially small"


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture
def restore_threads():
    """Gives the core's thread count back after the test."""
    import fastbptt as fb

    before = fb.get_num_threads()
    yield
    fb.set_num_threads(before)


def uniform(rng, shape, scale):
    return rng.uniform(-scale, scale, size=shape)


def rnn_problem(rng, T, B, D, H):
    """float64 inputs, weights (PyTorch's default scale 1/sqrt(H)), initial state and upstream gradient."""
    k = 1 / np.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_xh": uniform(rng, (D, H), k),
        "W_hh": uniform(rng, (H, H), k),
        "b_h": uniform(rng, (H,), k),
        "h0": uniform(rng, (B, H), 0.5),
        "dhs": rng.standard_normal((T, B, H)),
    }


def lstm_problem(rng, T, B, D, H, forget_gate=True):
    k = 1 / np.sqrt(H)
    G = 4 if forget_gate else 3
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_x": uniform(rng, (D, G * H), k),
        "W_h": uniform(rng, (H, G * H), k),
        "b": uniform(rng, (G * H,), k),
        "h0": uniform(rng, (B, H), 0.5),
        "c0": uniform(rng, (B, H), 0.5),
        "dhs": rng.standard_normal((T, B, H)),
        "dc_T": rng.standard_normal((B, H)),
    }


def gru_problem(rng, T, B, D, H):
    k = 1 / np.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_x": uniform(rng, (D, 3 * H), k),
        "W_h": uniform(rng, (H, 3 * H), k),
        "b": uniform(rng, (3 * H,), k),
        "b_hn": uniform(rng, (H,), k),
        "h0": uniform(rng, (B, H), 0.5),
        "dhs": rng.standard_normal((T, B, H)),
    }


def rounded(problem, dtype):
    """The problem in ``dtype`` and the same values back in float64 (so the reference sees identical inputs)."""
    low = {name: np.asarray(value, dtype=dtype) for name, value in problem.items()}
    exact = {name: value.astype(np.float64) for name, value in low.items()}
    return low, exact


def central_difference(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d array by central differences, perturbing ``array`` in place and restoring it."""
    grad = np.empty_like(array)
    flat = array.reshape(-1)
    g = grad.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = f()
        flat[k] = saved - eps
        down = f()
        flat[k] = saved
        g[k] = (up - down) / (2 * eps)
    return grad


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Norm-wise relative error ``max|a - b| / max(max|a|, max|b|)``.

    Element-wise relative error is not usable against finite differences: their rounding error (about
    1e-16 * |L| / eps absolute) swamps entries of a gradient that are near zero.
    """
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    assert scale > 0, "both gradients are zero: the check would pass trivially"
    return float(np.max(np.abs(a - b))) / scale


def torch_twins(pair, *args, dtype, **options):
    """``(ours, theirs)``: a fastbptt.torch module and its torch.nn class's module with one state_dict, ours in
    ``dtype`` and theirs in float64. ``pair`` is ``(our class, torch.nn's class, constructor options)``, ``args``
    the sizes. torch is imported here: the suite runs without it."""
    import torch

    ours_cls, theirs_cls, extra = pair
    torch.manual_seed(0)
    ours = ours_cls(*args, dtype=dtype, **extra, **options)
    theirs = theirs_cls(*args, dtype=torch.float64, **extra, **options)
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, theirs
