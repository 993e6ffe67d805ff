"""The correctness triangle for the GRU kernels, chunking, and torch.nn.GRU equivalence of the converters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DTYPES,
    GRU_INPUTS,
    SHAPES,
    assert_close,
    assert_nontrivial,
    central_difference,
    gru_problem,
    max_relative_error,
    rounded,
)

import fastbptt as fb
from fastbptt import reference as ref

INPUTS = GRU_INPUTS
GRAD_OF = {"x": "dx", "W_x": "dW_x", "W_h": "dW_h", "b": "db", "b_hn": "db_hn", "h0": "dh0"}


@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "lengths"])
def test_reference_gradients_match_central_differences(rng, lengths):
    p = gru_problem(rng, T=4, B=3, D=3, H=5)
    inputs = {name: p[name] for name in INPUTS}

    def loss():
        hs, _ = ref.gru_forward(**inputs, lengths=lengths)
        return float(np.sum(p["dhs"] * hs))

    _, cache = ref.gru_forward(**inputs, lengths=lengths)
    grads = ref.gru_backward(cache, p["dhs"])
    for name in INPUTS:
        err = max_relative_error(getattr(grads, GRAD_OF[name]), central_difference(loss, inputs[name]))
        assert err <= 1e-7, f"{GRAD_OF[name]}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_matches_reference(rng, shape, dtype):
    low, exact = rounded(gru_problem(rng, *shape), dtype)
    hs, cache = fb.gru_forward(*(low[name] for name in INPUTS))
    grads = fb.gru_backward(cache, low["dhs"])
    hs_ref, cache_ref = ref.gru_forward(*(exact[name] for name in INPUTS))
    grads_ref = ref.gru_backward(cache_ref, exact["dhs"])
    if hs.size >= 20:
        assert_nontrivial(hs_ref)
    assert hs.dtype == dtype
    assert_close(hs, hs_ref, dtype, "outputs", "hs")
    assert_close(cache.gates, cache_ref.gates, dtype, "outputs", "gates")
    assert_close(cache.hn, cache_ref.hn, dtype, "outputs", "hn")
    for name in grads._fields:
        assert getattr(grads, name).dtype == dtype
        assert_close(getattr(grads, name), getattr(grads_ref, name), dtype, "grads", name)


def test_caches_are_interchangeable(rng):
    p = gru_problem(rng, 6, 4, 5, 7)
    _, fast_cache = fb.gru_forward(*(p[name] for name in INPUTS), lengths=[6, 1, 3, 3])
    _, ref_cache = ref.gru_forward(*(p[name] for name in INPUTS), lengths=[6, 1, 3, 3])
    for mine, theirs in ((fb.gru_backward(ref_cache, p["dhs"]), ref.gru_backward(fast_cache, p["dhs"])),):
        for name in mine._fields:
            np.testing.assert_allclose(getattr(mine, name), getattr(theirs, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12, 3, 5, 7), (9, 1, 13, 33), (10, 8, 300, 24)], ids=str)
def test_chunks_with_carried_state_equal_one_run_bit_for_bit(rng, shape, dtype):
    low, _ = rounded(gru_problem(rng, *shape), dtype)
    weights = [low[name] for name in ("W_x", "W_h", "b", "b_hn")]
    hs, _ = fb.gru_forward(low["x"], *weights, low["h0"])
    for split in range(1, shape[0]):
        hs_1, _ = fb.gru_forward(low["x"][:split], *weights, low["h0"])
        hs_2, _ = fb.gru_forward(low["x"][split:], *weights, hs_1[-1])
        np.testing.assert_array_equal(np.concatenate([hs_1, hs_2]), hs, err_msg=f"split at {split}")


def test_update_gate_one_keeps_the_state(rng):
    # z = 1 everywhere (huge b_z): h_t = h_{t-1}, and the whole gradient reaches h0 unchanged.
    p = gru_problem(rng, 5, 2, 3, 4)
    p["b"][4:8] = 1e3
    hs, cache = fb.gru_forward(*(p[name] for name in INPUTS))
    np.testing.assert_array_equal(hs, np.broadcast_to(p["h0"], hs.shape))
    grads = fb.gru_backward(cache, p["dhs"])
    np.testing.assert_allclose(grads.dh0, p["dhs"].sum(axis=0), rtol=1e-14)


def test_converters_round_trip(rng):
    D, H = 3, 4
    weight_ih, weight_hh = rng.standard_normal((3 * H, D)), rng.standard_normal((3 * H, H))
    bias_ih, bias_hh = rng.standard_normal(3 * H), rng.standard_normal(3 * H)
    W_x, W_h, b, b_hn = fb.gru_weights_from_torch(weight_ih, weight_hh, bias_ih, bias_hh)
    np.testing.assert_array_equal(W_x, weight_ih.T)
    np.testing.assert_array_equal(W_h, weight_hh.T)
    np.testing.assert_array_equal(b[: 2 * H], bias_ih[: 2 * H] + bias_hh[: 2 * H])
    np.testing.assert_array_equal(b[2 * H :], bias_ih[2 * H :])
    np.testing.assert_array_equal(b_hn, bias_hh[2 * H :])
    back = fb.gru_weights_to_torch(W_x, W_h, b, b_hn)
    np.testing.assert_array_equal(back[0], weight_ih)
    np.testing.assert_array_equal(back[1], weight_hh)
    again = fb.gru_weights_from_torch(*back)
    for mine, theirs in zip(again, (W_x, W_h, b, b_hn)):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match=r"weight_hh: expected shape \[3H, H\]"):
        fb.gru_weights_from_torch(weight_ih, weight_hh[:-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_nn_gru(rng, dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for this test)")
    T, B, D, H = 6, 3, 4, 5
    gru = torch.nn.GRU(D, H, dtype=torch.float64)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H))
    upstream = rng.standard_normal((T, B, H))
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0[None], requires_grad=True)
    out, _ = gru(xt, h0t)
    (out * torch.tensor(upstream)).sum().backward()
    params = [t.detach().numpy() for t in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)]
    W_x, W_h, b, b_hn = (a.astype(dtype) for a in fb.gru_weights_from_torch(*params))
    hs, cache = fb.gru_forward(x.astype(dtype), W_x, W_h, b, b_hn, h0.astype(dtype))
    g = fb.gru_backward(cache, upstream.astype(dtype))
    assert_close(hs, out.detach().numpy(), dtype, "outputs", "hs")
    assert_close(g.dx, xt.grad.numpy(), dtype, "grads", "dx")
    assert_close(g.dh0, h0t.grad.numpy()[0], dtype, "grads", "dh0")
    assert_close(g.dW_x, gru.weight_ih_l0.grad.numpy().T, dtype, "grads", "dW_x")
    assert_close(g.dW_h, gru.weight_hh_l0.grad.numpy().T, dtype, "grads", "dW_h")
    assert_close(g.db, gru.bias_ih_l0.grad.numpy(), dtype, "grads", "db")
    assert_close(g.db_hn, gru.bias_hh_l0.grad.numpy()[2 * H :], dtype, "grads", "db_hn")
