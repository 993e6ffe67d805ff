"""Thread count: set/get, every kernel honours it, results bit-identical run to run for a given count."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import lstm_problem

import fastbptt as fb

LSTM_INPUTS = ["x", "W_x", "W_h", "b", "h0", "c0"]


@pytest.fixture
def restore_threads():
    before = fb.get_num_threads()
    yield
    fb.set_num_threads(before)


def run(p):
    hs, c_T, cache = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    return (hs, c_T, *fb.lstm_backward(cache, p["dhs"], p["dc_T"]))


def test_set_and_get(restore_threads):
    fb.set_num_threads(1)
    assert fb.get_num_threads() == 1
    if "OpenMP" in fb.build_info()["threading"]:
        fb.set_num_threads(2)
        assert fb.get_num_threads() == 2
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        fb.set_num_threads(0)
    with pytest.raises(TypeError, match="n: expected an int"):
        fb.set_num_threads(1.5)


@pytest.mark.parametrize("threads", [1, 2])
def test_bit_identical_run_to_run_and_close_across_counts(rng, restore_threads, threads):
    if threads > 1 and "OpenMP" not in fb.build_info()["threading"]:
        pytest.skip("this build has no OpenMP")
    p = {k: v.astype(np.float32) for k, v in lstm_problem(rng, 30, 64, 96, 160).items()}
    fb.set_num_threads(1)
    single = run(p)
    fb.set_num_threads(threads)
    first = run(p)
    for _ in range(3):
        for a, b in zip(run(p), first):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(first, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
