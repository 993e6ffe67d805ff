"""The correctness triangle for both LSTM cells, the dc_T path, chunking and torch.nn.LSTM equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DTYPES,
    LSTM_INPUTS,
    SHAPES,
    assert_close,
    assert_nontrivial,
    central_difference,
    lstm_problem,
    max_relative_error,
    rounded,
)

import fastbptt as fb
from fastbptt import _core
from fastbptt import reference as ref

INPUTS = LSTM_INPUTS
GRAD_OF = {"x": "dx", "W_x": "dW_x", "W_h": "dW_h", "b": "db", "h0": "dh0", "c0": "dc0"}
CELLS = [True, False]


def cell_id(forget_gate):
    return "forget" if forget_gate else "original"


@pytest.mark.parametrize("forget_gate", CELLS, ids=cell_id)
def test_reference_gradients_match_central_differences(rng, forget_gate):
    p = lstm_problem(rng, T=4, B=2, D=3, H=5, forget_gate=forget_gate)
    inputs = {name: p[name] for name in INPUTS}

    def loss():  # L = sum_t <dhs_t, h_t> + <dc_T, C_T>: exercises both upstream gradients
        hs, c_T, _ = ref.lstm_forward(**inputs, forget_gate=forget_gate)
        return float(np.sum(p["dhs"] * hs) + np.sum(p["dc_T"] * c_T))

    _, _, cache = ref.lstm_forward(**inputs, forget_gate=forget_gate)
    grads = ref.lstm_backward(cache, p["dhs"], p["dc_T"])
    for name in INPUTS:
        err = max_relative_error(getattr(grads, GRAD_OF[name]), central_difference(loss, inputs[name]))
        assert err <= 1e-7, f"{GRAD_OF[name]} ({cell_id(forget_gate)}): relative error {err:.2e}"


@pytest.mark.parametrize("with_dc_T", [True, False], ids=["dc_T", "no-dc_T"])
@pytest.mark.parametrize("forget_gate", CELLS, ids=cell_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_matches_reference(rng, shape, dtype, forget_gate, with_dc_T):
    low, exact = rounded(lstm_problem(rng, *shape, forget_gate=forget_gate), dtype)
    hs, c_T, cache = fb.lstm_forward(*(low[name] for name in INPUTS), forget_gate=forget_gate)
    grads = fb.lstm_backward(cache, low["dhs"], low["dc_T"] if with_dc_T else None)
    hs_ref, c_T_ref, cache_ref = ref.lstm_forward(*(exact[name] for name in INPUTS), forget_gate=forget_gate)
    grads_ref = ref.lstm_backward(cache_ref, exact["dhs"], exact["dc_T"] if with_dc_T else None)
    if hs.size >= 20:
        assert_nontrivial(hs_ref)
    assert hs.dtype == dtype and c_T.dtype == dtype
    assert_close(hs, hs_ref, dtype, "outputs", "hs")
    assert_close(c_T, c_T_ref, dtype, "outputs", "c_T")
    for name in grads._fields:
        assert getattr(grads, name).dtype == dtype
        assert_close(getattr(grads, name), getattr(grads_ref, name), dtype, "grads", name)


@pytest.mark.parametrize("forget_gate", CELLS, ids=cell_id)
def test_dc_T_flows_through_the_cell_and_the_gates(rng, forget_gate):
    p = lstm_problem(rng, 5, 3, 4, 6, forget_gate)
    _, _, cache = fb.lstm_forward(*(p[name] for name in INPUTS), forget_gate=forget_gate)
    zeros = np.zeros_like(p["dhs"])
    assert all(np.all(g == 0) for g in fb.lstm_backward(cache, zeros))
    assert np.any(fb.lstm_backward(cache, zeros, p["dc_T"]).dW_h != 0)

    # Without recurrent weights the gates do not depend on C_{t-1}, so dC_t/dC_{t-1} is diag(f_t) (identity for
    # the original cell): dc0 = dc_T * f_T * ... * f_1. With W_h != 0 it is not (the spec's full derivative).
    p["W_h"] = np.zeros_like(p["W_h"])
    _, _, cache = fb.lstm_forward(*(p[name] for name in INPUTS), forget_gate=forget_gate)
    dc0 = fb.lstm_backward(cache, zeros, p["dc_T"]).dc0
    if forget_gate:
        expected = p["dc_T"] * np.prod(cache.gates[..., 6:12], axis=0)
        np.testing.assert_allclose(dc0, expected, rtol=1e-13)
    else:
        np.testing.assert_array_equal(dc0, p["dc_T"])


@pytest.mark.parametrize("forget_gate", CELLS, ids=cell_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12, 3, 5, 7), (9, 1, 13, 33), (10, 8, 300, 24)], ids=str)
def test_chunks_with_carried_state_equal_one_run_bit_for_bit(rng, shape, dtype, forget_gate):
    low, _ = rounded(lstm_problem(rng, *shape, forget_gate=forget_gate), dtype)
    x, W_x, W_h, b = low["x"], low["W_x"], low["W_h"], low["b"]
    hs, c_T, _ = fb.lstm_forward(x, W_x, W_h, b, low["h0"], low["c0"], forget_gate=forget_gate)
    for split in range(1, shape[0]):
        hs_1, c_1, _ = fb.lstm_forward(x[:split], W_x, W_h, b, low["h0"], low["c0"], forget_gate=forget_gate)
        hs_2, c_2, _ = fb.lstm_forward(x[split:], W_x, W_h, b, hs_1[-1], c_1, forget_gate=forget_gate)
        np.testing.assert_array_equal(np.concatenate([hs_1, hs_2]), hs, err_msg=f"split at {split}")
        np.testing.assert_array_equal(c_2, c_T, err_msg=f"split at {split}")


def test_original_cell_has_no_forget_gate_parameters(rng):
    p = lstm_problem(rng, 3, 2, 4, 5, forget_gate=False)
    assert p["W_x"].shape == (4, 15)
    hs, c_T, cache = fb.lstm_forward(*(p[name] for name in INPUTS), forget_gate=False)
    assert cache.gates.shape == (3, 2, 15)
    # C_t - C_{t-1} = i_t g_t exactly as stored: no forget gate scales the old cell state.
    i, g = cache.gates[..., :5], cache.gates[..., 5:10]
    previous = np.concatenate([p["c0"][None], cache.cs[:-1]])
    np.testing.assert_allclose(cache.cs - previous, i * g, rtol=1e-12, atol=1e-15)


def test_converters_round_trip(rng):
    D, H = 3, 4
    weight_ih, weight_hh = rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H))
    bias_ih, bias_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    W_x, W_h, b = fb.lstm_weights_from_torch(weight_ih, weight_hh, bias_ih, bias_hh)
    np.testing.assert_array_equal(W_x, weight_ih.T)
    np.testing.assert_array_equal(W_h, weight_hh.T)
    np.testing.assert_array_equal(b, bias_ih + bias_hh)
    back = fb.lstm_weights_to_torch(W_x, W_h, b)
    np.testing.assert_array_equal(back[0], weight_ih)
    np.testing.assert_array_equal(back[1], weight_hh)
    np.testing.assert_array_equal(back[2], b)
    np.testing.assert_array_equal(back[3], np.zeros(4 * H))
    assert ref.lstm_weights_from_torch is fb.lstm_weights_from_torch
    no_bias = fb.lstm_weights_from_torch(weight_ih, weight_hh)
    np.testing.assert_array_equal(no_bias[2], np.zeros(4 * H))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 3, 5, 4), (13, 17, 7, 13)], ids=str)
def test_matches_torch_lstm(rng, shape):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    T, B, D, H = shape
    module = torch.nn.LSTM(D, H).double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, parameter.shape)))
    W_x, W_h, b = fb.lstm_weights_from_torch(
        *(
            getattr(module, name).detach().numpy()
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        )
    )
    p = lstm_problem(rng, T, B, D, H)
    x = torch.tensor(p["x"], requires_grad=True)
    h0 = torch.tensor(p["h0"][None], requires_grad=True)
    c0 = torch.tensor(p["c0"][None], requires_grad=True)
    out, (h_n, c_n) = module(x, (h0, c0))
    (torch.sum(out * torch.tensor(p["dhs"])) + torch.sum(c_n * torch.tensor(p["dc_T"]))).backward()

    hs, c_T, cache = fb.lstm_forward(p["x"], W_x, W_h, b, p["h0"], p["c0"])
    grads = fb.lstm_backward(cache, p["dhs"], p["dc_T"])
    weight_ih, weight_hh, bias_ih, _ = fb.lstm_weights_to_torch(grads.dW_x, grads.dW_h, grads.db)

    def check(actual, expected, name):
        np.testing.assert_allclose(actual, expected.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)

    check(hs, out, "output")
    check(hs[-1], h_n[0], "h_n")
    check(c_T, c_n[0], "c_n")
    check(grads.dx, x.grad, "dx")
    check(grads.dh0, h0.grad[0], "dh0")
    check(grads.dc0, c0.grad[0], "dc0")
    check(weight_ih, module.weight_ih_l0.grad, "d weight_ih")
    check(weight_hh, module.weight_hh_l0.grad, "d weight_hh")
    check(bias_ih, module.bias_ih_l0.grad, "d bias_ih")
    check(bias_ih, module.bias_hh_l0.grad, "d bias_hh")  # both biases get dL/db


def test_workspace_bytes_counts_saved_activations():
    T, B, D, H = 10, 4, 3, 5
    lstm = fb.workspace_bytes("lstm", T, B, D, H, np.float32)
    original = fb.workspace_bytes("lstm", T, B, D, H, np.float32, forget_gate=False)
    rnn = fb.workspace_bytes("rnn", T, B, D, H, np.float64)
    assert lstm > original > 0
    # The forward keeps T*B*(G*H + 2H) scalars for the LSTM (DESIGN.md section 4), so the total is at least that.
    assert lstm >= T * B * (4 * H + 2 * H) * 4
    assert lstm < fb.workspace_bytes("lstm", T, B, D, H, np.float64) <= 2 * lstm
    assert rnn >= 2 * T * B * H * 8
    # The arrays a forward+backward call really returns and caches fit within the estimate.
    rng = np.random.default_rng(0)
    p = lstm_problem(rng, T, B, D, H)
    hs, c_T, cache = fb.lstm_forward(*(p[name].astype(np.float32) for name in INPUTS))
    grads = fb.lstm_backward(cache, p["dhs"].astype(np.float32))
    held = hs.nbytes + c_T.nbytes + cache.gates.nbytes + cache.cs.nbytes + sum(g.nbytes for g in grads)
    assert held <= lstm


def test_packed_weights_are_sized_by_the_core():
    """workspace_bytes counts the packed weights as the core allocates them (each gate block padded to whole SIMD
    packets of this build), asked through _core.packed_weights_scalars rather than recomputed."""
    H = 19  # not a multiple of a packet: every gate block gets its own padding
    for dtype in (np.float32, np.float64):
        grouped = _core.packed_weights_scalars(5, 4 * H, 4, np.dtype(dtype))
        whole = _core.packed_weights_scalars(5, 4 * H, 1, np.dtype(dtype))
        assert grouped > whole > 5 * 4 * H  # each of the 4 blocks pads its 19 columns, more than 76 padded at once
        slack = _core.packed_weights_scalars(0, 4 * H, 4, np.dtype(dtype))
        assert _core.packed_weights_scalars(10, 4 * H, 4, np.dtype(dtype)) - slack == 2 * (grouped - slack)
    with pytest.raises(TypeError, match="dtype"):
        _core.packed_weights_scalars(5, 4 * H, 4, np.dtype(np.int32))
    with pytest.raises(ValueError, match="groups"):
        _core.packed_weights_scalars(5, 4 * H, 3, np.dtype(np.float32))
