"""Stacked, bidirectional and variable-length layers (RNN, LSTM, GRU): the correctness triangle for every
combination of cell x {1, 2 layers} x {one, two directions} x {no lengths, mixed lengths}."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import DTYPES, assert_close, max_relative_error

import fastbptt as fb

T, B, D, H = 7, 6, 5, 3
MIXED = [7, 5, 5, 2, 1, 1]
CELLS = {"rnn": fb.RNN, "lstm": fb.LSTM, "gru": fb.GRU}
COMBINATIONS = list(itertools.product(CELLS, [1, 2], [False, True], [None, MIXED]))


def combination_id(combination):
    cell, layers, bidirectional, lengths = combination
    return f"{cell}-{layers}layer-{'bi' if bidirectional else 'uni'}-{'mixed' if lengths else 'full'}"


def make_layer(cell, layers, bidirectional, dtype, backend="fast"):
    return CELLS[cell](D, H, num_layers=layers, bidirectional=bidirectional, seed=7, dtype=dtype, backend=backend)


def problem(cell, layers, bidirectional, seed=3):
    """Inputs, initial state, and upstream gradients for the outputs and the final state (float64)."""
    rng = np.random.default_rng(seed)
    directions = 2 if bidirectional else 1
    simple = layers == 1 and not bidirectional
    state_shape = (B, H) if simple else (layers * directions, B, H)
    parts = 2 if cell == "lstm" else 1

    def state():
        arrays = tuple(rng.uniform(-0.5, 0.5, state_shape) for _ in range(parts))
        return arrays if parts == 2 else arrays[0]

    return {
        "x": rng.standard_normal((T, B, D)),
        "state": state(),
        "doutputs": rng.standard_normal((T, B, directions * H)),
        "dstate": state(),
    }


def as_dtype(value, dtype):
    if isinstance(value, tuple):
        return tuple(v.astype(dtype) for v in value)
    return value.astype(dtype)


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def run(layer, p, lengths, dtype):
    layer.zero_grad()
    outputs, final = layer.forward(p["x"].astype(dtype), as_dtype(p["state"], dtype), lengths=lengths)
    dx, dstate0 = layer.backward(p["doutputs"].astype(dtype), as_dtype(p["dstate"], dtype))
    return outputs, flat(final), dx, flat(dstate0), {name: g.copy() for name, g in layer.grads.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_fast_matches_reference(combination, dtype):
    cell, layers, bidirectional, lengths = combination
    p = problem(cell, layers, bidirectional)
    fast = make_layer(cell, layers, bidirectional, dtype)
    exact = make_layer(cell, layers, bidirectional, np.float64, backend="reference")
    for name in exact.params:  # the same (dtype-rounded) parameters on both sides
        exact.params[name][...] = fast.params[name]
    low = {k: as_dtype(v, dtype) for k, v in p.items()}
    p_exact = {k: as_dtype(v, np.float64) for k, v in low.items()}
    outputs, finals, dx, dstate0, grads = run(fast, low, lengths, dtype)
    outputs_ref, finals_ref, dx_ref, dstate0_ref, grads_ref = run(exact, p_exact, lengths, np.float64)
    assert outputs.dtype == dtype and outputs.shape == (T, B, (2 if bidirectional else 1) * H)
    valid = np.arange(T)[:, None] < np.asarray(lengths if lengths is not None else [T] * B)
    assert np.mean(np.abs(outputs_ref[valid]) > 1e-3) > 0.5, "outputs mostly zero: the test would pass trivially"
    assert_close(outputs, outputs_ref, dtype, "outputs", "outputs")
    for k, (mine, theirs) in enumerate(zip(finals, finals_ref)):
        assert_close(mine, theirs, dtype, "outputs", f"final state part {k}")
    assert_close(dx, dx_ref, dtype, "grads", "dx")
    for k, (mine, theirs) in enumerate(zip(dstate0, dstate0_ref)):
        assert_close(mine, theirs, dtype, "grads", f"dstate0 part {k}")
    assert set(grads) == set(grads_ref)
    for name in grads:
        assert_close(grads[name], grads_ref[name], dtype, "grads", name)
    if lengths is not None:  # outputs past each length are zero, as torch pads packed sequences
        for b, length in enumerate(lengths):
            assert np.all(outputs[length:, b] == 0) and np.all(outputs_ref[length:, b] == 0)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_reference_matches_central_differences(combination):
    """Sampled entries of every gradient of L = <doutputs, outputs> + <dstate, final state>."""
    cell, layers, bidirectional, lengths = combination
    p = problem(cell, layers, bidirectional)
    layer = make_layer(cell, layers, bidirectional, np.float64, backend="reference")
    _, _, dx, dstate0, grads = run(layer, p, lengths, np.float64)

    def loss():
        outputs, final = layer.forward(p["x"], p["state"], lengths=lengths)
        return float(
            np.sum(p["doutputs"] * outputs) + sum(np.sum(d * f) for d, f in zip(flat(p["dstate"]), flat(final)))
        )

    rng = np.random.default_rng(0)
    checks = [("dx", p["x"], dx)] + [(f"dstate0[{k}]", s, d) for k, (s, d) in enumerate(zip(flat(p["state"]), dstate0))]
    checks += [(f"d{name}", layer.params[name], grads[name]) for name in layer.params]
    for label, array, analytic in checks:
        flat_array, flat_grad = array.reshape(-1), analytic.reshape(-1)
        picks = rng.choice(flat_array.size, size=min(10, flat_array.size), replace=False)
        numeric = np.empty(picks.size)
        for n, k in enumerate(picks):
            saved = flat_array[k]
            flat_array[k] = saved + 1e-6
            up = loss()
            flat_array[k] = saved - 1e-6
            down = loss()
            flat_array[k] = saved
            numeric[n] = (up - down) / 2e-6
        if np.max(np.abs(numeric)) == 0 and np.max(np.abs(flat_grad[picks])) == 0:
            continue  # e.g. a padded input step: no influence, and none claimed
        err = max_relative_error(flat_grad[picks], numeric)
        assert err <= 1e-7, f"{label}: relative error {err:.2e}"


def test_padded_inputs_have_no_influence_and_get_no_gradient():
    p = problem("lstm", 2, True)
    layer = make_layer("lstm", 2, True, np.float64)
    outputs, final = layer.forward(p["x"], p["state"], lengths=MIXED)
    dx, _ = layer.backward(p["doutputs"], p["dstate"])
    scrambled = p["x"].copy()
    for b, length in enumerate(MIXED):
        scrambled[length:, b] = 1e6
        assert np.all(dx[length:, b] == 0)
    outputs_2, final_2 = layer.forward(scrambled, p["state"], lengths=MIXED)
    np.testing.assert_array_equal(outputs_2, outputs)
    for mine, theirs in zip(final_2, final):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_sequence_equals_its_own_run(cell):
    """A batch with lengths gives each sequence the bits of a run of that sequence alone over its own steps."""
    p = problem(cell, 1, False)
    layer = make_layer(cell, 1, False, np.float32)
    x = p["x"].astype(np.float32)
    outputs, _ = layer.forward(x, lengths=MIXED)
    for b, length in enumerate(MIXED):
        alone, _ = layer.forward(x[:length, b : b + 1])
        np.testing.assert_array_equal(outputs[:length, b], alone[:, 0])


def test_lengths_errors():
    layer = make_layer("gru", 1, True, np.float64)
    x = np.zeros((T, B, D))
    with pytest.raises(ValueError, match=r"lengths: expected shape \[B\] = \(6,\), got \(5,\)"):
        layer.forward(x, lengths=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"lengths: every length must lie in 1 \.\. T = 7, got 8"):
        layer.forward(x, lengths=[8, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"lengths: every length must lie in 1 \.\. T = 7, got 0"):
        fb.rnn_forward(x, np.zeros((D, H)), np.zeros((H, H)), np.zeros(H), lengths=[0, 1, 1, 1, 1, 1])
    with pytest.raises(TypeError, match=r"lengths: expected integers .* got dtype float64"):
        fb.lstm_forward(x, np.zeros((D, 4 * H)), np.zeros((H, 4 * H)), np.zeros(4 * H), lengths=np.full(B, 3.0))
    with pytest.raises(TypeError, match=r"lengths: expected integers .* got dtype bool"):
        fb.gru_forward(x, np.zeros((D, 3 * H)), np.zeros((H, 3 * H)), np.zeros(3 * H), np.zeros(H), lengths=[True] * B)
    with pytest.raises(ValueError, match=r"state: expected shape \[num_layers \* num_directions, B, H\]"):
        layer.forward(x, np.zeros((B, H)))
    with pytest.raises(TypeError, match=r"x: has dtype float32 but this GRU layer computes in float64: convert x"):
        layer.forward(x.astype(np.float32))
    layer.forward(x)
    with pytest.raises(ValueError, match="state_at: only a one-directional layer"):
        layer.state_at(1)


def torch_state_dict(layer):
    """The parameters of a fastbptt layer as a torch.nn module's state_dict."""
    import torch

    state = {}
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            p = layer._params_of(k, d)
            torch_suffix = f"_l{k}" + ("_reverse" if d else "")
            if isinstance(layer, fb.GRU):
                arrays = fb.gru_weights_to_torch(p["W_x"], p["W_h"], p["b"], p["b_hn"])
            elif isinstance(layer, fb.LSTM):
                arrays = fb.lstm_weights_to_torch(p["W_x"], p["W_h"], p["b"])
            else:
                arrays = (p["W_xh"].T, p["W_hh"].T, p["b_h"], np.zeros_like(p["b_h"]))
            for name, array in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays):
                state[name + torch_suffix] = torch.tensor(np.ascontiguousarray(array))
    return state


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_matches_torch_nn_with_packed_sequences(combination):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for this test)")
    cell, layers, bidirectional, lengths = combination
    p = problem(cell, layers, bidirectional)
    layer = make_layer(cell, layers, bidirectional, np.float64)
    outputs, final, dx, dstate0, grads = run(layer, p, lengths, np.float64)

    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        D, H, num_layers=layers, bidirectional=bidirectional, dtype=torch.float64
    )
    module.load_state_dict(torch_state_dict(layer))
    simple = layers == 1 and not bidirectional
    x = torch.tensor(p["x"], requires_grad=True)
    states = [torch.tensor(s[None] if simple else s, requires_grad=True) for s in flat(p["state"])]
    source = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    out, fin = module(source, tuple(states) if cell == "lstm" else states[0])
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    fin = list(fin) if cell == "lstm" else [fin]
    loss = (out * torch.tensor(p["doutputs"])).sum()
    loss = loss + sum((f * torch.tensor(d[None] if simple else d)).sum() for f, d in zip(fin, flat(p["dstate"])))
    loss.backward()

    np.testing.assert_allclose(outputs, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(final, fin):
        np.testing.assert_allclose(mine, theirs.detach().numpy().reshape(mine.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(dstate0, states):
        np.testing.assert_allclose(mine, theirs.grad.numpy().reshape(mine.shape), rtol=1e-10, atol=1e-12)
    theirs_grads = torch_state_dict_grads(module)
    ours_as_torch = torch_layout_grads(layer, grads)
    for name, value in ours_as_torch.items():
        np.testing.assert_allclose(value, theirs_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def torch_state_dict_grads(module):
    return {name: p.grad.numpy() for name, p in module.named_parameters()}


def torch_layout_grads(layer, grads):
    """fastbptt's parameter gradients in torch's names and layout (the bias gradient goes to both torch biases,
    except the GRU's, whose recurrent bias takes only its r and z blocks and d b_hn)."""
    out = {}
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            ours_suffix, torch_suffix = layer.suffix(k, d), f"_l{k}" + ("_reverse" if d else "")
            if isinstance(layer, fb.RNN):
                W_x, W_h, b = (grads[n + ours_suffix] for n in ("W_xh", "W_hh", "b_h"))
            else:
                W_x, W_h, b = (grads[n + ours_suffix] for n in ("W_x", "W_h", "b"))
            out["weight_ih" + torch_suffix] = W_x.T
            out["weight_hh" + torch_suffix] = W_h.T
            out["bias_ih" + torch_suffix] = b
            if isinstance(layer, fb.GRU):
                out["bias_hh" + torch_suffix] = np.concatenate([b[: 2 * H], grads["b_hn" + ours_suffix]])
            else:
                out["bias_hh" + torch_suffix] = b
    return out
