"""Reliability: NaN and Inf, determinism, concurrent callers and the GIL, memory growth, sizes too large to
allocate, and the canary of the sanitizer build (tools/sanitize.sh).

The long versions of the leak and bad-input campaigns are tools/leak_check.py and tools/fuzz.sh.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import GRU_INPUTS, LSTM_INPUTS, RNN_INPUTS, TOL, gru_problem, lstm_problem, rnn_problem

import fastbptt as fb
from fastbptt import _core
from fastbptt import reference as ref
from fastbptt.kernels import _checks
from fastbptt.kernels._checks import INT64_MAX
from fastbptt.kernels.checkpoint import block_steps
from fastbptt.kernels.functional import NO_LENGTHS

MODULES = pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])
ACTIVATIONS = pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
SANITIZED = os.environ.get("FASTBPTT_SANITIZED", "")
HAS_OPENMP = "OpenMP" in fb.build_info()["threading"]


def as_dtype(problem: dict, dtype) -> dict:
    return {name: np.asarray(value, dtype=dtype) for name, value in problem.items()}


# ---------------------------------------------------------------------------------------------------------------
# NaN and Inf (README "Reliability"): IEEE arithmetic, the limits of the activations, no NaN turned into a number

SPECIAL = [np.inf, -np.inf, np.nan, 0.5]
H_SPECIAL = 21  # full SIMD packets and a partial one, for float32 and float64 alike


def run_in_threads(worker: Callable[[int], None], count: int) -> None:
    """Runs worker(0) .. worker(count-1) on threads of their own, all at once; fails if one hangs."""
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread hangs"


def special_rnn_input(dtype):
    """One step, one batch row per special value; z = x W_xh with W_xh all ones, so every unit sees that value."""
    x = np.array(SPECIAL, dtype=dtype).reshape(1, len(SPECIAL), 1)
    W_xh = np.ones((1, H_SPECIAL), dtype)
    W_hh = np.zeros((H_SPECIAL, H_SPECIAL), dtype)
    return x, W_xh, W_hh, np.zeros(H_SPECIAL, dtype)


@MODULES
@DTYPES
@ACTIVATIONS
def test_activation_limits(module, dtype, activation):
    hs, _ = module.rnn_forward(*special_rnn_input(dtype), activation=activation)
    expected = {
        "tanh": [1.0, -1.0, np.nan, np.tanh(0.5)],
        "sigmoid": [1.0, 0.0, np.nan, 1 / (1 + np.exp(-0.5))],
        "relu": [np.inf, 0.0, np.nan, 0.5],
    }[activation]
    for row, value in enumerate(expected):
        if np.isnan(value):
            assert np.all(np.isnan(hs[0, row])), f"NaN became {hs[0, row]}"
        else:
            np.testing.assert_allclose(hs[0, row], value, rtol=TOL[dtype]["outputs"], atol=0)
    # the limits are exact, not merely close
    if activation != "relu":
        np.testing.assert_array_equal(hs[0, :2], np.array(expected[:2], dtype)[:, None] * np.ones(H_SPECIAL, dtype))


@MODULES
@DTYPES
@pytest.mark.parametrize("forget_gate", [True, False])
def test_lstm_limits(module, dtype, forget_gate):
    """Every gate pre-activation +inf, -inf, NaN or 0.5 (one batch row each), states starting at zero."""
    G, H = (4 if forget_gate else 3), H_SPECIAL
    x = np.array(SPECIAL, dtype=dtype).reshape(1, len(SPECIAL), 1)
    hs, c_T, cache = module.lstm_forward(
        x, np.ones((1, G * H), dtype), np.zeros((H, G * H), dtype), np.zeros(G * H, dtype), forget_gate=forget_gate
    )
    s = 1 / (1 + np.exp(-0.5))
    # +inf: i = f = o = 1, g = 1, so C = 1 and h = tanh(1); -inf: i = f = o = 0, g = -1, so C = 0 * -1 = -0, h = 0.
    expected_c = [1.0, 0.0, np.nan, s * np.tanh(0.5)]
    expected_h = [np.tanh(1.0), 0.0, np.nan, s * np.tanh(s * np.tanh(0.5))]
    for row in range(len(SPECIAL)):
        for got, want in ((c_T[row], expected_c[row]), (hs[0, row], expected_h[row])):
            if np.isnan(want):
                assert np.all(np.isnan(got))
            else:
                np.testing.assert_allclose(got, want, rtol=TOL[dtype]["outputs"], atol=0)
    gates = cache.gates[0]
    np.testing.assert_array_equal(gates[0], np.tile(np.array([1.0], dtype), G * H))  # sigmoid(+inf), tanh(+inf)
    g_block = slice(2 * H, 3 * H) if forget_gate else slice(H, 2 * H)
    np.testing.assert_array_equal(gates[1, g_block], -np.ones(H, dtype))  # tanh(-inf)
    np.testing.assert_array_equal(np.delete(gates[1], np.arange(G * H)[g_block]), 0)  # sigmoid(-inf)
    assert np.all(np.isnan(gates[2]))


@DTYPES
@ACTIVATIONS
def test_extreme_finite_preactivations_match_the_reference(dtype, activation):
    """Pre-activations far into saturation (up to the largest finite value): the fast path equals the limits as the
    reference does, within the output tolerance (absolute for results near 0)."""
    big = float(np.finfo(dtype).max)
    values = np.array([20, -20, 50, -50, 100, -100, 1e4, -1e4, 1e30, -1e30, big, -big], dtype=dtype)
    x = values.reshape(1, -1, 1)
    args = (x, np.ones((1, 5), dtype), np.zeros((5, 5), dtype), np.zeros(5, dtype))
    fast, _ = fb.rnn_forward(*args, activation=activation)
    with np.errstate(over="ignore"):
        expected, _ = ref.rnn_forward(*args, activation=activation)
    np.testing.assert_allclose(fast, expected, rtol=TOL[dtype]["outputs"], atol=TOL[dtype]["outputs"])


def nan_in_one_row(problem: dict, row: int, step: int) -> dict:
    problem = {name: value.copy() for name, value in problem.items()}
    problem["x"][step, row, 0] = np.nan
    return problem


def assert_only_row_is_nan(array, row, what):
    """array [..., B, H]: all NaN in ``row``, finite elsewhere."""
    others = np.delete(array, row, axis=-2)
    assert np.all(np.isfinite(others)), f"{what}: a NaN in one batch row reached another row"
    assert np.all(np.isnan(np.take(array, row, axis=-2))), f"{what}: the NaN did not propagate through its row"


@MODULES
@DTYPES
@ACTIVATIONS
def test_rnn_nan_stays_in_its_batch_row(module, dtype, activation, rng):
    T, B, row, step = 6, 5, 2, 3
    p = nan_in_one_row(as_dtype(rnn_problem(rng, T, B, 4, 9), dtype), row, step)
    hs, cache = module.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=activation)
    assert np.all(np.isfinite(hs[:step])), "steps before the NaN are affected"
    assert_only_row_is_nan(hs[step:], row, "hs")
    g = module.rnn_backward(cache, p["dhs"])
    assert np.all(np.isfinite(np.delete(g.dx, row, axis=1))) and np.all(np.isfinite(np.delete(g.dh0, row, axis=0)))
    # the weight gradients sum over the rows: the NaN reaches them (x holds it, and 0 * NaN is NaN)
    assert np.any(np.isnan(g.dW_xh))


@MODULES
@DTYPES
@pytest.mark.parametrize("forget_gate", [True, False])
def test_lstm_nan_stays_in_its_batch_row(module, dtype, forget_gate, rng):
    T, B, row, step = 6, 5, 1, 2
    p = nan_in_one_row(as_dtype(lstm_problem(rng, T, B, 4, 7, forget_gate), dtype), row, step)
    hs, c_T, cache = module.lstm_forward(*(p[k] for k in LSTM_INPUTS), forget_gate=forget_gate)
    assert np.all(np.isfinite(hs[:step]))
    assert_only_row_is_nan(hs[step:], row, "hs")
    assert_only_row_is_nan(c_T, row, "c_T")
    assert_only_row_is_nan(cache.gates[step:], row, "gates")
    g = module.lstm_backward(cache, p["dhs"], p["dc_T"])
    for name in ("dh0", "dc0"):
        assert np.all(np.isfinite(np.delete(getattr(g, name), row, axis=0))), name
    assert np.all(np.isfinite(np.delete(g.dx, row, axis=1)))
    assert np.any(np.isnan(g.dW_x))


@MODULES
@DTYPES
def test_loss_nan_stays_in_its_row(module, dtype, rng):
    T, B, H, K, row = 3, 4, 5, 6, 2
    hs = rng.uniform(-1, 1, (T, B, H)).astype(dtype)
    hs[1, row, 0] = np.nan
    loss, g = module.softmax_cross_entropy(
        hs, rng.uniform(-1, 1, (H, K)).astype(dtype), np.zeros(K, dtype), rng.integers(0, K, (T, B))
    )
    assert np.isnan(loss)
    assert np.all(np.isfinite(np.delete(g.dhs[1], row, axis=0))) and np.all(np.isfinite(g.dhs[[0, 2]]))
    assert np.all(np.isnan(g.dhs[1, row]))


@DTYPES
def test_nan_inputs_give_the_reference_result(dtype, rng):
    """NaN and Inf scattered over the inputs: the fast path has NaN exactly where the reference has, and equal
    finite values elsewhere (the NaN/finite pattern of the forward outputs is part of the contract)."""
    p = as_dtype(lstm_problem(rng, 5, 6, 4, 9), dtype)
    p["x"].flat[rng.choice(p["x"].size, 4, replace=False)] = [np.nan, np.inf, -np.inf, np.nan]
    fast = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    with np.errstate(invalid="ignore"):  # inf - inf in NumPy's products
        expected = ref.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    for got, want in zip(fast[:2], expected[:2]):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=TOL[dtype]["outputs"], atol=TOL[dtype]["outputs"])


@DTYPES
@ACTIVATIONS
def test_nonfinite_upstream_gradient_gives_the_reference_result(dtype, activation, rng):
    """NaN and Inf in dL/dh: the gradients have NaN exactly where the reference has (IEEE: the relu gradient
    multiplies dh by its 0/1 mask, so inf * 0 and NaN * 0 at an inactive unit are NaN, as in the reference), and
    equal finite values elsewhere."""
    p = as_dtype(rnn_problem(rng, 5, 6, 4, 9), dtype)
    p["dhs"].flat[rng.choice(p["dhs"].size, 6, replace=False)] = [np.nan, np.inf, -np.inf] * 2
    _, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=activation)
    fast = fb.rnn_backward(cache, p["dhs"])
    with np.errstate(invalid="ignore"):
        expected = ref.rnn_backward(cache, p["dhs"])
    for name, got, want in zip(fast._fields, fast, expected):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        finite = np.isfinite(want)
        scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
        tol = TOL[dtype]["grads"]
        np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol * scale, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Determinism


def rnn_run(p, activation="tanh", lengths=None):
    hs, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=activation, lengths=lengths)
    return (hs, *fb.rnn_backward(cache, p["dhs"]))


def lstm_run(p, forget_gate=True, lengths=None):
    hs, c_T, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS), forget_gate=forget_gate, lengths=lengths)
    return (hs, c_T, *fb.lstm_backward(cache, p["dhs"], p["dc_T"]))


def gru_run(p, lengths=None):
    hs, cache = fb.gru_forward(*(p[k] for k in GRU_INPUTS), lengths=lengths)
    return (hs, *fb.gru_backward(cache, p["dhs"]))


CELLS = {"rnn": (rnn_problem, rnn_run), "lstm": (lstm_problem, lstm_run), "gru": (gru_problem, gru_run)}


def loss_run(p):
    loss, g = fb.softmax_cross_entropy(p["hs"], p["W_yh"], p["b_y"], p["targets"])
    return (np.asarray(loss), *g)


def loss_problem(rng, T, B, H, K, dtype):
    return {
        "hs": rng.uniform(-1, 1, (T, B, H)).astype(dtype),
        "W_yh": rng.uniform(-1, 1, (H, K)).astype(dtype),
        "b_y": rng.uniform(-1, 1, K).astype(dtype),
        "targets": rng.integers(0, K, (T, B)),
    }


# How many leading results of each kernel's run are forward results (outputs, final states, the loss).
FORWARD_RESULTS = {"rnn": 1, "lstm": 2, "softmax_cross_entropy": 1}


def kernels(rng, dtype, size="small"):
    """(name, zero-argument callable) of every kernel's forward + backward on fixed inputs."""
    T, B, D, H, K = {"small": (9, 5, 7, 13, 11), "medium": (8, 32, 64, 96, 50)}[size]
    rnn = as_dtype(rnn_problem(rng, T, B, D, H), dtype)
    lstm = as_dtype(lstm_problem(rng, T, B, D, H), dtype)
    lstm3 = as_dtype(lstm_problem(rng, T, B, D, H, forget_gate=False), dtype)
    loss = loss_problem(rng, T, B, H, K, dtype)
    return [
        *((f"rnn-{a}", lambda a=a: rnn_run(rnn, a)) for a in ("tanh", "relu", "sigmoid")),
        ("lstm", lambda: lstm_run(lstm)),
        ("lstm-no-forget-gate", lambda: lstm_run(lstm3, forget_gate=False)),
        ("softmax_cross_entropy", lambda: loss_run(loss)),
    ]


