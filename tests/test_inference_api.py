"""The NumPy API's forward-only mode (``inference=True``) and backward's ``need_dx`` / ``need_weight_grads``, in the
kernels of both backends, the layers and the sequence model: the same bits as the full computation, None for what
was not asked for."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, gru_problem, lstm_problem, rnn_problem

import fastbptt as fb
from fastbptt import reference as ref

T, B, D, H = 7, 4, 5, 6
LENGTHS = np.array([7, 3, 5, 1])
BACKENDS = {"fast": fb, "reference": ref}


def cell_runs(kernels, dtype, rng):
    """cell -> (forward(**options) -> (hs, other outputs, cache), backward(cache, **options) -> grads, states)."""
    r = {k: v.astype(dtype) for k, v in rnn_problem(rng, T, B, D, H).items()}
    g = {k: v.astype(dtype) for k, v in gru_problem(rng, T, B, D, H).items()}
    runs = {}
    for activation in ("tanh", "relu", "sigmoid"):

        def rnn_forward(activation=activation, **o):
            hs, cache = kernels.rnn_forward(r["x"], r["W_xh"], r["W_hh"], r["b_h"], r["h0"], activation=activation, **o)
            return hs, [], cache

        runs[f"rnn-{activation}"] = (rnn_forward, lambda cache, **o: kernels.rnn_backward(cache, r["dhs"], **o), 1)
    for forget_gate in (True, False):
        p = {k: v.astype(dtype) for k, v in lstm_problem(rng, T, B, D, H, forget_gate=forget_gate).items()}

        def lstm_forward(p=p, forget_gate=forget_gate, **o):
            hs, c_T, cache = kernels.lstm_forward(
                p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], forget_gate=forget_gate, **o
            )
            return hs, [c_T], cache

        runs[f"lstm-{'forget' if forget_gate else 'original'}"] = (
            lstm_forward,
            lambda cache, p=p, **o: kernels.lstm_backward(cache, p["dhs"], p["dc_T"], **o),
            2,
        )

    def gru_forward(**o):
        hs, cache = kernels.gru_forward(g["x"], g["W_x"], g["W_h"], g["b"], g["b_hn"], g["h0"], **o)
        return hs, [], cache

    runs["gru"] = (gru_forward, lambda cache, **o: kernels.gru_backward(cache, g["dhs"], **o), 1)
    return runs


CELLS = ["rnn-tanh", "rnn-relu", "rnn-sigmoid", "lstm-forget", "lstm-original", "gru"]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["all-steps", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_inference_forward_gives_the_training_forward_s_bits_and_no_cache(cell, backend, dtype, with_lengths, rng):
    forward, _, _ = cell_runs(BACKENDS[backend], dtype, rng)[cell]
    options = {"lengths": LENGTHS} if with_lengths else {}
    hs, others, cache = forward(**options)
    hs_inference, others_inference, no_cache = forward(inference=True, **options)
    assert no_cache is None and cache is not None
    assert np.array_equal(hs_inference, hs) and all(np.array_equal(a, b) for a, b in zip(others_inference, others))
    hs_inference[0] = 7  # the caller's own memory: no backward reads it
    assert not hs.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_computes_what_is_asked_for_with_the_full_backward_s_bits(cell, backend, dtype, rng):
    forward, backward, states = cell_runs(BACKENDS[backend], dtype, rng)[cell]
    _, _, cache = forward(lengths=LENGTHS)
    full = backward(cache)
    for need_dx, need_weight_grads in [(False, True), (True, False), (False, False)]:
        partial = backward(cache, need_dx=need_dx, need_weight_grads=need_weight_grads)
        assert type(partial) is type(full)
        for index, (a, b) in enumerate(zip(partial, full)):
            skipped = (index == 0 and not need_dx) or (index > states and not need_weight_grads)
            assert (a is None) if skipped else np.array_equal(a, b), (index, need_dx, need_weight_grads)
    with pytest.raises(TypeError, match="need_dx"):
        backward(cache, need_dx="no")


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpointed_lstm_backward_skips_alike_and_refuses_inference(backend, rng):
    kernels = BACKENDS[backend]
    p = lstm_problem(rng, 40, 3, D, H)
    _, _, cache = kernels.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], checkpoint=8)
    full = kernels.lstm_backward(cache, p["dhs"])
    no_dx = kernels.lstm_backward(cache, p["dhs"], need_dx=False)
    frozen = kernels.lstm_backward(cache, p["dhs"], need_weight_grads=False)
    assert no_dx.dx is None and all(np.array_equal(a, b) for a, b in zip(no_dx[1:], full[1:]))
    assert frozen.dW_x is None and frozen.dW_h is None and frozen.db is None
    assert all(np.array_equal(a, b) for a, b in zip(frozen[:3], full[:3]))
    with pytest.raises(ValueError, match="inference=True"):
        kernels.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], checkpoint=8, inference=True)


LAYERS = {
    "RNN": lambda **o: fb.RNN(D, H, activation="relu", **o),
    "LSTM": lambda **o: fb.LSTM(D, H, **o),
    "GRU": lambda **o: fb.GRU(D, H, **o),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYERS)
def test_layers_infer_and_skip_dx(kind, backend, rng):
    layer = LAYERS[kind](num_layers=2, bidirectional=True, seed=3, dtype=np.float64, backend=backend)
    x = rng.standard_normal((T, B, D))
    outputs, finals = layer.forward(x, lengths=LENGTHS)
    layer.zero_grad()
    dx, dstate = layer.backward(np.ones_like(outputs))
    grads = {name: grad.copy() for name, grad in layer.grads.items()}
    inferred, inferred_finals = layer.forward(x, lengths=LENGTHS, inference=True)
    assert np.array_equal(inferred, outputs)
    for a, b in zip(np.atleast_1d(inferred_finals), np.atleast_1d(finals)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="call forward first"):
        layer.backward(np.ones_like(outputs))
    layer.forward(x, lengths=LENGTHS)
    layer.zero_grad()
    no_dx, dstate_again = layer.backward(np.ones_like(outputs), need_dx=False)
    assert no_dx is None and dx is not None
    for a, b in zip(np.atleast_1d(dstate_again), np.atleast_1d(dstate)):
        assert np.array_equal(a, b)
    assert all(np.array_equal(layer.grads[name], grad) for name, grad in grads.items())


def test_sequence_model_predicts_with_the_training_forward_s_bits():
    model = fb.SequenceModel(6, 8, cell="lstm", seed=0)
    tokens = np.random.default_rng(1).integers(0, 6, (9, 2))
    probabilities, state = model.predict(tokens)
    _, x = model._embed(tokens)
    hs, trained_state = model.rnn.forward(x)
    logits = hs @ model.params["W_yh"] + model.params["b_y"]
    expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
    np.testing.assert_array_equal(probabilities, expected / expected.sum(axis=-1, keepdims=True))
    assert all(np.array_equal(a, b) for a, b in zip(state, trained_state))
