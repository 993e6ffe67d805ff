"""The softmax / cross-entropy output layer: finite differences, fast vs reference, stability, reductions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, SHAPES, TOL, assert_close, central_difference, max_relative_error, rounded

import fastbptt as fb
from fastbptt import reference as ref

K_CLASSES = [1, 2, 11]


def output_problem(rng, T, B, H, K):
    return {
        "hs": np.tanh(rng.standard_normal((T, B, H))),
        "W_yh": rng.uniform(-1, 1, (H, K)),
        "b_y": rng.uniform(-1, 1, (K,)),
        "targets": rng.integers(0, K, size=(T, B)),
    }


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reference_gradients_match_central_differences(rng, reduction):
    p = output_problem(rng, T=3, B=4, H=5, K=6)
    loss, grads = ref.softmax_cross_entropy(**p, reduction=reduction)

    def f():
        return ref.softmax_cross_entropy(**p, reduction=reduction)[0]

    for name, grad in (("hs", grads.dhs), ("W_yh", grads.dW_yh), ("b_y", grads.db_y)):
        err = max_relative_error(grad, central_difference(f, p[name]))
        assert err <= 1e-7, f"d{name} ({reduction}): relative error {err:.2e}"


def test_reference_equals_the_definition(rng):
    p = output_problem(rng, T=3, B=2, H=4, K=5)
    o = p["hs"] @ p["W_yh"] + p["b_y"]
    softmax = np.exp(o) / np.exp(o).sum(axis=-1, keepdims=True)
    y = np.eye(5)[p["targets"]]
    loss, grads = ref.softmax_cross_entropy(**p)
    assert loss == pytest.approx(-np.sum(y * np.log(softmax)), rel=1e-13)
    # The spec: dL/dW_yh = sum_t h_tᵀ (ŷ_t - y_t), dL/db_y = sum_t (ŷ_t - y_t).
    np.testing.assert_allclose(grads.dW_yh, np.einsum("tbh,tbk->hk", p["hs"], softmax - y), rtol=1e-12)
    np.testing.assert_allclose(grads.db_y, (softmax - y).sum(axis=(0, 1)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("K", K_CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_matches_reference(rng, shape, dtype, K, reduction):
    T, B, _, H = shape
    p = output_problem(rng, T, B, H, K)
    targets = p.pop("targets")
    low, exact = rounded(p, dtype)
    loss, grads = fb.softmax_cross_entropy(**low, targets=targets, reduction=reduction)
    loss_ref, grads_ref = ref.softmax_cross_entropy(**exact, targets=targets, reduction=reduction)
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_ref, rel=TOL[dtype]["outputs"])
    for name in grads._fields:
        assert getattr(grads, name).dtype == dtype
        assert_close(getattr(grads, name), getattr(grads_ref, name), dtype, "grads", name)


def test_mean_is_sum_over_number_of_terms(rng):
    p = output_problem(rng, T=6, B=5, H=4, K=3)
    total, g_sum = fb.softmax_cross_entropy(**p, reduction="sum")
    mean, g_mean = fb.softmax_cross_entropy(**p, reduction="mean")
    assert mean == pytest.approx(total / 30, rel=1e-14)
    np.testing.assert_allclose(g_mean.dW_yh, g_sum.dW_yh / 30, rtol=1e-13)


@pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_do_not_overflow(module, dtype):
    # Logits of +-1e4 overflow exp() in both dtypes; the log-sum-exp must still give the exact answer.
    hs = np.array([[[1.0, -1.0]]], dtype=dtype)
    W_yh = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    b_y = np.zeros(3, dtype=dtype)
    loss, grads = module.softmax_cross_entropy(hs, W_yh, b_y, np.array([[1]]))
    assert loss == pytest.approx(2e4, rel=1e-6)  # logsumexp = 1e4, target logit = -1e4
    np.testing.assert_allclose(grads.dhs[0, 0], [2e4, 0.0], rtol=1e-6)
    assert np.all(np.isfinite(grads.dW_yh))


@pytest.mark.parametrize("with_ignored", [False, True], ids=["all-counted", "some-ignored"])
def test_matches_torch_cross_entropy(rng, with_ignored):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    p = output_problem(rng, T=5, B=3, H=4, K=7)
    if with_ignored:
        p["targets"][1:3] = -100  # torch's default ignore_index, and ours
    for reduction in ("sum", "mean"):
        loss, grads = fb.softmax_cross_entropy(**p, reduction=reduction)
        hs = torch.tensor(p["hs"], requires_grad=True)
        logits = hs @ torch.tensor(p["W_yh"]) + torch.tensor(p["b_y"])
        expected = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 7), torch.tensor(p["targets"]).reshape(-1), reduction=reduction
        )
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(grads.dhs, hs.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ignored_targets_add_nothing(rng, dtype, reduction):
    p = output_problem(rng, T=7, B=5, H=6, K=4)
    targets = p.pop("targets")
    targets[rng.random(targets.shape) < 0.4] = -1
    low, exact = rounded(p, dtype)
    loss, grads = fb.softmax_cross_entropy(**low, targets=targets, reduction=reduction, ignore_index=-1)
    loss_ref, grads_ref = ref.softmax_cross_entropy(**exact, targets=targets, reduction=reduction, ignore_index=-1)
    assert loss == pytest.approx(loss_ref, rel=TOL[dtype]["outputs"])
    for name in grads._fields:
        assert_close(getattr(grads, name), getattr(grads_ref, name), dtype, "grads", name)
    assert np.all(grads.dhs[targets == -1] == 0)
    # The same as the loss over the counted rows alone.
    kept = targets != -1
    only = ref.softmax_cross_entropy(
        exact["hs"][kept][None], exact["W_yh"], exact["b_y"], targets[kept][None], reduction=reduction
    )[0]
    assert loss_ref == pytest.approx(only, rel=1e-12)


@pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
def test_mean_over_nothing_is_nan_with_zero_gradients(rng, module):
    p = output_problem(rng, T=2, B=3, H=4, K=5)
    p["targets"][:] = -100
    loss, grads = module.softmax_cross_entropy(**p, reduction="mean")
    assert np.isnan(loss)
    assert all(np.all(g == 0) for g in grads)
    assert module.softmax_cross_entropy(**p, reduction="sum")[0] == 0.0


@pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
def test_ignore_index_must_not_be_a_class(rng, module):
    p = output_problem(rng, T=2, B=3, H=4, K=5)
    with pytest.raises(ValueError, match=r"ignore_index: must lie outside the class indices 0 \.\. 4, got 2"):
        module.softmax_cross_entropy(**p, ignore_index=2)