def assert_bit_identical(results, expected, what=""):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want, err_msg=what, strict=True)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_ignores_what_earlier_calls_left_in_its_scratch(cell, rng):
    """The backward's block scratch outlives a call (cpp/src/backward_scratch.hpp). A call with variable lengths,
    which relies on zeros in the scratch rows of finished sequences, gives the same bits after calls of the same
    and of other shapes, at full length and with large values, have filled that scratch with other numbers."""
    make, run = CELLS[cell]
    lengths = np.array([9, 3, 7, 1, 5])
    p = make(rng, 9, 5, 4, 6)
    first = run(p, lengths=lengths)
    for other in (make(rng, 9, 5, 4, 6), make(rng, 40, 7, 3, 10)):
        run({**other, "x": 50 * other["x"], "dhs": 50 * other["dhs"]})
    again = run(p, lengths=lengths)
    assert_bit_identical(again, first, "after calls that filled the scratch")


@DTYPES
@pytest.mark.parametrize(("threads", "size", "repeats"), [(1, "small", 100), (2, "small", 100), (2, "medium", 5)])
def test_repeated_calls_are_bit_identical(dtype, threads, size, repeats, rng, restore_threads):
    """Every kernel's forward + backward, called again and again, gives the same bits. The medium size is large
    enough for the products to run on both threads (the small one stays on one whatever the setting)."""
    if threads > 1 and not HAS_OPENMP:
        pytest.skip("this build has no OpenMP")
    fb.set_num_threads(threads)
    for name, run in kernels(rng, dtype, size):
        first = run()
        for _ in range(repeats):
            assert_bit_identical(run(), first, name)


