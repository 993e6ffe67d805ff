"""Thread count: set/get, every kernel honours it, results bit-identical run to run for a given count; independent
calls side by side, one thread each."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import LSTM_INPUTS, lstm_problem

import fastbptt as fb
from fastbptt import _core


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


# ---------------------------------------------------------------------------------------------------------------
# Independent calls side by side (the directions of a bidirectional layer)

needs_openmp = pytest.mark.skipif("OpenMP" not in fb.build_info()["threading"], reason="this build has no OpenMP")


@pytest.fixture
def task_thread_counts(monkeypatch):
    """The threads (call_threads()) each task of _core.run_concurrently got, in the order the tasks started."""
    counts, real = [], _core.run_concurrently

    def spy(tasks):
        return real([lambda task=task: (counts.append(_core.call_threads()), task())[1] for task in tasks])

    monkeypatch.setattr(_core, "run_concurrently", spy)
    return counts


@needs_openmp
@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_training_forward_has_the_one_thread_bits_at_two_threads(rng, restore_threads, dtype, projection):
    """At two threads the LSTM's training forward splits each step's units across the team: the outputs and every
    cached gate keep the one-thread bits (the time loops' results do not depend on the thread count)."""
    T, B, D, H, P = 7, 32, 48, 64, 40
    x = rng.standard_normal((T, B, D)).astype(dtype)
    W_x = (rng.standard_normal((D, 4 * H)) * 0.2).astype(dtype)
    W_h = (rng.standard_normal((P if projection else H, 4 * H)) * 0.2).astype(dtype)
    b = rng.standard_normal(4 * H).astype(dtype)
    W_hr = (rng.standard_normal((H, P)) * 0.2).astype(dtype) if projection else None

    def run():
        hs, c_T, cache = fb.lstm_forward(x, W_x, W_h, b, W_hr=W_hr)
        return [hs, c_T, cache.gates, cache.cs]

    fb.set_num_threads(1)
    single = run()
    fb.set_num_threads(2)
    for got, expected in zip(run(), single):
        assert got.tobytes() == expected.tobytes()


@needs_openmp
def test_tasks_run_side_by_side_on_one_thread_each(restore_threads):
    fb.set_num_threads(2)
    assert _core.call_threads() == 2
    assert _core.run_concurrently([_core.call_threads, _core.call_threads]) == [1, 1]
    idents = _core.run_concurrently([threading.get_ident, threading.get_ident])
    assert len(set(idents)) == 2, "both tasks ran on one thread"
    assert _core.run_concurrently([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]  # in order


def test_tasks_run_one_after_the_other_at_one_thread(restore_threads):
    fb.set_num_threads(1)
    assert _core.run_concurrently([_core.call_threads, _core.call_threads]) == [1, 1]
    assert _core.run_concurrently([threading.get_ident] * 2) == [threading.get_ident()] * 2


@needs_openmp
@pytest.mark.parametrize("threads", [3, 4])
def test_tasks_share_the_threads_when_there_are_more_than_tasks(threads, restore_threads):
    """Each task runs on a thread of its own, its calls on a team of its share of the threads (the first one more)."""
    fb.set_num_threads(threads)
    assert _core.run_concurrently([_core.call_threads, _core.call_threads]) == [threads - threads // 2, threads // 2]
    assert len(set(_core.run_concurrently([threading.get_ident] * 2))) == 2
    assert _core.call_threads() == threads  # the shares end with the tasks
    # a share of two is a team of two nested in the tasks' team: two tasks inside a task run on two threads
    inner = _core.run_concurrently([lambda: _core.run_concurrently([threading.get_ident] * 2)] * 2)
    assert len(set(inner[0])) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_the_first_failing_task_raises_after_every_task_ended(threads, restore_threads):
    if threads > 1 and "OpenMP" not in fb.build_info()["threading"]:
        pytest.skip("this build has no OpenMP")
    fb.set_num_threads(threads)
    ended = []

    def task(name, fails):
        def call():
            ended.append(name)
            if fails:
                raise KeyError(name)
            return name

        return call

    tasks = [task("a", False), task("b", True), task("c", True), task("d", False)]
    with pytest.raises(KeyError, match="b"):
        _core.run_concurrently(tasks)
    assert sorted(ended) == ["a", "b", "c", "d"]


@needs_openmp
@pytest.mark.parametrize("cell", [fb.RNN, fb.LSTM, fb.GRU])
def test_bidirectional_layer_runs_its_directions_side_by_side(cell, rng, restore_threads, task_thread_counts):
    """At 2 threads each layer's two directions run as two tasks of one thread each, forward and backward, with the
    bits of one thread, the same run to run; the reference backend computes the directions one after the other."""
    T, B, D, H = 12, 64, 96, 160  # a step large enough that one direction alone would use both threads
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    doutputs = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    thread_counts = task_thread_counts

    def run():
        layer = cell(D, H, num_layers=2, bidirectional=True, seed=5, dtype=np.float32)
        outputs, final = layer.forward(x, lengths=lengths)
        dx, dstate = layer.backward(doutputs)
        return [outputs, dx, *(final if isinstance(final, tuple) else [final])] + list(layer.grads.values())

    fb.set_num_threads(1)
    single = run()
    assert thread_counts == [1] * 8  # 2 layers x (forward, backward) x 2 directions
    fb.set_num_threads(2)
    thread_counts.clear()
    first, second = run(), run()
    assert thread_counts == [1] * 16
    for a, b, c in zip(first, second, single):
        assert a.tobytes() == b.tobytes()
        assert a.tobytes() == c.tobytes()
    thread_counts.clear()
    cell(D, H, num_layers=2, bidirectional=True, dtype=np.float32, backend="reference").forward(x)
    assert thread_counts == []


@needs_openmp
@pytest.mark.parametrize("inference", [False, True], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", [fb.RNN, fb.LSTM, fb.GRU])
def test_stacked_layers_run_as_a_wavefront_with_the_bits_of_one_thread(
    cell, dtype, inference, rng, restore_threads, task_thread_counts
):
    """At 2 threads the layers of a one-direction stack run side by side, one thread each: forward, each step handed
    to the layer above as it is written (three layers: the third waits on the second, which waits on the first),
    and backward, each step of dx handed to the layer below; everything has the one-thread bits."""
    T, B, D, H, layers = 23, 5, 7, 9, 3
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = np.array([23, 4, 17, 1, 22])
    doutputs = rng.standard_normal((T, B, H)).astype(dtype)
    thread_counts = task_thread_counts

    def run():
        layer = cell(D, H, num_layers=layers, seed=5, dtype=dtype)
        outputs, final = layer.forward(x, lengths=lengths, inference=inference)
        results = [outputs, *(final if isinstance(final, tuple) else [final])]
        if not inference:
            dx, _ = layer.backward(doutputs)
            results += [dx, *layer.grads.values()]
        return results

    fb.set_num_threads(1)
    single = run()
    assert thread_counts == []
    fb.set_num_threads(2)
    side_by_side = run()
    assert thread_counts == [1] * layers * (1 if inference else 2)
    assert len(side_by_side) == len(single)
    for got, expected in zip(side_by_side, single):
        assert got.tobytes() == expected.tobytes()


@needs_openmp
@pytest.mark.parametrize("bidirectional", [False, True], ids=["wavefront", "directions"])
@pytest.mark.parametrize("cell", [fb.RNN, fb.LSTM, fb.GRU])
def test_with_more_threads_than_tasks_each_splits_its_units_with_the_bits_of_one_thread(
    cell, bidirectional, rng, restore_threads, task_thread_counts
):
    """At 4 threads the two layers of a one-direction stack (a wavefront) or the two directions of a bidirectional
    layer run side by side on two threads each, whose time loops split the units (nested teams): forward and
    backward have the one-thread bits."""
    T, B, D, H = 9, 32, 64, 128  # steps large enough for a team of two (run_team's minimum work)
    directions = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    doutputs = rng.standard_normal((T, B, directions * H)).astype(np.float32)
    thread_counts = task_thread_counts

    def run():
        layer = cell(D, H, num_layers=2, bidirectional=bidirectional, seed=5, dtype=np.float32)
        outputs, final = layer.forward(x, lengths=lengths)
        dx, _ = layer.backward(doutputs)
        return [outputs, dx, *(final if isinstance(final, tuple) else [final]), *layer.grads.values()]

    fb.set_num_threads(1)
    single = run()
    fb.set_num_threads(4)
    thread_counts.clear()
    nested = run()
    assert thread_counts and all(count == 2 for count in thread_counts)
    for got, expected in zip(nested, single):
        assert got.tobytes() == expected.tobytes()


@needs_openmp
def test_a_failing_layer_of_a_wavefront_releases_the_layers_above(rng, restore_threads):
    """A layer that fails (here its weights have the wrong shape) publishes every step, so the layers above it end
    instead of waiting for ever; its error is raised once they have."""
    from fastbptt.kernels import cells, stack

    spec = cells.cell_class("lstm")("fast")
    T, B, D, H = 6, 2, 3, 4
    params = [spec.init_parameters(rng, D if k == 0 else H, H, "uniform") for k in range(3)]
    params[0] = {**params[0], "W_h": np.zeros((H + 1, 4 * H))}
    fb.set_num_threads(2)
    with pytest.raises(ValueError, match="W_h"):
        stack.forward(
            spec.forward, params, rng.standard_normal((T, B, D)), [None] * 3, None,
            num_layers=3, num_directions=1, concurrent=True, widths=[H] * 3,
        )  # fmt: skip


@needs_openmp
def test_a_failing_layer_of_a_backward_wavefront_releases_the_layers_below(rng, restore_threads):
    """Backward the top layer runs first; when it fails (here its upstream gradient has the wrong shape), the
    layers below, which read its dx, end too, and its error is raised."""
    from fastbptt.kernels import cells, stack

    spec = cells.cell_class("gru")("fast")
    T, B, D, H = 9, 2, 3, 4
    params = [spec.init_parameters(rng, D if k == 0 else H, H, "uniform") for k in range(3)]
    options = {"num_layers": 3, "num_directions": 1, "concurrent": True}
    fb.set_num_threads(2)
    x = rng.standard_normal((T, B, D))
    _, _, cache = stack.forward(spec.forward, params, x, [None] * 3, None, widths=[H] * 3, **options)
    with pytest.raises(ValueError, match="dhs"):
        stack.backward(spec.backward, params, cache, rng.standard_normal((T, B, H + 1)), [None] * 3, **options)
