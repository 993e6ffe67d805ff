"""Backward computes only the gradients asked for (need_dx, need_weight_grads of fastbptt._core's backward
functions): what it computes has the bits of the full backward, what it skips is None or left alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, gru_problem, lstm_problem, rnn_problem

from fastbptt import _core

NO_LENGTHS = np.empty(0, dtype=np.int64)
SHAPE = (150, 5, 11, 19)  # (T, B, D, H): the backward runs several blocks of steps
CELLS = ["rnn", "lstm", "lstm-no-forget-gate", "gru"]
# which outputs of each backward are the input's gradient and which the weights'
DX = 0
WEIGHTS = {"rnn": (2, 3, 4), "lstm": (3, 4, 5), "lstm-no-forget-gate": (3, 4, 5), "gru": (2, 3, 4, 5)}


def backward_of(cell: str, dtype, lengths: np.ndarray):
    """A function (need_dx, need_weight_grads) -> the backward's outputs, dh_norms last, for one forward."""
    T, B, D, H = SHAPE
    rng = np.random.default_rng(len(cell) + 5)
    if cell == "rnn":
        p = {k: np.asarray(v, dtype=dtype) for k, v in rnn_problem(rng, T, B, D, H).items()}
        hs = _core.rnn_forward(p["x"], p["W_xh"], p["W_hh"], p["b_h"], p["h0"], "tanh", lengths)
        return lambda **need: _core.rnn_backward(
            p["x"], p["W_xh"], p["W_hh"], p["h0"], hs, p["dhs"], "tanh", lengths, True, **need
        )
    if cell.startswith("lstm"):
        forget_gate = cell == "lstm"
        p = {k: np.asarray(v, dtype=dtype) for k, v in lstm_problem(rng, T, B, D, H, forget_gate).items()}
        cache_args = lstm_backward_args(p, forget_gate, lengths)
        return lambda **need: _core.lstm_backward(*cache_args, lengths, True, **need)
    p = {k: np.asarray(v, dtype=dtype) for k, v in gru_problem(rng, T, B, D, H).items()}
    hs, gates, hn = _core.gru_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["b_hn"], p["h0"], lengths)
    return lambda **need: _core.gru_backward(
        p["x"], p["W_x"], p["W_h"], p["h0"], gates, hn, hs, p["dhs"], lengths, True, **need
    )


def lstm_backward_args(p: dict, forget_gate: bool, lengths: np.ndarray) -> tuple:
    """The arguments of _core.lstm_backward and lstm_backward_into up to forget_gate, after the forward of p."""
    hs, cs, gates = _core.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], forget_gate, lengths)
    return (p["x"], p["W_x"], p["W_h"], p["h0"], p["c0"], gates, hs, cs, p["dhs"], p["dc_T"], forget_gate)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "need", [(False, True), (True, False), (False, False)], ids=["no-dx", "frozen-weights", "state-gradients-only"]
)
def test_skipped_gradients_are_none_and_the_others_keep_their_bits(cell, dtype, with_lengths, need):
    T, B = SHAPE[:2]
    lengths = np.random.default_rng(B).integers(1, T + 1, B).astype(np.int64) if with_lengths else NO_LENGTHS
    backward = backward_of(cell, dtype, lengths)
    full = backward()
    need_dx, need_weight_grads = need
    partial = backward(need_dx=need_dx, need_weight_grads=need_weight_grads)
    assert len(partial) == len(full)
    skipped = ({DX} if not need_dx else set()) | (set(WEIGHTS[cell]) if not need_weight_grads else set())
    for i, (expected, actual) in enumerate(zip(full, partial)):
        if i in skipped:
            assert actual is None, f"output {i} was not asked for"
        else:
            assert np.all(np.isfinite(expected)) and np.any(expected != 0)
            assert np.array_equal(actual, expected), f"output {i} differs from the full backward's"


def test_defaults_return_every_gradient():
    backward = backward_of("lstm", np.float64, NO_LENGTHS)
    assert all(g is not None for g in backward())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forget_gate", [True, False], ids=["forget-gate", "no-forget-gate"])
def test_accumulating_backward_skips_alike(dtype, forget_gate):
    """lstm_backward_into adds to the given weight-gradient arrays: without need_weight_grads it leaves them
    untouched, without need_dx it adds the full backward's bits."""
    T, B, D, H = SHAPE
    rng = np.random.default_rng(11)
    p = {k: np.asarray(v, dtype=dtype) for k, v in lstm_problem(rng, T, B, D, H, forget_gate).items()}
    cache_args = lstm_backward_args(p, forget_gate, NO_LENGTHS)
    G = 4 if forget_gate else 3
    start = [rng.standard_normal(shape).astype(dtype) for shape in ((D, G * H), (H, G * H), (G * H,))]

    def backward_into(**need):
        arrays = [a.copy() for a in start]
        return _core.lstm_backward_into(*cache_args, *arrays, **need), arrays

    (dx, dh0, dc0), summed = backward_into()
    (no_dx, dh0_a, dc0_a), summed_a = backward_into(need_dx=False)
    assert no_dx is None
    for expected, actual in zip((dh0, dc0, *summed), (dh0_a, dc0_a, *summed_a)):
        assert np.array_equal(actual, expected)
    (dx_b, dh0_b, dc0_b), frozen = backward_into(need_weight_grads=False)
    for expected, actual in zip((dx, dh0, dc0), (dx_b, dh0_b, dc0_b)):
        assert np.array_equal(actual, expected)
    for given, after in zip(start, frozen):
        assert np.array_equal(after, given), "frozen weights' gradient arrays must be left alone"
    assert not np.array_equal(summed[0], start[0])  # the full call did add something
