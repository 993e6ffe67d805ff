"""The array cache: large output arrays reuse the memory of dead ones, and nothing a user can see changes."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import lstm_problem

import fastbptt as fb

T, B, D, H = 120, 16, 96, 128  # float64: hs is 1.9 MiB, the LSTM's gates 7.5 MiB, all above the cache's 1 MiB floor


@pytest.fixture
def cache_limit():
    """Restores the limit a test changes, and starts every test from an empty cache."""
    saved = fb.array_cache_info()["limit"]
    fb.empty_array_cache()
    yield
    fb.set_array_cache_limit(saved)
    fb.empty_array_cache()


def arrays_in(result) -> list[np.ndarray]:
    """Every array in a kernel's result: tuples, and the arrays of cache and gradient dataclasses."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, tuple):
        return [array for item in result for array in arrays_in(item)]
    if dataclasses.is_dataclass(result):
        return [value for value in vars(result).values() if isinstance(value, np.ndarray)]
    return []


def writable_alias(array: np.ndarray) -> np.ndarray:
    """A writable array over ``array``'s memory, read-only or not (C-contiguous arrays only)."""
    assert array.flags.c_contiguous
    pointer = ctypes.cast(array.ctypes.data, ctypes.POINTER(ctypes.c_uint8))
    return np.ctypeslib.as_array(pointer, (array.nbytes,)).view(array.dtype).reshape(array.shape)