@DTYPES
def test_results_do_not_depend_on_where_the_arrays_are(dtype, rng):
    """The same values at other addresses (every multiple of the item size inside 64 bytes) give the same bits."""
    p = as_dtype(lstm_problem(rng, 7, 5, 11, 13), dtype)
    expected = lstm_run(p)
    itemsize = np.dtype(dtype).itemsize
    for offset in range(itemsize, 64, itemsize):
        moved = {}
        for name, value in p.items():
            raw = np.empty(value.nbytes + 128, np.uint8)
            start = (-raw.ctypes.data) % 64 + offset
            moved[name] = raw[start : start + value.nbytes].view(dtype).reshape(value.shape)
            moved[name][...] = value
        assert_bit_identical(lstm_run(moved), expected, f"offset {offset}")


@DTYPES
def test_across_thread_counts(dtype, rng, restore_threads):
    """1 and 2 threads: the forward results (outputs, final states, loss) are bit-identical, because the packed
    products split the result into disjoint blocks and the pointwise passes and column sums run in one order.
    The gradients that come out of Eigen's general products (dW_x, dW_h, dW_yh, and dx) may differ in the last bits;
    measured on the medium problem: relative to max(1, |value|) at most 5.4e-5 in float32 and 9.3e-14 in float64,
    inside TOL["grads"]."""
    if not HAS_OPENMP:
        pytest.skip("this build has no OpenMP")
    for name, run in kernels(rng, dtype, "medium"):
        fb.set_num_threads(1)
        single = run()
        fb.set_num_threads(2)
        double = run()
        forward = FORWARD_RESULTS[name.split("-")[0]]
        assert_bit_identical(double[:forward], single[:forward], name)
        tol = TOL[dtype]["grads"]
        for got, want in zip(double[forward:], single[forward:]):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(want)))))


