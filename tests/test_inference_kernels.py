"""The forward-only kernels of fastbptt._core: the training forward's outputs bit for bit, and no cache that grows
with T."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import DTYPES, assert_nontrivial, gru_problem, lstm_problem, rnn_problem

import fastbptt as fb
from fastbptt import _core

NO_LENGTHS = np.empty(0, dtype=np.int64)
# (T, B, D, H): one step; one sequence; H not a multiple of a packet; a step large enough for the team of two
# threads to split the hidden units between them.
SHAPES = [(1, 3, 5, 7), (6, 1, 4, 13), (9, 5, 11, 19), (150, 16, 24, 64)]
CELLS = ["rnn-tanh", "rnn-relu", "rnn-sigmoid", "lstm", "lstm-no-forget-gate", "gru"]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    saved = fb.get_num_threads()
    fb.set_num_threads(request.param)
    yield request.param
    fb.set_num_threads(saved)


def final_rows(states: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """states[lengths[b] - 1, b] for every sequence b (every T steps without lengths)."""
    T, B = states.shape[:2]
    steps = np.full(B, T) if lengths.size == 0 else lengths
    return states[steps - 1, np.arange(B)]


def both_forwards(cell: str, shape, dtype, lengths: np.ndarray):
    """(training outputs, inference outputs): hs and the final states, for the same problem."""
    T, B, D, H = shape
    rng = np.random.default_rng(sum(shape) * 7 + len(cell))
    if cell.startswith("rnn"):
        p = {k: np.asarray(v, dtype=dtype) for k, v in rnn_problem(rng, T, B, D, H).items()}
        activation = cell.split("-")[1]
        args = (p["x"], p["W_xh"], p["W_hh"], p["b_h"], p["h0"], activation, lengths)
        hs = _core.rnn_forward(*args)
        return (hs, final_rows(hs, lengths)), _core.rnn_forward_inference(*args)
    if cell.startswith("lstm"):
        forget_gate = cell == "lstm"
        p = {k: np.asarray(v, dtype=dtype) for k, v in lstm_problem(rng, T, B, D, H, forget_gate).items()}
        args = (p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], forget_gate, lengths)
        hs, cs, _ = _core.lstm_forward(*args)
        return (hs, final_rows(hs, lengths), final_rows(cs, lengths)), _core.lstm_forward_inference(*args)
    p = {k: np.asarray(v, dtype=dtype) for k, v in gru_problem(rng, T, B, D, H).items()}
    args = (p["x"], p["W_x"], p["W_h"], p["b"], p["b_hn"], p["h0"], lengths)
    hs, _, _ = _core.gru_forward(*args)
    return (hs, final_rows(hs, lengths)), _core.gru_forward_inference(*args)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_inference_gives_the_training_forward_s_bits(cell, dtype, shape, with_lengths, threads):
    T, B = shape[:2]
    lengths = NO_LENGTHS
    if with_lengths:
        # any order, the longest and a one-step sequence among them
        lengths = np.random.default_rng(T * B).integers(1, T + 1, B).astype(np.int64)
        lengths[0] = T
        lengths[-1] = 1 if B > 1 else T
    training, inference = both_forwards(cell, shape, dtype, lengths)
    assert len(training) == len(inference)
    names = ["hs", "h_T", "c_T"]
    for name, expected, actual in zip(names, training, inference):
        assert actual.dtype == dtype and actual.shape == expected.shape, name
        assert np.all(np.isfinite(actual)), name
        assert np.array_equal(actual, expected), f"{name}: inference differs from the training forward"
    if cell != "rnn-relu":
        assert_nontrivial(final_rows(inference[0], lengths))
    if with_lengths:
        past_end = np.arange(T)[:, None] >= lengths[None, :]
        assert not np.any(inference[0][past_end]), "hs past a sequence's end must be zero"


def test_inference_refuses_bad_shapes():
    rng = np.random.default_rng(3)
    p = lstm_problem(rng, 4, 2, 3, 5)
    with pytest.raises(ValueError, match="W_h"):
        _core.lstm_forward_inference(
            p["x"], p["W_x"], p["W_h"][:, :-1].copy(), p["b"], p["h0"], p["c0"], True, NO_LENGTHS
        )
    with pytest.raises(ValueError, match="lengths"):
        _core.lstm_forward_inference(
            p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], True, np.array([5, 1], dtype=np.int64)
        )


# Runs one forward in a fresh process and prints how much its resident memory grew (peak during the call minus
# before it, in bytes) and how many bytes its outputs hold. A fresh process with the array cache off: no earlier
# call's memory is reused, so every page the call writes shows.
MEASURE = r"""
import json, sys
import numpy as np
import fastbptt as fb
from fastbptt import _core

