"""The LSTM with a projection of its output (``W_hr``, torch.nn.LSTM's ``proj_size``) through every layer: the
reference against finite differences, the core against the reference, its bits (forward-only, chunks, threads,
packed weights), the NumPy layers and the Stepper."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DTYPES,
    assert_close,
    assert_nontrivial,
    central_difference,
    max_relative_error,
    restore_threads,  # noqa: F401 - fixture
    rounded,
    uniform,
)

import fastbptt as fb
from fastbptt import reference as ref

SHAPES = [(1, 1, 1, 2, 1), (7, 3, 5, 9, 4), (13, 5, 4, 6, 11), (30, 16, 24, 40, 16)]  # T, B, D, H, P (P > H too)
NAMES = ("dx", "dh0", "dc0", "dW_x", "dW_h", "db", "dW_hr")


def problem(rng, T, B, D, H, P, forget_gate=True):
    k, G = 1 / np.sqrt(H), 4 if forget_gate else 3
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_x": uniform(rng, (D, G * H), k),
        "W_h": uniform(rng, (P, G * H), k),
        "b": uniform(rng, (G * H,), k),
        "W_hr": uniform(rng, (H, P), 2 * k),
        "h0": uniform(rng, (B, P), 0.5),
        "c0": uniform(rng, (B, H), 0.5),
        "dhs": rng.standard_normal((T, B, P)),
        "dc_T": rng.standard_normal((B, H)),
    }


def run(module, p, forget_gate=True, lengths=None, **options):
    hs, c_T, cache = module.lstm_forward(
        p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], forget_gate=forget_gate, lengths=lengths,
        W_hr=p["W_hr"], **options,
    )  # fmt: skip
    return hs, c_T, cache


@pytest.mark.parametrize("forget_gate", [True, False])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_the_reference_gradients_match_finite_differences(rng, forget_gate, with_lengths):
    p = problem(rng, 5, 3, 4, 6, 3, forget_gate)
    lengths = np.array([5, 2, 4]) if with_lengths else None

    def loss():
        hs, c_T, _ = run(ref, p, forget_gate, lengths)
        return float(np.sum(hs * p["dhs"]) + np.sum(c_T * p["dc_T"]))

    _, _, cache = run(ref, p, forget_gate, lengths)
    grads = ref.lstm_backward(cache, p["dhs"], p["dc_T"])
    assert isinstance(grads, fb.ProjectedLSTMGrads)
    for name, key in zip(NAMES, ("x", "h0", "c0", "W_x", "W_h", "b", "W_hr")):
        expected = central_difference(loss, p[key])
        assert max_relative_error(getattr(grads, name), expected) < 1e-7, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_the_core_matches_the_reference(rng, dtype, shape, with_lengths):
    T, B, D, H, P = shape
    low, exact = rounded(problem(rng, T, B, D, H, P), dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    hs, c_T, cache = run(fb, low, lengths=lengths)
    hs_ref, c_ref, cache_ref = run(ref, exact, lengths=lengths)
    assert hs.shape == (T, B, P) and c_T.shape == (B, H)
    if T * B > 10 and lengths is None:
        assert_nontrivial(hs, 0.5)
    assert_close(hs, hs_ref, dtype, "outputs", "hs")
    assert_close(c_T, c_ref, dtype, "outputs", "c_T")
    grads = fb.lstm_backward(cache, low["dhs"], low["dc_T"])
    expected = ref.lstm_backward(cache_ref, exact["dhs"], exact["dc_T"])
    for name in NAMES:
        assert_close(getattr(grads, name), getattr(expected, name), dtype, "grads", name)


def test_forward_only_chunks_threads_and_packed_weights_keep_the_bits(rng, restore_threads):  # noqa: F811
    low, _ = rounded(problem(rng, 24, 16, 12, 40, 16), np.float32)
    fb.set_num_threads(1)
    hs, c_T, cache = run(fb, low)
    grads = fb.lstm_backward(cache, low["dhs"], low["dc_T"])
    hs_inference, c_inference, _ = run(fb, low, inference=True)
    np.testing.assert_array_equal(hs_inference, hs)
    np.testing.assert_array_equal(c_inference, c_T)
    first, c_first, _ = run(fb, {**low, "x": low["x"][:11]})
    rest, c_rest, _ = run(fb, {**low, "x": low["x"][11:], "h0": first[-1], "c0": c_first})
    np.testing.assert_array_equal(np.concatenate([first, rest]), hs)
    np.testing.assert_array_equal(c_rest, c_T)
    fb.set_num_threads(2)
    hs_two, _, cache_two = run(fb, low)
    np.testing.assert_array_equal(hs_two, hs)
    two = fb.lstm_backward(cache_two, low["dhs"], low["dc_T"])
    for name in ("dx", "dh0", "dc0", "db"):  # the weight gradients' blocked products may round otherwise
        np.testing.assert_array_equal(getattr(two, name), getattr(grads, name))
    for name in ("dW_x", "dW_h", "dW_hr"):
        assert_close(getattr(two, name), getattr(grads, name), np.float32, "grads", name)
    fb.set_num_threads(1)
    cell = fb.kernels.cells.cell_class("lstm")("fast", proj_size=16)
    params = {name: low[name] for name in ("W_x", "W_h", "b", "W_hr")}
    hs_packed, c_packed, cache_packed = run(fb, low, packed=cell.pack(params))
    np.testing.assert_array_equal(hs_packed, hs)
    for name, value in zip(NAMES, fb.lstm_backward(cache_packed, low["dhs"], low["dc_T"])):
        np.testing.assert_array_equal(value, getattr(grads, name))
    stepper = fb.Stepper(cell, params)
    state, outputs = (low["h0"], low["c0"]), []
    for t in range(24):
        h, state, _ = stepper(low["x"][t], state, inference=t % 2 == 0)
        outputs.append(h)
    np.testing.assert_array_equal(np.stack(outputs), hs)


def test_what_does_not_fit_is_refused_by_name(rng):
    p = problem(rng, 3, 2, 4, 6, 3)
    with pytest.raises(ValueError, match=r"W_h: expected shape \[P, 4H\]"):
        run(fb, {**p, "W_h": p["W_h"][:2]})
    with pytest.raises(ValueError, match=r"h0: expected shape \[B, H\] = \(2, 3\)"):
        run(fb, {**p, "h0": np.zeros((2, 6))})
    with pytest.raises(ValueError, match="checkpoint: not supported together with W_hr"):
        run(fb, p, checkpoint=1)
    with pytest.raises(ValueError, match="W_hr"):
        run(fb, {**p, "W_hr": np.zeros((6, 0))})
    for diagnostic in ("lstm_jacobian_norms", "lstm_cell_jacobians"):
        with pytest.raises(ValueError, match="projection"):
            getattr(fb.diagnostics, diagnostic)(run(fb, p)[2])
    norms = fb.diagnostics.hidden_gradient_norms(run(fb, p)[2], p["dhs"], p["dc_T"])
    assert norms.per_sequence.shape == (4, 2)


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_a_stacked_bidirectional_layer_with_a_projection(rng, backend):
    layer = fb.LSTM(5, 8, proj_size=3, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, backend=backend)
    assert layer.params["W_h_l1_reverse"].shape == (3, 32) and layer.params["W_x_l1"].shape == (6, 32)
    assert layer.params["W_hr_l1"].shape == (8, 3) and layer.output_size == 3
    x = rng.standard_normal((6, 4, 5))
    state = (rng.standard_normal((4, 4, 3)) * 0.3, rng.standard_normal((4, 4, 8)) * 0.3)
    lengths = np.array([6, 3, 5, 1])
    outputs, (h_n, c_n) = layer.forward(x, state, lengths)
    assert outputs.shape == (6, 4, 6) and h_n.shape == (4, 4, 3) and c_n.shape == (4, 4, 8)
    d_outputs = rng.standard_normal(outputs.shape)
    layer.zero_grad()
    dx, (dh0, dc0) = layer.backward(d_outputs, (np.ones_like(h_n), np.ones_like(c_n)))

    def loss():
        out, (h, c) = layer.forward(x, state, lengths)
        return float(np.sum(out * d_outputs) + h.sum() + c.sum())

    assert max_relative_error(dx, central_difference(loss, x)) < 1e-6
    assert (
        max_relative_error(layer.grads["W_hr_l1_reverse"], central_difference(loss, layer.params["W_hr_l1_reverse"]))
        < 1e-6
    )
    assert max_relative_error(dh0, central_difference(loss, state[0])) < 1e-6