# ---------------------------------------------------------------------------------------------------------------
# Concurrent Python threads


def read_only(problem: dict) -> dict:
    for value in problem.values():
        value.setflags(write=False)
    return problem


@pytest.mark.parametrize("threads", [1, 2])
def test_eight_python_threads_give_the_sequential_bits(threads, rng, restore_threads):
    """8 Python threads x 100 calls of every kernel on shared read-only inputs, all at once (each thread's calls
    run on the core's own threads too when there are 2), equal the sequential results bit for bit."""
    if threads > 1 and not HAS_OPENMP:
        pytest.skip("this build has no OpenMP")
    fb.set_num_threads(threads)
    runs = []
    for dtype in (np.float32, np.float64):
        rnn = read_only(as_dtype(rnn_problem(rng, 6, 4, 5, 11), dtype))
        lstm = read_only(as_dtype(lstm_problem(rng, 6, 4, 5, 11), dtype))
        loss = read_only(loss_problem(rng, 6, 4, 11, 7, dtype))
        runs += [lambda p=rnn: rnn_run(p, "tanh"), lambda p=lstm: lstm_run(p), lambda p=loss: loss_run(p)]
    expected = [run() for run in runs]
    start = threading.Barrier(8)
    failures: list[str] = []

    def worker(index: int) -> None:
        start.wait()
        try:
            for call in range(100):
                k = (index + call) % len(runs)
                for got, want in zip(runs[k](), expected[k]):
                    if got.tobytes() != want.tobytes():
                        failures.append(f"thread {index}, call {call}, kernel {k}: bits differ")
        except Exception as error:  # reported below; an exception must not kill the thread silently
            failures.append(f"thread {index}: {type(error).__name__}: {error}")

    run_in_threads(worker, 8)
    assert not failures, failures[:5]


def _python_rate(stop: threading.Event) -> float:
    """Iterations per second of a pure-Python loop until ``stop`` is set."""
    n, t0 = 0, time.perf_counter()
    while not stop.is_set():
        n += 1
    return n / (time.perf_counter() - t0)


def _solo_rate(seconds: float) -> float:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return _python_rate(stop)


