"""The layer-normalised LSTM through every layer: the reference against finite differences, the core against the
reference and its bits, the NumPy layer, and fastbptt.torch.LayerNormLSTM against a torch autograd composition of
the equations written here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import DTYPES, assert_close, assert_nontrivial, central_difference, max_relative_error, rounded, uniform

import fastbptt as fb
from fastbptt import reference as ref

VECTORS = ("gamma_ih", "gamma_hh", "gamma_c", "beta_c")
INPUTS = ("x", "W_x", "W_h", "b", *VECTORS, "h0", "c0")
GRADS = ("dx", "dh0", "dc0", "dW_x", "dW_h", "db", "dgamma_ih", "dgamma_hh", "dgamma_c", "dbeta_c")
SHAPES = [(1, 1, 1, 1), (6, 3, 5, 7), (17, 5, 4, 9), (30, 16, 24, 40)]  # T, B, D, H


def problem(rng, T, B, D, H):
    k = 1 / np.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_x": uniform(rng, (D, 4 * H), k),
        "W_h": uniform(rng, (H, 4 * H), k),
        "b": uniform(rng, (4 * H,), 0.3),
        "gamma_ih": 1 + uniform(rng, (4 * H,), 0.3),
        "gamma_hh": 1 + uniform(rng, (4 * H,), 0.3),
        "gamma_c": 1 + uniform(rng, (H,), 0.3),
        "beta_c": uniform(rng, (H,), 0.3),
        "h0": uniform(rng, (B, H), 0.5),
        "c0": uniform(rng, (B, H), 0.5),
        "dhs": rng.standard_normal((T, B, H)),
        "dc_T": rng.standard_normal((B, H)),
    }


def run(module, p, **options):
    return module.layer_norm_lstm_forward(*(p[name] for name in INPUTS), **options)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_the_reference_gradients_match_finite_differences(rng, with_lengths):
    p = problem(rng, 5, 3, 4, 3)
    lengths = np.array([5, 2, 4]) if with_lengths else None

    def loss():
        hs, c_T, _ = run(ref, p, lengths=lengths)
        return float(np.sum(hs * p["dhs"]) + np.sum(c_T * p["dc_T"]))

    grads = ref.layer_norm_lstm_backward(run(ref, p, lengths=lengths)[2], p["dhs"], p["dc_T"])
    for name, key in zip(GRADS, ("x", "h0", "c0", "W_x", "W_h", "b", *VECTORS)):
        assert max_relative_error(getattr(grads, name), central_difference(loss, p[key])) < 1e-7, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_the_core_matches_the_reference(rng, dtype, shape, with_lengths):
    T, B, D, H = shape
    low, exact = rounded(problem(rng, T, B, D, H), dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    hs, c_T, cache = run(fb, low, lengths=lengths)
    hs_ref, c_ref, cache_ref = run(ref, exact, lengths=lengths)
    if T * B > 10 and lengths is None:
        assert_nontrivial(hs)
    assert_close(hs, hs_ref, dtype, "outputs", "hs")
    assert_close(c_T, c_ref, dtype, "outputs", "c_T")
    grads = fb.layer_norm_lstm_backward(cache, low["dhs"], low["dc_T"])
    expected = ref.layer_norm_lstm_backward(cache_ref, exact["dhs"], exact["dc_T"])
    for name in GRADS:
        assert_close(getattr(grads, name), getattr(expected, name), dtype, "grads", name)


def test_forward_only_chunks_threads_and_options_keep_the_bits(rng, restore_threads):
    low, _ = rounded(problem(rng, 20, 16, 12, 24), np.float32)
    fb.set_num_threads(1)
    hs, c_T, cache = run(fb, low)
    grads = fb.layer_norm_lstm_backward(cache, low["dhs"], low["dc_T"])
    hs_inference, c_inference, none = run(fb, low, inference=True)
    assert none is None
    np.testing.assert_array_equal(hs_inference, hs)
    np.testing.assert_array_equal(c_inference, c_T)
    first, c_first, _ = run(fb, {**low, "x": low["x"][:7]})
    rest, c_rest, _ = run(fb, {**low, "x": low["x"][7:], "h0": first[-1], "c0": c_first})
    np.testing.assert_array_equal(np.concatenate([first, rest]), hs)
    np.testing.assert_array_equal(c_rest, c_T)
    fb.set_num_threads(2)
    hs_two, _, cache_two = run(fb, low)
    np.testing.assert_array_equal(hs_two, hs)
    two = fb.layer_norm_lstm_backward(cache_two, low["dhs"], low["dc_T"])
    for name in GRADS:  # the weight matrices' blocked products may round otherwise at two threads
        assert_close(getattr(two, name), getattr(grads, name), np.float32, "grads", name)
    fb.set_num_threads(1)
    partial = fb.layer_norm_lstm_backward(cache, low["dhs"], low["dc_T"], need_dx=False, need_weight_grads=False)
    assert partial.dx is None and partial.dgamma_c is None and partial.dW_h is None
    np.testing.assert_array_equal(partial.dh0, grads.dh0)
    with pytest.raises(ValueError, match="read-only"):
        hs *= 2


def test_bad_arguments_are_refused_by_name(rng):
    p = problem(rng, 3, 2, 4, 5)
    with pytest.raises(ValueError, match=r"gamma_c: expected shape \[H\]"):
        run(fb, {**p, "gamma_c": np.ones(4)})
    with pytest.raises(ValueError, match=r"W_h: expected shape \[H, 4H\]"):
        run(fb, {**p, "W_h": p["W_h"][:, :12]})
    with pytest.raises(TypeError, match="cache"):
        fb.layer_norm_lstm_backward(fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])[2], p["dhs"])


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_the_layer_stacked_and_bidirectional(rng, backend):
    layer = fb.LayerNormLSTM(5, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=3, backend=backend)
    for name in ("gamma_ih_l1_reverse", "gamma_c"):
        np.testing.assert_array_equal(layer.params[name], 1.0)
    layer.params["beta_c_l1"][...] = uniform(rng, (6,), 0.3)
    x = rng.standard_normal((5, 3, 5))
    lengths = np.array([5, 2, 4])
    outputs, (h_n, c_n) = layer.forward(x, lengths=lengths)
    assert outputs.shape == (5, 3, 12) and h_n.shape == (4, 3, 6)
    d_outputs = rng.standard_normal(outputs.shape)
    layer.zero_grad()
    dx, _ = layer.backward(d_outputs, (np.ones_like(h_n), np.zeros_like(c_n)))

    def loss():
        out, (h, _) = layer.forward(x, lengths=lengths)
        return float(np.sum(out * d_outputs) + h.sum())

    assert max_relative_error(dx, central_difference(loss, x)) < 1e-6
    for name in ("beta_c_l1", "gamma_hh_reverse"):
        assert max_relative_error(layer.grads[name], central_difference(loss, layer.params[name])) < 1e-6


# -- fastbptt.torch.LayerNormLSTM against a torch composition of the equations ---------------------------------


def torch_composition(torch, module, x, hx=None):
    """torch.nn.LSTM's return values for the module's parameters, written with torch's own ops (autograd)."""
    F = torch.nn.functional
    layers, directions, H = module.num_layers, 2 if module.bidirectional else 1, module.hidden_size
    T, B = x.shape[:2]
    h0 = hx[0] if hx is not None else x.new_zeros(layers * directions, B, H)
    c0 = hx[1] if hx is not None else x.new_zeros(layers * directions, B, H)
    layer_input, h_n, c_n = x, [], []
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w = {name: getattr(module, name + suffix, None) for name in ("weight_ih", "weight_hh", "bias")}
            g = {name: getattr(module, name + suffix) for name in VECTORS}
            k = layer * directions + direction
            h, c, steps = h0[k], c0[k], []
            for t in reversed(range(T)) if direction else range(T):
                z = F.layer_norm(layer_input[t] @ w["weight_ih"].T, (4 * H,)) * g["gamma_ih"]
                z = z + F.layer_norm(h @ w["weight_hh"].T, (4 * H,)) * g["gamma_hh"]
                if w["bias"] is not None:
                    z = z + w["bias"]
                i, f, gate, o = z.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gate)
                h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,)) * g["gamma_c"] + g["beta_c"])
                steps.append(h)
            outputs.append(torch.stack(steps[::-1] if direction else steps))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, (torch.stack(h_n), torch.stack(c_n))


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}, {"bias": False}])
def test_the_torch_module_matches_a_torch_composition(dtype_name, options):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    fbt = pytest.importorskip("fastbptt.torch")
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    module = fbt.LayerNormLSTM(4, 6, dtype=dtype, **options)
    with torch.no_grad():  # the gammas and shifts away from their initial ones and zeros
        for name, parameter in module.named_parameters():
            if name.startswith(("gamma", "beta", "bias")):
                parameter.add_(0.3 * torch.rand_like(parameter))
    names = [name for name, _ in module.named_parameters()]
    assert "gamma_ih_l0" in names and "beta_c_l0" in names and ("bias_l0" in names) == options.get("bias", True)
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    x = torch.randn(5, 3, 4, dtype=dtype)
    hx = tuple(0.5 * torch.randn(layers, 3, 6, dtype=dtype) for _ in range(2))
    results = []
    for forward in (module, lambda x, hx: torch_composition(torch, module, x, hx)):
        module.zero_grad()
        leaf = x.clone().requires_grad_(True)
        state = tuple(h.clone().requires_grad_(True) for h in hx)
        output, (h_n, c_n) = forward(leaf, state)
        (output.sin().sum() + h_n.square().sum() + c_n.sum()).backward()
        results.append([output, h_n, c_n, leaf.grad, *(h.grad for h in state), *(p.grad for p in module.parameters())])
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


def test_the_torch_module_saves_loads_and_runs_without_grad():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    fbt = pytest.importorskip("fastbptt.torch")
    module = fbt.LayerNormLSTM(3, 4, batch_first=True)
    assert repr(module) == "LayerNormLSTM(3, 4, batch_first=True)"
    x = torch.randn(2, 5, 3)
    output, _ = module(x)
    with torch.no_grad():
        assert torch.equal(module(x)[0], output.detach())
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer)(x)[0], output.detach())


def test_hidden_gradient_norms_are_those_of_backward(rng):
    p = problem(rng, 6, 3, 4, 5)
    _, _, cache = run(fb, p)
    norms = fb.diagnostics.hidden_gradient_norms(cache, p["dhs"], p["dc_T"])
    grads = fb.layer_norm_lstm_backward(cache, p["dhs"], p["dc_T"])
    np.testing.assert_allclose(norms.per_sequence[0], np.linalg.norm(grads.dh0, axis=1), rtol=1e-12)
    last = np.linalg.norm(p["dhs"][-1], axis=1)  # dL/dh_T is the upstream gradient alone
    np.testing.assert_allclose(norms.per_sequence[-1], last, rtol=1e-12)
