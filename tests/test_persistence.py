"""Layers, models and optimisers pickle and deep-copy; an optimiser's state_dict resumes training exactly."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastbptt as fb

LAYERS = {
    "rnn": lambda: fb.RNN(3, 5, activation="relu", num_layers=2, seed=1),
    "lstm": lambda: fb.LSTM(3, 5, forget_bias=1.0, bidirectional=True, seed=1),
    "gru": lambda: fb.GRU(3, 5, batch_first=True, seed=1, dtype=np.float64),
}


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_layers_pickle_and_deep_copy_to_the_same_computation(kind, how):
    layer = LAYERS[kind]()
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(layer.dtype)
    outputs, _ = layer.forward(x)
    layer.backward(np.ones_like(outputs))
    twin = pickle.loads(pickle.dumps(layer)) if how == "pickle" else copy.deepcopy(layer)
    assert type(twin) is type(layer) and twin.cell.options == layer.cell.options
    for name, value in layer.params.items():
        assert np.array_equal(twin.params[name], value) and twin.params[name] is not value
        assert np.array_equal(twin.grads[name], layer.grads[name])
    assert twin.cache is None  # the read-only cache of the last forward is not copied
    with pytest.raises(ValueError, match="call forward first"):
        twin.backward(np.ones_like(outputs))
    assert np.array_equal(twin.forward(x)[0], layer.forward(x)[0])


def corpus_model(optimizer_kind):
    model = fb.SequenceModel(6, 8, cell="lstm", embedding_dim=4, seed=3)
    optimizer = fb.Adam(model.params, lr=1e-2) if optimizer_kind == "adam" else fb.SGD(model.params, 0.1, 0.9)
    return model, optimizer


def train(model, optimizer, tokens, steps):
    for _ in range(steps):
        _, grads, _ = model.loss_and_grad(tokens[:-1], tokens[1:])
        optimizer.step(grads)


@pytest.mark.parametrize("optimizer_kind", ["adam", "sgd"])
def test_stop_save_load_continue_gives_the_bits_of_an_uninterrupted_run(optimizer_kind, tmp_path):
    tokens = np.random.default_rng(4).integers(0, 6, (10, 3))
    model, optimizer = corpus_model(optimizer_kind)
    train(model, optimizer, tokens, 8)

    first, first_optimizer = corpus_model(optimizer_kind)
    train(first, first_optimizer, tokens, 5)
    first.save(tmp_path / "model.npz")
    state = pickle.dumps(first_optimizer.state_dict())
    # A new process's worth of objects: a model of another seed and a fresh optimiser, loaded from the files.
    resumed = fb.SequenceModel(6, 8, cell="lstm", embedding_dim=4, seed=99)
    resumed.load(tmp_path / "model.npz")
    resumed_optimizer = type(first_optimizer)(resumed.params, lr=1.0)
    resumed_optimizer.load_state_dict(pickle.loads(state))
    train(resumed, resumed_optimizer, tokens, 3)
    for name, value in model.params.items():
        assert np.array_equal(resumed.params[name], value), name


def test_optimizer_state_dict_is_checked_before_anything_changes():
    model, adam = corpus_model("adam")
    train(model, adam, np.random.default_rng(5).integers(0, 6, (4, 2)), 1)
    state = adam.state_dict()
    with pytest.raises(ValueError, match="state_dict\\(\\) of a SGD"):
        fb.SGD(model.params, 0.1).load_state_dict(state)
    other = fb.Adam(fb.SequenceModel(6, 9, embedding_dim=4, seed=0).params)  # same names, other shapes
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(state)
    assert other.t == 0 and not any(np.any(m) for m in other.m.values())
    with pytest.raises(ValueError, match="lacks"):
        adam.load_state_dict({key: value for key, value in state.items() if key != "v"})


def test_model_and_its_optimizer_pickle_together_and_still_share_arrays():
    model, optimizer = corpus_model("adam")
    model_copy, optimizer_copy = pickle.loads(pickle.dumps((model, optimizer)))
    assert all(optimizer_copy.params[name] is model_copy.params[name] for name in model_copy.params)


def test_the_command_line_tells_its_version():
    done = subprocess.run([sys.executable, "-m", "fastbptt", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == f"fastbptt {fb.__version__}"