def _call_until(call, seconds: float, stop: threading.Event) -> None:
    """Calls ``call`` again and again for ``seconds``, then sets ``stop``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        call()
    stop.set()


def long_calls(rng):
    """One call per kernel that runs for tens of milliseconds at least (seconds under sanitizers)."""
    T, B, D, H, K = 200, 64, 64, 128, 400
    rnn = as_dtype(rnn_problem(rng, T, B, D, H), np.float32)
    lstm = as_dtype(lstm_problem(rng, T, B, D, H), np.float32)
    _, rnn_cache = fb.rnn_forward(*(rnn[k] for k in RNN_INPUTS))
    _, _, lstm_cache = fb.lstm_forward(*(lstm[k] for k in LSTM_INPUTS))
    loss = loss_problem(rng, T, B, H, K, np.float32)
    return {
        "rnn_forward": lambda: fb.rnn_forward(*(rnn[k] for k in RNN_INPUTS)),
        "rnn_backward": lambda: fb.rnn_backward(rnn_cache, rnn["dhs"]),
        "lstm_forward": lambda: fb.lstm_forward(*(lstm[k] for k in LSTM_INPUTS)),
        "lstm_backward": lambda: fb.lstm_backward(lstm_cache, lstm["dhs"], lstm["dc_T"]),
        "softmax_cross_entropy": lambda: fb.softmax_cross_entropy(*(loss[k] for k in ("hs", "W_yh", "b_y", "targets"))),
    }


def test_kernels_release_the_gil(rng, restore_threads):
    """A pure-Python thread keeps at least half its solo speed while a kernel runs in another thread.

    A kernel that held the GIL would stop it for the whole call (a ratio near 0; Python would switch only between
    calls). The core runs on 1 thread here so that the two threads have a core each; the best of 3 tries absorbs
    load from other processes on the machine.
    """
    fb.set_num_threads(1)
    for name, call in long_calls(rng).items():
        call()  # warm up
        ratios = []
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            kernel_seconds = time.perf_counter() - t0
            solo = _solo_rate(0.1)
            stop = threading.Event()
            worker = threading.Thread(target=_call_until, args=(call, max(0.2, 2 * kernel_seconds), stop))
            worker.start()
            concurrent = _python_rate(stop)
            worker.join()
            ratios.append(concurrent / solo)
            if ratios[-1] >= 0.5:
                break
        assert max(ratios) >= 0.5, (
            f"{name}: the Python thread ran at {ratios} of its solo speed (kernel {kernel_seconds:.3f} s)"
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_errors_in_concurrent_calls_reach_each_caller(threads, rng, restore_threads):
    """8 threads at once, each alternating good calls, calls the Python checks refuse, and calls the core itself
    refuses (a hand-built cache whose arrays disagree, so the core's own check throws with the GIL released):
    every caller gets its own right exception or result; the process neither terminates nor mixes them up."""
    if threads > 1 and not HAS_OPENMP:
        pytest.skip("this build has no OpenMP")
    fb.set_num_threads(threads)
    p = read_only(as_dtype(lstm_problem(rng, 30, 16, 24, 40), np.float32))
    good_expected = lstm_run(p)
    _, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    # gates of another T: the Python layer checks dhs against x, the core finds that gates disagree with it
    forged = dataclasses.replace(cache, gates=np.zeros((29, 16, 160), np.float32))
    bad_dhs = np.zeros((30, 16, 40), np.float32)
    start = threading.Barrier(8)
    failures: list[str] = []

    def worker(index: int) -> None:
        start.wait()
        for call in range(30):
            kind = (index + call) % 3
            try:
                if kind == 0:
                    got = lstm_run(p)
                    if any(a.tobytes() != b.tobytes() for a, b in zip(got, good_expected)):
                        failures.append(f"thread {index}: a good call gave other bits")
                    continue
                if kind == 1:
                    fb.lstm_forward(p["x"], p["W_x"][:, :-1], p["W_h"], p["b"])
                else:
                    fb.lstm_backward(forged, bad_dhs)
                failures.append(f"thread {index}: a bad call (kind {kind}) returned")
            except ValueError as error:
                expected = "W_x: expected shape" if kind == 1 else "gates: expected shape"
                if not str(error).startswith(expected):
                    failures.append(f"thread {index}: kind {kind} raised {error}")
            except Exception as error:
                failures.append(f"thread {index}: kind {kind} raised {type(error).__name__}: {error}")

    run_in_threads(worker, 8)
    assert not failures, failures[:5]


# ---------------------------------------------------------------------------------------------------------------
# Memory: no growth over many calls (the full 100,000-call runs are tools/leak_check.py)

LEAK_CALLS = int(os.environ.get("FASTBPTT_LEAK_CALLS", "20000"))
MiB = 1 << 20
needs_rss = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm") or bool(SANITIZED),
    reason="reads /proc/self/statm (Linux); ASan's quarantine holds freed memory on purpose",
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(call, calls: int, warm_up: int = 2000) -> int:
    for _ in range(warm_up):
        call()
    before = rss_bytes()
    for _ in range(calls):
        call()
    return rss_bytes() - before


def small_training_call(rng):
    rnn = rnn_problem(rng, 3, 2, 4, 5)
    lstm = lstm_problem(rng, 3, 2, 4, 5)
    loss = loss_problem(rng, 3, 2, 5, 6, np.float64)

    def call():
        return (*rnn_run(rnn, "tanh"), *lstm_run(lstm), *loss_run(loss))

    return call


# Who refuses a bad call, and where refused_by finds the exception raised (the message tells binding from core)
LAYERS = {
    "python": "the Python checks (in kernels/_checks.py)",
    "binding": "the binding (inside the compiled call)",
    "core": "the C++ core (inside the compiled call)",
}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A bad call and the layer that must refuse it: "python" (fastbptt's checks, python/fastbptt/kernels/_checks.py),
    "binding" (the compiled module's argument conversion or its own checks, cpp/bindings) or "core" (the C++ core's
    shape checks, which see the time-major matrices [T*B, n]), with ``error`` and a message ``message`` matches."""

    layer: str
    error: type[Exception]
    message: str  # a regular expression for the whole message
    call: Callable[[], object]
    slow: bool = False  # pybind11 spells out every overload of a TypeError's function: about 1.4 ms a call


def raising_code(error: BaseException) -> types.CodeType:
    """The code of the innermost Python frame of ``error``'s traceback. Compiled code has no frame: what it raises
    comes out of the frame that called it."""
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code


def refused_by(refusal: Refusal) -> str:
    """Runs the bad call; returns ``"<error type>: <first line of its message>"`` once it is sure that the layer the
    refusal names refused it: the right type and message, raised in _checks.py for "python", and for "binding" and
    "core" raised inside the compiled function that ``refusal.call`` calls itself (no Python frame below the call;
    the message tells the binding's checks from the core's). AssertionError otherwise, or when the call returns."""
    try:
        refusal.call()
    except Exception as error:
        message = str(error)
        code = raising_code(error)
        reached = code.co_filename == _checks.__file__ if refusal.layer == "python" else code is refusal.call.__code__
        if type(error) is not refusal.error or not re.fullmatch(refusal.message, message, re.DOTALL) or not reached:
            raise AssertionError(
                f"meant for the {refusal.layer} layer ({refusal.error.__name__}: {refusal.message}), the call raised "
                f"{type(error).__name__}: {message[:200]} in {code.co_filename}, function {code.co_name}"
            ) from error
        return f"{type(error).__name__}: {message.splitlines()[0]}"
    raise AssertionError(f"meant for the {refusal.layer} layer, the bad call returned")


def refusals(rng) -> list[Refusal]:
    """Bad calls of each layer on a tiny LSTM problem (T, B, D, H = 3, 2, 4, 5: the core sees gates as [6, 20]).
    The binding and core calls go to fastbptt._core directly, past the Python checks, with arrays of the dtypes,
    C order and ndim the binding takes. Before the core's check throws, the binding has allocated the results (dW_x,
    dW_h, db, the norms [T+1, B], dx, dh0, dc0 for backward; hs, cs, gates for forward), which the exception must
    free; the binding's own check of ndim throws after dW_x, dW_h, db and the norms."""
    p = lstm_problem(rng, 3, 2, 4, 5)
    x, W_x, W_h, b, h0, c0, dhs, dc_T = (p[k] for k in ("x", "W_x", "W_h", "b", "h0", "c0", "dhs", "dc_T"))
    hs, cs, gates = _core.lstm_forward(x, W_x, W_h, b, h0, c0, True, NO_LENGTHS)
    two_steps, matrix, single = gates[:2], gates.reshape(6, 20), gates.astype(np.float32)
    f32 = {name: value.astype(np.float32) for name, value in p.items()}
    W_x_short = np.ascontiguousarray(f32["W_x"][:, :-1])
    return [
        Refusal(
            "python",
            ValueError,
            r"W_hh: expected shape \[H, H\] for the RNN, got \(5, 20\)",
            lambda: fb.rnn_forward(x, W_x, W_h, b),
        ),
        Refusal(
            "core",
            ValueError,
            r"gates: expected shape \[6, 20\], got \[4, 20\]",
            lambda: _core.lstm_backward(x, W_x, W_h, h0, c0, two_steps, hs, cs, dhs, dc_T, True, NO_LENGTHS, True),
        ),
        Refusal(
            "core",
            ValueError,
            r"W_x: expected shape \[4, 20\], got \[4, 19\]",
            lambda: _core.lstm_forward(
                f32["x"], W_x_short, f32["W_h"], f32["b"], f32["h0"], f32["c0"], True, NO_LENGTHS
            ),
        ),
        Refusal(
            "binding",
            ValueError,
            r"gates: expected 3 dimensions, got 2",
            lambda: _core.lstm_backward(x, W_x, W_h, h0, c0, matrix, hs, cs, dhs, dc_T, True, NO_LENGTHS, True),
        ),
        Refusal(
            "binding",
            TypeError,
            r"lstm_backward\(\): incompatible function arguments\..*",
            lambda: _core.lstm_backward(x, W_x, W_h, h0, c0, single, hs, cs, dhs, dc_T, True, NO_LENGTHS, True),
            slow=True,
        ),
    ]


def refusals_of(rng, layers, slow: bool = False) -> list[Refusal]:
    """The bad calls of :func:`refusals` meant for ``layers`` (the slow ones only with ``slow``)."""
    chosen = [r for r in refusals(rng) if r.layer in layers and (slow or not r.slow)]
    assert {r.layer for r in chosen} == set(layers)
    return chosen


def failing_calls(rng, layers=("python", "binding", "core"), slow: bool = False):
    """One call that makes every bad call of :func:`refusals_of` ``layers``, checking each time that its layer
    refused it (:func:`refused_by`)."""
    chosen = refusals_of(rng, layers, slow)

    def call():
        for refusal in chosen:
            refused_by(refusal)

    return call


def test_each_refusal_reaches_its_layer(rng):
    """The canary of the leak checks of errors: every bad call is refused where it is meant to be."""
    all_refusals = refusals(rng)
    assert {r.layer for r in all_refusals} == {"python", "binding", "core"}
    for refusal in all_refusals:
        refused_by(refusal)


def test_refused_by_tells_the_layers_apart(rng):
    """A refusal by another layer fails the canary: the hand-built cache that tools/leak_check.py once meant for the
    core (hs of 2 steps with dhs of 2 steps) is refused by the Python checks of dhs. A call through fastbptt's
    functions never counts as the binding's or the core's, even where the core refused it (gates of 2 steps): only
    a call of fastbptt._core itself shows by its traceback that no Python check refused it."""
    p = lstm_problem(rng, 3, 2, 4, 5)
    _, _, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    forged = dataclasses.replace(cache, hs=np.zeros((2, 2, 5)))
    with pytest.raises(AssertionError, match="raised ValueError: dhs: expected shape .* in .*_checks.py"):
        refused_by(Refusal("core", ValueError, ".*", lambda: fb.lstm_backward(forged, np.zeros((2, 2, 5)))))
    two_steps = dataclasses.replace(cache, gates=np.zeros((2, 2, 20)))
    with pytest.raises(
        AssertionError, match=r"raised ValueError: gates: expected shape \[6, 20\].*function lstm_backward"
    ):
        refused_by(Refusal("core", ValueError, ".*", lambda: fb.lstm_backward(two_steps, p["dhs"])))
    with pytest.raises(AssertionError, match="the bad call returned"):
        refused_by(Refusal("python", ValueError, ".*", lambda: fb.lstm_backward(cache, p["dhs"])))


@needs_rss
def test_leak_check_tool_reaches_every_layer():
    """tools/leak_check.py, briefly (the growth limit is the leak tests' business here): it runs every kind to the
    end, and its canary shows that each error kind reached its layer."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "leak_check.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--calls", "200", "--warm-up", "20", "--limit-mib", "64"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for kind, layer in (("python-errors", "python"), ("core-errors", "core"), ("binding-errors", "binding")):
        assert re.search(rf"^  {kind} +refused by {re.escape(LAYERS[layer])}: ", done.stdout, re.M), done.stdout
        assert re.search(rf"^{kind} +200 calls", done.stdout, re.M), done.stdout
    assert "binding-errors refused by" in done.stdout and "TypeError: lstm_backward(): incompatible" in done.stdout
    assert done.stdout.rstrip().endswith("OK: every growth within 64.0 MiB")


@needs_rss
def test_no_memory_growth_over_many_calls(rng):
    growth = rss_growth(small_training_call(rng), LEAK_CALLS)
    assert growth <= MiB, f"RSS grew by {growth / MiB:.2f} MiB over {LEAK_CALLS} forward + backward calls"


@needs_rss
@pytest.mark.parametrize("layer", ["python", "binding", "core"])
def test_no_memory_growth_over_many_errors(layer, rng):
    """Calls refused by each layer (the fast ones of :func:`refusals`), every one checked to reach it."""
    growth = rss_growth(failing_calls(rng, [layer]), LEAK_CALLS)
    assert growth <= MiB, f"RSS grew by {growth / MiB:.2f} MiB over {LEAK_CALLS} calls refused by the {layer}"


# ---------------------------------------------------------------------------------------------------------------
# Sizes whose byte count does not fit: refused before anything that large is allocated


def huge(shape, dtype=np.float64):
    return np.broadcast_to(np.zeros((), dtype), shape)


@pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
def test_forward_refuses_sizes_beyond_memory(module):
    """x [2**29, 2**30, 1] as a zero-stride view (no memory behind it): hs would need T*B*H*8 = 2**64 bytes for
    H = 4. The copy of x into C order fails first, with MemoryError naming x, before the kernel runs."""
    x = huge((2**29, 2**30, 1))
    with pytest.raises(MemoryError, match=r"^x: a C-contiguous copy .* cannot be allocated"):
        module.rnn_forward(x, np.ones((1, 4)), np.ones((4, 4)), np.ones(4))
    with pytest.raises(MemoryError, match=r"^x: "):
        module.lstm_forward(x, np.ones((1, 16)), np.ones((4, 16)), np.ones(16))
    with pytest.raises(MemoryError, match=r"^W_hh: "):
        module.rnn_forward(np.ones((1, 1, 1)), np.ones((1, 1)), huge((2**29, 2**29)), np.ones(1))
    with pytest.raises(MemoryError, match=r"^hs: "):
        module.softmax_cross_entropy(huge((2**40, 2**16, 1)), np.ones((1, 3)), np.ones(3), np.zeros((1, 1), int))


def test_core_allocation_failure_is_memory_error():
    """softmax_cross_entropy's core allocates the logits [T*B, K] itself: with T*B = 2**22 and K = 2**24 that is
    2**48 bytes in float32, more than any address space. std::bad_alloc in the core, with the GIL released, must
    come back as MemoryError (and the process stays usable)."""
    N, K = 2**22, 2**24
    hs = np.zeros((N, 1, 1), np.float32)
    W_yh = np.zeros((1, K), np.float32)
    with pytest.raises(MemoryError):
        fb.softmax_cross_entropy(hs, W_yh, np.zeros(K, np.float32), np.zeros((N, 1), np.int64))
    loss, _ = fb.softmax_cross_entropy(hs[:2], W_yh[:, :3], np.zeros(3, np.float32), np.zeros((2, 1), np.int64))
    assert np.isclose(loss, 2 * np.log(3))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_workspace_bytes_never_wraps(cell, dtype):
    """workspace_bytes is a formula in Python integers: past 2**63 bytes it stays exact (it is larger than the states
    forward keeps, T*B*H*itemsize), it does not wrap around to a small or negative number."""
    T, B, D, H = 2**31, 2**31, 1, 2**10
    value = fb.workspace_bytes(cell, T, B, D, H, dtype)
    assert isinstance(value, int)
    assert value >= T * B * H * np.dtype(dtype).itemsize > 2**63
    assert fb.workspace_bytes(cell, T, B, D, 2 * H, dtype) > value  # monotone, as a formula must be


def exact_block_steps(B: int, columns: int) -> int:
    """The core's block length (types.hpp) in Python integers: 256 rows at least, a dZ block of about 2^18."""
    return max(1, -(-256 // B), 2**18 // (B * columns))


# (B, gate_columns) whose product is past int64, and sizes at and beyond the points where block_steps clamps
HUGE_BLOCK_SIZES = [
    (2**40, 2**30),
    (255, 2**56),
    (3, 2**62),
    (2**62, 4),
    (INT64_MAX, INT64_MAX),
    (1, INT64_MAX),
    (INT64_MAX, 1),
    (2**31, 2**31),
    (2**31 + 1, 1),
    (1, 2**31 + 1),
]


@pytest.mark.parametrize(("B", "columns"), HUGE_BLOCK_SIZES)
def test_block_steps_saturate_for_huge_sizes(B, columns):
    """Past 256 rows a step and 2^18 scalars a step the block is one step, however large the sizes: no wrap-around
    of B * gate_columns (it wrapped to 262144 steps for 2^40 x 2^30)."""
    assert block_steps(B, columns) == exact_block_steps(B, columns)


@pytest.mark.parametrize(("B", "columns"), [(1, 1), (3, 7), (255, 1), (256, 1), (1, 2**18), (2**31, 2**31)])
def test_block_steps_agree_with_the_core_where_it_cannot_wrap(B, columns):
    assert block_steps(B, columns) == _core.backward_block_steps(B, columns) == exact_block_steps(B, columns)


def test_core_block_steps_saturate():
    assert _core.backward_block_steps(2**40, 2**30) == 1


def test_workspace_bytes_is_sane_for_huge_sizes():
    """B * 4H = 2**70 is past int64: the backward's scratch is one step of dZ and states (the block is one step),
    so the total is what forward keeps and backward returns, within 1 %, not twice that (a block of 2^18 steps)."""
    T, B, D, H = 2**18, 2**40, 1, 2**28
    value = fb.workspace_bytes("lstm", T, B, D, H, np.float32)
    kept_and_returned = T * B * (4 * H + 2 * H + D) * 4  # gates, hs, cs; dx
    assert kept_and_returned <= value < 1.01 * kept_and_returned
    assert fb.workspace_bytes("lstm", 2 * T, B, D, H, np.float32) > value


# ---------------------------------------------------------------------------------------------------------------
# Sanitizer canary: tools/sanitize.sh sets FASTBPTT_SANITIZED. It proves that the sanitizers really watch this run.


def _subprocess(code: str, log_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # this process's reports go to the test's own directory, not to the run's report files (which must stay empty)
    env["ASAN_OPTIONS"] = f"detect_leaks=0:log_path={log_dir}/canary.asan"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"  # UBSan writes to stderr next to ASan
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def _reports(log_dir, stem: str) -> str:
    return "".join(path.read_text() for path in log_dir.glob(f"{stem}*"))


@pytest.mark.skipif(not SANITIZED, reason="needs the sanitizer build of tools/sanitize.sh (FASTBPTT_SANITIZED)")
def test_sanitizers_are_active(tmp_path):
    import fastbptt._core as core

    with open(core.__file__, "rb") as module_file:
        binary = module_file.read()
    if "address" in SANITIZED:
        assert b"__asan_report_load" in binary, "the module is not instrumented by AddressSanitizer"
        # an out-of-bounds read through an intercepted libc call, in a child process
        result = _subprocess(
            """
            import ctypes
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            p = libc.malloc(16)
            out = ctypes.create_string_buffer(64)
            ctypes.memmove(out, p, 64)
            print("not detected")
            """,
            tmp_path,
        )
        assert result.returncode != 0 and "not detected" not in result.stdout
        assert "heap-buffer-overflow" in _reports(tmp_path, "canary")
    if "undefined" in SANITIZED:
        assert b"__ubsan_handle_" in binary, "the module is not instrumented by UndefinedBehaviorSanitizer"
        # the compiled core itself: an unaligned float64 array handed to the private module, past the Python checks
        # that copy such arrays (_checks.float_array), is read as misaligned doubles, which UBSan reports
        result = _subprocess(
            """
            import numpy as np
            from fastbptt import _core
            raw = np.zeros(8 * 8 + 1, np.uint8)
            x = raw[1:].view(np.float64).reshape(2, 2, 2)
            assert not x.flags.aligned and x.flags.c_contiguous
            ones = np.ones
            _core.rnn_forward(x, ones((2, 3)), ones((3, 3)), ones(3), ones((2, 3)), "tanh", np.empty(0, np.int64))
            print("returned")
            """,
            tmp_path,
        )
        assert result.returncode != 0 and "returned" not in result.stdout
        assert "runtime error: reference binding to misaligned address" in result.stderr, result.stderr[-2000:]