cell, kind, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
B, D, H = 16, 16, 64
G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
fb.set_array_cache_limit(0)
rng = np.random.default_rng(0)

def array(*shape, scale=1.0):
    out = np.empty(shape, dtype=np.float32)
    rng.random(dtype=np.float32, out=out)
    out -= 0.5
    out *= 2 * scale
    return out

k = 1 / np.sqrt(H)
x, h0, c0 = array(T, B, D), array(B, H, scale=0.5), array(B, H, scale=0.5)
W_x, W_h, b, b_hn = array(D, G * H, scale=k), array(H, G * H, scale=k), array(G * H, scale=k), array(H, scale=k)
none = np.empty(0, dtype=np.int64)
calls = {
    ("rnn", "inference"): lambda x: _core.rnn_forward_inference(x, W_x, W_h, b, h0, "tanh", none),
    ("rnn", "training"): lambda x: _core.rnn_forward(x, W_x, W_h, b, h0, "tanh", none),
    ("lstm", "inference"): lambda x: _core.lstm_forward_inference(x, W_x, W_h, b, h0, c0, True, none),
    ("lstm", "training"): lambda x: _core.lstm_forward(x, W_x, W_h, b, h0, c0, True, none),
    ("gru", "inference"): lambda x: _core.gru_forward_inference(x, W_x, W_h, b, b_hn, h0, none),
    ("gru", "training"): lambda x: _core.gru_forward(x, W_x, W_h, b, b_hn, h0, none),
}
call = calls[cell, kind]
call(x[:2])  # threads started, code paged in

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from the current size
before = status("VmRSS")
outputs = call(x)
growth = status("VmHWM") - before
outputs = outputs if isinstance(outputs, tuple) else (outputs,)
print(json.dumps({"growth": growth, "outputs": sum(o.nbytes for o in outputs), "hs": outputs[0].nbytes}))
"""


def measure(cell: str, kind: str, T: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, cell, kind, str(T)], capture_output=True, text=True)
    if "clear_refs" in done.stderr:
        pytest.skip("needs a writable /proc/self/clear_refs to reset the peak resident size")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # an editable install may print its rebuild before


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_inference_memory_beyond_the_outputs_does_not_grow_with_T(cell):
    """From T = 2000 to 4000 the inference call's peak memory grows by its outputs' growth alone; the training
    forward, measured the same way, grows by its cache too (the measurement sees a buffer proportional to T)."""
    short, long = 2000, 4000
    beyond_outputs, beyond_hs, hs_growth = {}, {}, 0
    for kind in ("inference", "training"):
        a, b = measure(cell, kind, short), measure(cell, kind, long)
        hs_growth = b["hs"] - a["hs"]
        assert hs_growth > 0
        beyond_outputs[kind] = (b["growth"] - a["growth"]) - (b["outputs"] - a["outputs"])
        beyond_hs[kind] = (b["growth"] - a["growth"]) - hs_growth
    figures = {"beyond outputs": beyond_outputs, "beyond hs": beyond_hs, "hs": hs_growth}
    # hs grows by 8 MiB; half a MiB of slack covers page rounding and the allocator's bookkeeping
    assert abs(beyond_outputs["inference"]) < 512 * 1024, figures
    assert abs(beyond_hs["inference"]) < 512 * 1024, figures
    assert abs(beyond_outputs["training"]) < 512 * 1024, figures  # the training forward's cache is its output
    if cell != "rnn":  # the RNN's training forward keeps nothing but hs either
        # the LSTM's and the GRU's training forwards keep several times hs: the measurement sees it
        assert beyond_hs["training"] > 2 * hs_growth, figures
