"""Bad input (DESIGN.md section 5): the right exception, naming the argument, from the fast path and the reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import reference as ref
from fastbptt.kernels.checkpoint import block_steps

MODULES = pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
T, B, D, H, K = 4, 3, 5, 6, 7


def rnn_args(dtype=np.float64):
    return {
        "x": np.zeros((T, B, D), dtype),
        "W_xh": np.zeros((D, H), dtype),
        "W_hh": np.zeros((H, H), dtype),
        "b_h": np.zeros(H, dtype),
    }


def lstm_args(dtype=np.float64, gates=4):
    return {
        "x": np.zeros((T, B, D), dtype),
        "W_x": np.zeros((D, gates * H), dtype),
        "W_h": np.zeros((H, gates * H), dtype),
        "b": np.zeros(gates * H, dtype),
    }


def output_args(dtype=np.float64):
    return {
        "hs": np.zeros((T, B, H), dtype),
        "W_yh": np.zeros((H, K), dtype),
        "b_y": np.zeros(K, dtype),
        "targets": np.zeros((T, B), np.int64),
    }


RNN_TYPE_ERRORS = [
    ("x", np.zeros((T, B, D), np.int64), r"x: expected a float32 or float64 array, got dtype int64"),
    ("x", np.zeros((T, B, D), np.float16), r"x: expected a float32 or float64 array, got dtype float16"),
    ("x", np.zeros((T, B, D), np.complex128), r"x: .*got dtype complex128"),
    ("W_hh", np.zeros((H, H), np.float32), r"W_hh: has dtype float32 but x has dtype float64.*astype"),
    ("b_h", np.zeros(H, np.int32), r"b_h: expected a float32 or float64 array"),
    ("h0", np.zeros((B, H), np.float32), r"h0: has dtype float32 but x has dtype float64"),
    ("x", None, r"x: expected a float32 or float64 array, got dtype object"),
    ("x", "abc", r"x: expected a float32 or float64 array"),
]

RNN_VALUE_ERRORS = [
    ("x", np.zeros((T, B), np.float64), r"x: expected a 3-D array \[T, B, D\].*got shape \(4, 3\)"),
    ("x", np.zeros((0, B, D), np.float64), r"x: T \(time steps\) must be >= 1"),
    ("x", np.zeros((T, 0, D), np.float64), r"x: B \(batch\) must be >= 1"),
    ("x", np.zeros((T, B, 0), np.float64), r"x: D \(features\) must be >= 1"),
    ("W_hh", np.zeros((H, H + 1)), r"W_hh: expected shape \[H, H\] for the RNN, got \(6, 7\)"),
    ("W_hh", np.zeros((0, 0)), r"W_hh: expected shape \[H, H\]"),
    ("W_hh", np.zeros(H), r"W_hh: expected a 2-D array, got shape \(6,\)"),
    ("W_xh", np.zeros((D + 1, H)), r"W_xh: expected shape \[D, H\] = \(5, 6\), got \(6, 6\)"),
    ("b_h", np.zeros(H + 1), r"b_h: expected shape \[H\] = \(6,\), got \(7,\)"),
    ("h0", np.zeros((B + 1, H)), r"h0: expected shape \[B, H\] = \(3, 6\), got \(4, 6\)"),
]


@MODULES
@pytest.mark.parametrize(("name", "value", "message"), RNN_TYPE_ERRORS)
def test_rnn_forward_type_errors(module, name, value, message):
    args = rnn_args() | {name: value}
    with pytest.raises(TypeError, match=message):
        module.rnn_forward(**args)


@MODULES
@pytest.mark.parametrize(("name", "value", "message"), RNN_VALUE_ERRORS)
def test_rnn_forward_value_errors(module, name, value, message):
    args = rnn_args() | {name: value}
    with pytest.raises(ValueError, match=message):
        module.rnn_forward(**args)


@MODULES
def test_unknown_activation(module):
    with pytest.raises(ValueError, match=r"activation: expected one of 'tanh', 'relu', 'sigmoid', got 'gelu'"):
        module.rnn_forward(**rnn_args(), activation="gelu")


@MODULES
def test_backward_checks_upstream_gradient_and_cache(module):
    _, cache = module.rnn_forward(**rnn_args())
    with pytest.raises(ValueError, match=r"dhs: expected shape \[T, B, H\] = \(4, 3, 6\), got \(4, 3, 5\)"):
        module.rnn_backward(cache, np.zeros((T, B, H - 1)))
    with pytest.raises(TypeError, match=r"dhs: has dtype float32 but the forward pass has dtype float64"):
        module.rnn_backward(cache, np.zeros((T, B, H), np.float32))
    with pytest.raises(TypeError, match=r"cache: expected the RNNCache returned by the forward function, got dict"):
        module.rnn_backward({}, np.zeros((T, B, H)))
    _, _, lstm_cache = module.lstm_forward(**lstm_args())
    with pytest.raises(TypeError, match=r"cache: expected the RNNCache.*got LSTMCache"):
        module.rnn_backward(lstm_cache, np.zeros((T, B, H)))


LSTM_VALUE_ERRORS = [
    (
        {"W_h": np.zeros((H, 3 * H))},
        True,
        r"W_h: expected shape \[H, 4H\] for the LSTM with forget gate.*"
        r"it has 3 gate blocks: pass forget_gate=False",
    ),
    ({}, False, r"W_h: expected shape \[H, 3H\] for the LSTM without forget gate.*pass forget_gate=True"),
    ({"W_h": np.zeros((H, 4 * H + 1))}, True, r"W_h: expected shape \[H, 4H\].*got \(6, 25\)$"),
    ({"W_x": np.zeros((D, 3 * H))}, True, r"W_x: expected shape \[D, 4H\] = \(5, 24\), got \(5, 18\)"),
    ({"b": np.zeros(3 * H)}, True, r"b: expected shape \[4H\] = \(24,\), got \(18,\)"),
    ({"c0": np.zeros((B, H + 1))}, True, r"c0: expected shape \[B, H\] = \(3, 6\), got \(3, 7\)"),
    ({"x": np.zeros((0, B, D))}, True, r"x: T \(time steps\) must be >= 1"),
]


@MODULES
@pytest.mark.parametrize(("changes", "forget_gate", "message"), LSTM_VALUE_ERRORS)
def test_lstm_forward_value_errors(module, changes, forget_gate, message):
    with pytest.raises(ValueError, match=message):
        module.lstm_forward(**(lstm_args() | changes), forget_gate=forget_gate)


@MODULES
def test_lstm_type_errors(module):
    with pytest.raises(TypeError, match=r"c0: has dtype float32 but x has dtype float64"):
        module.lstm_forward(**lstm_args(), c0=np.zeros((B, H), np.float32))
    with pytest.raises(TypeError, match=r"forget_gate: expected True or False, got 'yes'"):
        module.lstm_forward(**lstm_args(), forget_gate="yes")
    _, _, cache = module.lstm_forward(**lstm_args())
    with pytest.raises(ValueError, match=r"dc_T: expected shape \[B, H\] = \(3, 6\), got \(3, 5\)"):
        module.lstm_backward(cache, np.zeros((T, B, H)), np.zeros((B, H - 1)))


OUTPUT_ERRORS = [
    ({"targets": np.zeros((T, B), np.float64)}, TypeError, r"targets: expected an integer array.*float64"),
    ({"targets": np.zeros((T, B), bool)}, TypeError, r"targets: expected an integer array.*bool"),
    ({"targets": np.zeros((T, B + 1), np.int64)}, ValueError, r"targets: expected shape \[T, B\] = \(4, 3\)"),
    (
        {"targets": np.full((T, B), K)},
        ValueError,
        r"targets: class indices must lie in 0 \.\. 6 \(K = 7\) or equal ignore_index \(-100\), got 7",
    ),
    ({"targets": np.full((T, B), -1)}, ValueError, r"targets: class indices must lie in 0 \.\. 6.*got -1"),
    ({"W_yh": np.zeros((H + 1, K))}, ValueError, r"W_yh: expected shape \[H, K\] = \(6, K\)"),
    ({"W_yh": np.zeros((H, K), np.float32)}, TypeError, r"W_yh: has dtype float32 but hs has dtype float64"),
    ({"b_y": np.zeros(K - 1)}, ValueError, r"b_y: expected shape \[K\] = \(7,\), got \(6,\)"),
    ({"hs": np.zeros((T, B))}, ValueError, r"hs: expected a 3-D array"),
]


@MODULES
@pytest.mark.parametrize(("changes", "error", "message"), OUTPUT_ERRORS)
def test_softmax_cross_entropy_errors(module, changes, error, message):
    with pytest.raises(error, match=message):
        module.softmax_cross_entropy(**(output_args() | changes))


@MODULES
def test_unknown_reduction(module):
    with pytest.raises(ValueError, match=r"reduction: expected one of 'sum', 'mean', got 'max'"):
        module.softmax_cross_entropy(**output_args(), reduction="max")


def test_workspace_bytes_errors():
    with pytest.raises(ValueError, match=r"cell: expected one of 'rnn', 'lstm', 'gru', 'layer_norm_lstm', got 'lru'"):
        fb.workspace_bytes("lru", 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"T: must be >= 1, got 0"):
        fb.workspace_bytes("rnn", 0, 1, 1, 1)
    with pytest.raises(TypeError, match=r"dtype: expected float32 or float64, got int32"):
        fb.workspace_bytes("rnn", 1, 1, 1, 1, np.int32)


@pytest.mark.parametrize("too_large", [2**63, 2**70, np.uint64(2**64 - 1)])
@pytest.mark.parametrize("position", range(4))
def test_workspace_bytes_refuses_sizes_beyond_int64_by_name(position, too_large):
    """Sizes are int64 (DESIGN.md section 5): one beyond it is a ValueError naming the size, not the compiled
    module's TypeError ("backward_block_steps(): incompatible function arguments"), which names none."""
    sizes = [10, 2, 3, 4]
    sizes[position] = too_large
    name = "TBDH"[position]
    with pytest.raises(ValueError, match=rf"^{name}: must fit in int64 \(.*\), got {int(too_large)}$"):
        fb.workspace_bytes("lstm", *sizes)