def training_calls(rng, lengths):
    """One forward + backward of each cell (and the output loss) with outputs above the cache's floor, as
    functions that return everything they produced."""
    p = lstm_problem(rng, T, B, D, H)
    x, dhs = p["x"], p["dhs"]
    W_rnn, U_rnn, b_rnn = p["W_x"][:, :H], p["W_h"][:, :H], p["b"][:H]
    W_gru, U_gru, b_gru, b_hn = p["W_x"][:, : 3 * H], p["W_h"][:, : 3 * H], p["b"][: 3 * H], p["b"][3 * H :]
    W_y = rng.standard_normal((H, 5)) / np.sqrt(H)
    targets = rng.integers(0, 5, (T, B))

    def rnn():
        hs, cache = fb.rnn_forward(x, W_rnn, U_rnn, b_rnn, lengths=lengths)
        return (hs, cache, fb.rnn_backward(cache, dhs))

    def lstm():
        hs, c_T, cache = fb.lstm_forward(x, p["W_x"], p["W_h"], p["b"], lengths=lengths)
        return (hs, c_T, cache, fb.lstm_backward(cache, dhs))

    def gru():
        hs, cache = fb.gru_forward(x, W_gru, U_gru, b_gru, b_hn, lengths=lengths)
        return (hs, cache, fb.gru_backward(cache, dhs))

    if lengths is not None:  # the loss has no lengths: steps past a sequence's end are ignored targets
        targets[np.arange(T)[:, None] >= lengths] = -100
    hs = rng.standard_normal((T, B, H))

    def loss():
        return fb.softmax_cross_entropy(hs, W_y, np.zeros(5), targets)

    inputs = [*p.values(), W_y, hs]
    return {"rnn": rnn, "lstm": lstm, "gru": gru, "loss": loss}, inputs


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("kernel", ["rnn", "lstm", "gru", "loss"])
def test_reused_memory_full_of_nan_leaves_no_trace(rng, cache_limit, kernel, with_lengths):
    # Variable lengths leave rows past each sequence's end that the kernels must still write (zeros).
    lengths = np.array([T, T // 2, 1, T - 3] * (B // 4)) if with_lengths else None
    calls, inputs = training_calls(rng, lengths)
    call = calls[kernel]
    fb.set_array_cache_limit(0)
    expected = [a.copy() for a in arrays_in(call())]
    fb.set_array_cache_limit(1 << 30)
    first = arrays_in(call())
    outputs = [a for a in first if not any(np.shares_memory(a, given) for given in inputs)]
    large = [a for a in outputs if a.nbytes >= fb.array_cache_info()["min_bytes"]]
    assert large, "the shapes must give arrays the cache serves"
    for array in large:
        writable_alias(array)[...] = np.nan  # what the next call finds in the memory it reuses (read-only or not)
    del first, outputs, array, large
    before = fb.array_cache_info()
    again = arrays_in(call())
    after = fb.array_cache_info()
    assert after["hits"] > before["hits"], "the second call took its arrays from the cache"
    assert after["misses"] == before["misses"]
    assert len(again) == len(expected)
    for actual, wanted in zip(again, expected):
        np.testing.assert_array_equal(actual, wanted)


def test_large_outputs_are_fresh_writable_arrays_that_share_no_memory(rng, cache_limit):
    p = lstm_problem(rng, T, B, D, H)
    outputs = []
    for _ in range(3):  # the blocks of dead arrays are reused while the live ones stay untouched
        hs, c_T, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
        grads = fb.lstm_backward(cache, p["dhs"])
        outputs.append([hs, cache.gates, cache.cs, grads.dx])
        del hs, c_T, cache, grads
    live = [a for group in outputs for a in group]
    for i, a in enumerate(live):
        assert a.flags.c_contiguous
        is_gradient = i % 4 == 3  # the forward's arrays are read-only views (test_aliasing.py) of their own block
        assert a.flags.writeable == is_gradient
        block = a if is_gradient else a.base
        assert not isinstance(block.base, np.ndarray), "each output is its own block (the forward's: one view of it)"
        assert not any(np.shares_memory(a, b) for b in live[i + 1 :])
    for group in outputs[1:]:
        for a, b in zip(group, outputs[0]):
            np.testing.assert_array_equal(a, b)


def test_a_training_loop_runs_on_reused_memory(rng, cache_limit):
    p = lstm_problem(rng, T, B, D, H)

    def step():
        _, _, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
        fb.lstm_backward(cache, p["dhs"])

    step()
    warm = fb.array_cache_info()
    for _ in range(3):
        step()
    info = fb.array_cache_info()
    assert info["misses"] == warm["misses"], "no new memory after the first step"
    assert info["hits"] - warm["hits"] == 3 * 4  # gates, hs, cs and dx on each step
    assert 0 < info["cached_bytes"] <= info["limit"]


def test_the_limit_bounds_what_waits_and_zero_turns_the_cache_off(rng, cache_limit):
    p = lstm_problem(rng, T, B, D, H)
    fb.set_array_cache_limit(3 << 20)  # room for one [T, B, H] float64 block, not for the gates
    for _ in range(2):
        _, _, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
        del cache
        info = fb.array_cache_info()
        assert info["cached_bytes"] <= 3 << 20 and info["cached_blocks"] == 1
    fb.set_array_cache_limit(0)
    assert fb.array_cache_info()["cached_bytes"] == 0
    _, _, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
    del cache
    assert fb.array_cache_info()["cached_blocks"] == 0

    fb.set_array_cache_limit(1 << 30)
    _, _, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
    del cache
    assert fb.array_cache_info()["cached_blocks"] == 3
    fb.empty_array_cache()
    assert fb.array_cache_info()["cached_bytes"] == 0
    assert fb.array_cache_info()["limit"] == 1 << 30


def test_small_arrays_bypass_the_cache(rng, cache_limit):
    p = lstm_problem(rng, 5, 3, 4, 6)
    before = fb.array_cache_info()
    hs, _, cache = fb.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
    assert hs.base.flags.owndata and cache.gates.base.flags.owndata  # read-only views of arrays of their own
    after = fb.array_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_limit_is_checked():
    with pytest.raises(TypeError, match=r"nbytes: expected an int, got 1.5"):
        fb.set_array_cache_limit(1.5)
    with pytest.raises(TypeError, match=r"nbytes: expected an int, got True"):
        fb.set_array_cache_limit(True)
    with pytest.raises(ValueError, match=r"nbytes: must be >= 0, got -1"):
        fb.set_array_cache_limit(-1)


def test_limit_from_the_environment():
    def limit_with(value):
        code = "import fastbptt as fb; print(fb.array_cache_info()['limit'])"
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "FASTBPTT_ARRAY_CACHE_BYTES": value},
            capture_output=True,
            text=True,
        )

    # the last line: an editable install may print its rebuild first
    assert limit_with("12345").stdout.splitlines()[-1] == "12345"
    assert limit_with("0").stdout.splitlines()[-1] == "0"
    bad = limit_with("lots")
    assert bad.returncode != 0
    assert "FASTBPTT_ARRAY_CACHE_BYTES: expected a number of bytes, got 'lots'" in bad.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 3), (7,), (5, 3, 4), (300, 32, 64)])  # the last above the cache's floor
def test_copy_array_gives_an_equal_writable_array_of_its_own(rng, cache_limit, dtype, shape):
    source = rng.standard_normal(shape).astype(dtype)
    source.flags.writeable = False
    copy = fb._core.copy_array(source)
    assert copy.dtype == dtype and copy.shape == shape and copy.flags.c_contiguous and copy.flags.writeable
    assert not np.shares_memory(copy, source)
    np.testing.assert_array_equal(copy, source)
    strided = source[::2]
    if not strided.flags.c_contiguous:
        with pytest.raises(TypeError):  # only C-contiguous arrays: it never converts silently
            fb._core.copy_array(strided)


def test_the_default_limit_is_256_mib_or_a_64th_of_the_memory():
    """The default in a fresh process, without FASTBPTT_ARRAY_CACHE_BYTES: 8 processes keep at most an eighth of the
    memory waiting."""
    code = "import fastbptt as fb; print(fb.array_cache_info()['limit'])"
    env = {k: v for k, v in os.environ.items() if k != "FASTBPTT_ARRAY_CACHE_BYTES"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = 256 << 20
    if hasattr(os, "sysconf") and sys.platform.startswith("linux"):
        expected = min(expected, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 64)
    assert int(done.stdout.strip().splitlines()[-1]) == expected
