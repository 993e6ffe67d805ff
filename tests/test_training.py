"""Layers, the sequence model, optimisers, gradient clipping and truncated BPTT."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_difference, max_relative_error

import fastbptt as fb

BACKENDS = ["fast", "reference"]


def tokens_and_targets(rng, T, B, V):
    stream = rng.integers(0, V, size=(T + 1, B))
    return stream[:-1], stream[1:]


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_layer_matches_functional_and_accumulates(rng, cell):
    layer = fb.RNN(5, 7, seed=1, dtype=np.float64) if cell == "rnn" else fb.LSTM(5, 7, seed=1, dtype=np.float64)
    x, dhs = rng.standard_normal((6, 3, 5)), rng.standard_normal((6, 3, 7))
    hs, state = layer.forward(x)
    if cell == "rnn":
        expected, cache = fb.rnn_forward(x, layer.params["W_xh"], layer.params["W_hh"], layer.params["b_h"])
        grads = fb.rnn_backward(cache, dhs)
        np.testing.assert_array_equal(state, expected[-1])
    else:
        expected, c_T, cache = fb.lstm_forward(x, layer.params["W_x"], layer.params["W_h"], layer.params["b"])
        grads = fb.lstm_backward(cache, dhs)
        np.testing.assert_array_equal(state[1], c_T)
    np.testing.assert_array_equal(hs, expected)
    dx, _ = layer.backward(dhs)
    np.testing.assert_array_equal(dx, grads.dx)
    first = {name: g.copy() for name, g in layer.grads.items()}
    layer.backward(dhs)
    for name, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * first[name], rtol=1e-15)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())


@pytest.mark.parametrize("cell", [fb.RNN, fb.LSTM])
def test_batch_first_is_a_transpose(rng, cell):
    time_major = cell(4, 6, seed=3, dtype=np.float64)
    batch_major = cell(4, 6, seed=3, dtype=np.float64, batch_first=True)
    x = rng.standard_normal((5, 2, 4))
    hs, _ = time_major.forward(x)
    hs_b, _ = batch_major.forward(np.swapaxes(x, 0, 1))
    np.testing.assert_array_equal(hs_b, np.swapaxes(hs, 0, 1))
    dhs = rng.standard_normal(hs.shape)
    dx, _ = time_major.backward(dhs)
    dx_b, _ = batch_major.backward(np.swapaxes(dhs, 0, 1))
    np.testing.assert_array_equal(dx_b, np.swapaxes(dx, 0, 1))


def test_final_state_gradient_adds_to_the_last_step(rng):
    layer = fb.LSTM(3, 4, seed=0, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    layer.forward(x)
    dhs, dh_T, dc_T = np.zeros((5, 2, 4)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    dx, (dh0, dc0) = layer.backward(dhs, (dh_T, dc_T))
    with_last = dhs.copy()
    with_last[-1] = dh_T
    dx_2, (dh0_2, dc0_2) = layer.backward(with_last, (None, dc_T))
    np.testing.assert_array_equal(dx, dx_2)
    np.testing.assert_array_equal(dc0, dc0_2)


def test_initialisation_schemes():
    irnn = fb.RNN(3, 8, activation="relu", init="identity", seed=0, dtype=np.float64)
    np.testing.assert_array_equal(irnn.params["W_hh"], np.eye(8))
    np.testing.assert_array_equal(irnn.params["b_h"], np.zeros(8))
    assert np.std(irnn.params["W_xh"]) < 0.01
    orthogonal = fb.RNN(3, 8, init="orthogonal", seed=0, dtype=np.float64)
    np.testing.assert_allclose(orthogonal.params["W_hh"].T @ orthogonal.params["W_hh"], np.eye(8), atol=1e-12)
    lstm = fb.LSTM(3, 5, init="orthogonal", forget_bias=1.0, seed=0, dtype=np.float64)
    for block in range(4):
        W = lstm.params["W_h"][:, 5 * block : 5 * (block + 1)]
        np.testing.assert_allclose(W.T @ W, np.eye(5), atol=1e-12)
    np.testing.assert_array_equal(lstm.params["b"][5:10], np.ones(5))
    uniform = fb.LSTM(3, 16, seed=0)
    assert uniform.params["W_h"].dtype == np.float32
    assert np.max(np.abs(uniform.params["W_h"])) <= 0.25
    np.testing.assert_array_equal(fb.LSTM(3, 16, seed=7).params["W_x"], fb.LSTM(3, 16, seed=7).params["W_x"])


@pytest.mark.parametrize("cell", [fb.RNN, fb.LSTM])
def test_save_load_round_trip_and_mismatch(tmp_path, cell):
    saved = cell(3, 4, seed=1)
    saved.save(tmp_path / "layer.npz")
    fresh = cell(3, 4, seed=2)
    fresh.load(tmp_path / "layer.npz")
    for name in saved.params:
        np.testing.assert_array_equal(fresh.params[name], saved.params[name])
    other = cell(3, 5, seed=2)
    before = {name: p.copy() for name, p in other.params.items()}
    with pytest.raises(ValueError, match=r"was saved with .*'hidden_size': 4.* but this .* has .*'hidden_size': 5"):
        other.load(tmp_path / "layer.npz")
    for name in before:
        np.testing.assert_array_equal(other.params[name], before[name])


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    layer = fb.RNN(3, 4, seed=1)
    before = {name: p.copy() for name, p in layer.params.items()}
    with pytest.raises(FileNotFoundError):
        layer.load(tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        layer.load(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "foreign.npz", W_xh=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="not written by fastbptt's save"):
        layer.load(tmp_path / "foreign.npz")
    fb.LSTM(3, 4).save(tmp_path / "lstm.npz")
    with pytest.raises(ValueError, match="holds a 'LSTM'.*expected a 'RNN'"):
        layer.load(tmp_path / "lstm.npz")
    for name in before:
        np.testing.assert_array_equal(layer.params[name], before[name])


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("embedding_dim", [None, 3])
def test_model_gradients_match_central_differences(rng, cell, embedding_dim):
    model = fb.SequenceModel(
        5, 4, cell=cell, embedding_dim=embedding_dim, seed=0, dtype=np.float64, backend="reference"
    )
    tokens, targets = tokens_and_targets(rng, 4, 2, 5)
    _, grads, _ = model.loss_and_grad(tokens, targets)

    def loss():
        return model.loss_and_grad(tokens, targets)[0]

    for name, param in model.params.items():
        err = max_relative_error(grads[name], central_difference(loss, param))
        assert err <= 1e-7, f"{name} ({cell}): relative error {err:.2e}"


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_model_fast_matches_reference_backend(rng, cell):
    tokens, targets = tokens_and_targets(rng, 12, 3, 7)
    fast = fb.SequenceModel(7, 9, cell=cell, embedding_dim=4, seed=5, dtype=np.float64)
    slow = fb.SequenceModel(7, 9, cell=cell, embedding_dim=4, seed=5, dtype=np.float64, backend="reference")
    loss, grads, state = fast.loss_and_grad(tokens, targets)
    loss_ref, grads_ref, state_ref = slow.loss_and_grad(tokens, targets)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-10, atol=1e-12)
    probs, _ = fast.predict(tokens)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-12)
    assert fast.sample(5, prime=[1, 2], seed=0).shape == (5,)
    np.testing.assert_array_equal(fast.sample(8, prime=3, seed=4), slow.sample(8, prime=3, seed=4))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_sample_draws_from_the_softmax_at_its_temperature(cell, batch_first):
    """Each token as rng.choice draws it from softmax(logits / temperature), the logits of the model's forward over
    the prime and the tokens drawn so far (predict of the whole sequence, no Stepper)."""
    model = fb.SequenceModel(7, 9, cell=cell, embedding_dim=4, seed=5, batch_first=batch_first)
    temperature, prime = 0.7, [1, 2, 3]
    rng, tokens = np.random.default_rng(11), list(prime)
    for _ in range(12):
        sequence = np.array(tokens)[None, :] if batch_first else np.array(tokens)[:, None]
        probs = model.predict(sequence)[0]
        last = (probs[0, -1] if batch_first else probs[-1, 0]).astype(np.float64)
        weights = np.exp((np.log(last) - np.log(last).max()) / temperature)
        tokens.append(int(rng.choice(7, p=weights / weights.sum())))
    drawn = model.sample(12, prime=prime, temperature=temperature, seed=11)
    np.testing.assert_array_equal(drawn, tokens[len(prime) :])


def test_model_save_load(tmp_path):
    model = fb.SequenceModel(6, 5, embedding_dim=3, seed=1)
    model.save(tmp_path / "model.npz")
    other = fb.SequenceModel(6, 5, embedding_dim=3, seed=2)
    other.load(tmp_path / "model.npz")
    for name in model.params:
        np.testing.assert_array_equal(other.params[name], model.params[name])
    with pytest.raises(ValueError, match="was saved with"):
        fb.SequenceModel(6, 5, seed=1).load(tmp_path / "model.npz")


# ---------------------------------------------------------------- optimisers and clipping


def test_clip_grad_norm(rng):
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5).astype(np.float32)}
    expected = np.sqrt(np.sum(grads["a"] ** 2) + np.sum(grads["b"].astype(np.float64) ** 2))
    copies = {name: g.copy() for name, g in grads.items()}
    assert fb.clip_grad_norm(grads, 2 * expected) == pytest.approx(expected, rel=1e-14)
    for name in grads:
        np.testing.assert_array_equal(grads[name], copies[name])
    assert fb.clip_grad_norm(grads, 0.5) == pytest.approx(expected, rel=1e-14)
    clipped = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert clipped == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(grads["a"], copies["a"] * 0.5 / expected, rtol=1e-14)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_norm: must be a finite number > 0"):
            fb.clip_grad_norm(grads, bad)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimisers_match_torch(rng, name):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    start = rng.standard_normal((4, 3))
    params = {"w": start.copy()}
    tensor = torch.tensor(start.copy(), requires_grad=True)
    if name == "sgd":
        ours, theirs = fb.SGD(params, lr=0.1, momentum=0.9), torch.optim.SGD([tensor], lr=0.1, momentum=0.9)
    else:
        ours, theirs = fb.Adam(params, lr=0.01), torch.optim.Adam([tensor], lr=0.01)
    for _ in range(5):
        grad = rng.standard_normal((4, 3))
        ours.step({"w": grad})
        tensor.grad = torch.tensor(grad)
        theirs.step()
    np.testing.assert_allclose(params["w"], tensor.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_without_torch_is_plain_gradient_descent():
    params = {"w": np.array([1.0, 2.0])}
    fb.SGD(params, lr=0.5).step({"w": np.array([1.0, -2.0])})
    np.testing.assert_array_equal(params["w"], [0.5, 3.0])


# ---------------------------------------------------------------- truncated BPTT


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_tbptt_with_k_at_least_T_is_full_bptt(rng, cell):
    tokens, targets = tokens_and_targets(rng, 15, 3, 6)
    model = fb.SequenceModel(6, 8, cell=cell, seed=2)
    loss, grads, state = model.loss_and_grad(tokens, targets)
    for k in (15, 40):
        (window,) = list(fb.tbptt_windows(model, tokens, targets, k1=k))
        assert window.loss == loss
        for name in grads:
            np.testing.assert_array_equal(window.grads[name], grads[name])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_tbptt_equals_a_hand_written_chunk_and_detach_loop(rng, cell):
    tokens, targets = tokens_and_targets(rng, 23, 2, 5)
    k = 5
    by_hand = fb.SequenceModel(5, 7, cell=cell, seed=4)
    optimizer = fb.Adam(by_hand.params, lr=0.05)
    state, hand_losses = None, []
    for start in range(0, 23, k):
        loss, grads, state = by_hand.loss_and_grad(tokens[start : start + k], targets[start : start + k], state)
        fb.clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
        hand_losses.append(loss)

    model = fb.SequenceModel(5, 7, cell=cell, seed=4)
    result = fb.train_tbptt(model, tokens, targets, fb.Adam(model.params, lr=0.05), k1=k, max_norm=1.0)
    assert result.losses == hand_losses
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], by_hand.params[name])
    for a, b in zip(result.state, state):
        np.testing.assert_array_equal(a, b)


def test_tbptt_k2_reaches_back_k2_steps(rng):
    tokens, targets = tokens_and_targets(rng, 12, 2, 4)
    model = fb.SequenceModel(4, 6, seed=9, dtype=np.float64)
    windows = list(fb.tbptt_windows(model, tokens, targets, k1=3, k2=12))
    assert [(w.start, w.stop, w.backprop_start) for w in windows] == [
        (0, 3, 0),
        (3, 6, 0),
        (6, 9, 0),
        (9, 12, 0),
    ]
    # Without updates and with k2 >= T every window sees the true history: the losses add up to the full loss,
    # and each window's gradient is that of the full sequence with only its own steps' targets kept.
    full_loss, _, _ = model.loss_and_grad(tokens, targets)
    assert sum(w.loss for w in windows) == pytest.approx(full_loss, rel=1e-12)
    masked = np.full_like(targets, -100)
    masked[9:12] = targets[9:12]
    _, expected, _ = model.loss_and_grad(tokens, masked)
    for name in expected:
        np.testing.assert_allclose(windows[-1].grads[name], expected[name], rtol=1e-12, atol=1e-14)

    windows = list(fb.tbptt_windows(model, tokens, targets.astype(np.uint8), k1=3, k2=5))
    assert [(w.start, w.stop, w.backprop_start) for w in windows] == [
        (0, 3, 0),
        (3, 6, 1),
        (6, 9, 4),
        (9, 12, 7),
    ]
    # The state carried into window (6, 9) is the true state after step 4: recomputing gives the same loss.
    _, _, state_4 = model.loss_and_grad(tokens[:4], targets[:4])
    masked = np.array(targets[4:9])
    masked[:2] = -100
    loss, _, _ = model.loss_and_grad(tokens[4:9], masked, state_4)
    assert windows[2].loss == pytest.approx(loss, rel=1e-12)


# ---------------------------------------------------------------- bad input


def test_training_bad_input(rng, tmp_path):
    tokens, targets = tokens_and_targets(rng, 6, 2, 4)
    model = fb.SequenceModel(4, 3)
    with pytest.raises(ValueError, match="k1: must be >= 1, got 0"):
        next(fb.tbptt_windows(model, tokens, targets, k1=0))
    with pytest.raises(ValueError, match="k2: must be >= k1"):
        next(fb.tbptt_windows(model, tokens, targets, k1=4, k2=2))
    with pytest.raises(TypeError, match="k1: expected an int"):
        next(fb.tbptt_windows(model, tokens, targets, k1=2.5))
    with pytest.raises(ValueError, match=r"tokens: ids must lie in 0 \.\. 3 \(vocab_size\), got 4"):
        model.loss_and_grad(tokens + 1, targets)
    with pytest.raises(ValueError, match=r"targets: class indices must lie in 0 \.\. 3"):
        model.loss_and_grad(tokens, targets + 4)
    with pytest.raises(TypeError, match="tokens: expected an integer array of token ids"):
        model.loss_and_grad(tokens.astype(float), targets)
    with pytest.raises(ValueError, match="backend: expected one of 'fast', 'reference', got 'gpu'"):
        fb.SequenceModel(4, 3, backend="gpu")
    with pytest.raises(ValueError, match="cell: expected one of 'rnn', 'lstm', 'gru', 'layer_norm_lstm', got 'lru'"):
        fb.SequenceModel(4, 3, cell="lru")
    for make in (fb.LSTM, fb.GRU, lambda *sizes, **options: fb.SequenceModel(*sizes, cell="gru", **options)):
        with pytest.raises(ValueError, match="init: 'identity' is the IRNN scheme"):
            make(3, 4, init="identity")
    with pytest.raises(ValueError, match="hidden_size: must be >= 1"):
        fb.RNN(3, 0)
    with pytest.raises(ValueError, match="lr: must be a finite number > 0"):
        fb.SGD(model.params, lr=0)
    with pytest.raises(ValueError, match="grads: keys"):
        fb.Adam(model.params).step({"W_yh": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"RNN: call forward first"):
        fb.RNN(2, 2).backward(np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match=r"x: expected \[T, B, D\] with D = input_size = 3, got 5 features"):
        layer = fb.RNN(3, 4)
        layer.forward(np.zeros((2, 1, 5), np.float32))