def test_block_steps_refuses_sizes_beyond_int64_by_name():
    with pytest.raises(ValueError, match=r"^B: must fit in int64"):
        block_steps(2**70, 4)
    with pytest.raises(ValueError, match=r"^gate_columns: must fit in int64"):
        block_steps(4, 2**63)


@pytest.mark.parametrize(("cell", "columns"), [("rnn", 1), ("lstm", 4), ("gru", 4)])
def test_workspace_bytes_of_the_largest_int64_sizes(cell, columns):
    """T and B at INT64_MAX: a Python int, at least the states forward keeps and dx. H as large as backward's dZ
    [.., columns * H] allows, or D and H whose packed weights the core could not count in 64 bits (no call could
    run there), are refused by name."""
    n = 2**63 - 1
    H = 2**20
    value = fb.workspace_bytes(cell, n, n, 1, H, np.float64)
    assert isinstance(value, int) and value >= (n * n * H + n * n) * 8
    with pytest.raises(ValueError, match=r"^H: with D = .* the packed weights are more than the core's 64-bit"):
        fb.workspace_bytes(cell, n, n, n, n // columns, np.float64)
    if columns > 1:
        with pytest.raises(ValueError, match=rf"^H: the {columns} \* H columns of the {cell}'s dZ must fit in int64"):
            fb.workspace_bytes(cell, n, n, n, n // columns + 1, np.float64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: fb.lstm_weights_from_torch(np.zeros((8, 3)), np.zeros((8, 3))),
            ValueError,
            r"weight_hh: expected shape \[4H, H\] = \(12, 3\), got \(8, 3\)",
        ),
        (
            lambda: fb.lstm_weights_from_torch(np.zeros((7, 3)), np.zeros((8, 2))),
            ValueError,
            r"weight_ih: expected shape \[4H, D\] = \(8, D\), got \(7, 3\)",
        ),
        (
            lambda: fb.lstm_weights_to_torch(np.zeros((3, 6)), np.zeros((2, 6)), np.zeros(6)),
            ValueError,
            r"W_h: expected shape \[H, 4H\] \(torch has only the cell with forget gate\)",
        ),
        (
            lambda: fb.lstm_weights_to_torch(np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8, np.float32)),
            TypeError,
            r"b: has dtype float32 but W_h has dtype float64",
        ),
    ],
)
def test_converter_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
