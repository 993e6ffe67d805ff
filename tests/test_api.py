"""Behaviour every user relies on: views, untouched inputs, NaN/Inf, the GIL, build info, torch.nn.RNN parity."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import LSTM_INPUTS, RNN_INPUTS, lstm_problem, rnn_problem

import fastbptt as fb
from fastbptt import _core
from fastbptt import reference as ref
from fastbptt.kernels.functional import NO_LENGTHS


def run_rnn(inputs, dhs):
    hs, cache = fb.rnn_forward(*inputs)
    return (hs, *fb.rnn_backward(cache, dhs))


def run_lstm(inputs, dhs):
    hs, c_T, cache = fb.lstm_forward(*inputs)
    return (hs, c_T, *fb.lstm_backward(cache, dhs))


def strange_layouts(array):
    """The same values as a Fortran-order copy, a strided view and a slice of a larger batch."""
    fortran = np.asfortranarray(array)
    padded = np.zeros(tuple(2 * n for n in array.shape), dtype=array.dtype)
    strided = padded[tuple(slice(None, None, 2) for _ in array.shape)]
    strided[...] = array
    if array.ndim == 3:  # a batch slice of a time-major array: rows are not contiguous across steps
        wide = np.zeros((array.shape[0], array.shape[1] + 3, array.shape[2]), dtype=array.dtype)
        wide[:, 2 : 2 + array.shape[1]] = array
        sliced = wide[:, 2 : 2 + array.shape[1]]
    else:
        sliced = array.T.copy().T  # transposed storage
    return {"fortran": fortran, "strided": strided, "sliced": sliced}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["fortran", "strided", "sliced"])
def test_non_contiguous_inputs_give_the_same_numbers(rng, dtype, layout):
    p = {k: v.astype(dtype) for k, v in rnn_problem(rng, 6, 4, 5, 7).items()}
    expected = run_rnn([p[k] for k in RNN_INPUTS], p["dhs"])
    odd = [strange_layouts(p[k])[layout] for k in RNN_INPUTS]
    assert not all(a.flags.c_contiguous for a in odd)
    for a, b in zip(run_rnn(odd, strange_layouts(p["dhs"])[layout]), expected):
        np.testing.assert_array_equal(a, b)

    q = {k: v.astype(dtype) for k, v in lstm_problem(rng, 6, 4, 5, 7).items()}
    expected = run_lstm([q[k] for k in LSTM_INPUTS], q["dhs"])
    odd = [strange_layouts(q[k])[layout] for k in LSTM_INPUTS]
    for a, b in zip(run_lstm(odd, strange_layouts(q["dhs"])[layout]), expected):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_never_modified_and_outputs_are_fresh(rng):
    p = rnn_problem(rng, 5, 3, 4, 6)
    for array in p.values():
        array.flags.writeable = False  # any write into an input would raise
    hs, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS))
    grads = fb.rnn_backward(cache, p["dhs"])
    for out in grads:
        assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata
        assert not any(np.shares_memory(out, p[k]) for k in p)
    # hs is what backward reads: returned read-only (tests/test_aliasing.py), and none of the inputs' memory.
    assert hs.flags.c_contiguous and not hs.flags.writeable
    assert not any(np.shares_memory(hs, p[k]) for k in p)

    q = lstm_problem(rng, 5, 3, 4, 6)
    copies = {k: v.copy() for k, v in q.items()}
    hs, c_T, cache = fb.lstm_forward(*(q[k] for k in LSTM_INPUTS))
    fb.lstm_backward(cache, q["dhs"], q["dc_T"])
    c_T[...] = 0  # the returned final state is the caller's own array, not a view into the cache
    assert np.any(cache.cs[-1] != 0)
    for k in q:
        np.testing.assert_array_equal(q[k], copies[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("module", [fb, ref], ids=["fast", "reference"])
def test_activations_at_infinity_and_nan(module, dtype):
    # One step with zero weights, so the pre-activation is the bias (a product would turn inf * 0 into NaN).
    z = np.array([np.inf, -np.inf, np.nan, 0.0, 1e30, -1e30], dtype=dtype)
    x, zeros = np.ones((1, 1, 6), dtype=dtype), np.zeros((6, 6), dtype=dtype)
    h = {act: module.rnn_forward(x, zeros, zeros, z, activation=act)[0][0, 0] for act in ("tanh", "sigmoid", "relu")}
    np.testing.assert_array_equal(h["tanh"], np.array([1, -1, np.nan, 0, 1, -1], dtype))
    np.testing.assert_array_equal(h["sigmoid"], np.array([1, 0, np.nan, 0.5, 1, 0], dtype))
    np.testing.assert_array_equal(h["relu"], np.array([np.inf, 0, np.nan, 0, 1e30, 0], dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_one_sequence_stays_in_that_sequence(rng, dtype):
    p = {k: v.astype(dtype) for k, v in lstm_problem(rng, 8, 4, 5, 6).items()}
    p["x"][3, 1, 2] = np.nan
    hs, c_T, _ = fb.lstm_forward(*(p[k] for k in LSTM_INPUTS))
    assert np.all(np.isfinite(hs[:3])), "steps before the NaN are untouched"
    assert np.all(np.isnan(hs[3:, 1])), "the NaN propagates through sequence 1"
    assert np.all(np.isfinite(hs[:, [0, 2, 3]])), "other sequences of the batch stay finite"
    q = {k: v.astype(dtype) for k, v in rnn_problem(rng, 8, 4, 5, 6).items()}
    q["x"][2, 0, 0] = np.nan
    hs, _ = fb.rnn_forward(*(q[k] for k in RNN_INPUTS))
    assert np.all(np.isnan(hs[2:, 0])) and np.all(np.isfinite(hs[:, 1:]))


def test_the_gil_is_released_while_the_core_computes(rng):
    # A kernel of about a second runs in a thread; meanwhile this thread keeps running Python. With the GIL held
    # for the whole kernel, this thread would stall for that long; released, it is never stalled for long.
    p = lstm_problem(rng, 2000, 16, 64, 64)
    inputs = [p[k].astype(np.float32) for k in LSTM_INPUTS]
    started, kernel_seconds = threading.Event(), []

    def work():
        started.set()
        begin = time.perf_counter()
        for _ in range(5):
            fb.lstm_forward(*inputs)
        kernel_seconds.append(time.perf_counter() - begin)

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    longest_stall, last = 0.0, time.perf_counter()
    while worker.is_alive():
        now = time.perf_counter()
        longest_stall, last = max(longest_stall, now - last), now
    worker.join()
    assert kernel_seconds[0] > 0.2, "the kernel was too short to tell"
    assert longest_stall < 0.5 * kernel_seconds[0], f"Python stalled {longest_stall:.3f} s of {kernel_seconds[0]:.3f} s"


def test_core_rejects_misuse_with_python_exceptions():
    def rnn_forward(**changed):
        """_core.rnn_forward on valid float32 arguments ([T, B, D] = [2, 3, 4], H = 5) with some replaced."""
        args = {
            "x": np.zeros((2, 3, 4), np.float32),
            "W_xh": np.zeros((4, 5), np.float32),
            "W_hh": np.zeros((5, 5), np.float32),
            "b_h": np.zeros(5, np.float32),
            "h0": np.zeros((3, 5), np.float32),
            "activation": "tanh",
            "lengths": NO_LENGTHS,
        }
        return _core.rnn_forward(*{**args, **changed}.values())

    rnn_forward()  # the valid call runs
    with pytest.raises(ValueError, match=r"W_xh: expected shape \[4, 5\], got \[3, 5\]"):
        rnn_forward(W_xh=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions, got 2"):
        rnn_forward(x=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError):  # the binding never converts: float64 with float32 weights matches no overload
        rnn_forward(x=np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="activation"):
        rnn_forward(activation="gelu")
    with pytest.raises(ValueError, match=r"lengths: every length must lie in 1 \.\. T = 2, got 3 for sequence 1"):
        rnn_forward(lengths=np.array([1, 3, 2]))
    with pytest.raises(ValueError, match=r"lengths: expected B = 3 values, got 2"):
        rnn_forward(lengths=np.array([1, 2]))


def test_version_and_build_info():
    info = fb.build_info()
    assert fb.__version__ == info["version"]
    assert info["eigen_version"].startswith("3.")
    for key in (
        "eigen_source",
        "isa_requested",
        "isa_compiled",
        "eigen_simd",
        "compiler",
        "build_type",
        "threading",
    ):
        assert info[key], key
    assert info["build_type"] == "Release"


def test_functions_exist_in_both_paths_with_the_same_signatures():
    import inspect

    for name in (
        "rnn_forward",
        "rnn_backward",
        "lstm_forward",
        "lstm_backward",
        "softmax_cross_entropy",
        "lstm_weights_from_torch",
        "lstm_weights_to_torch",
        "workspace_bytes",
    ):
        assert inspect.signature(getattr(fb, name)) == inspect.signature(getattr(ref, name)), name


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (9, 4, 5, 7), (13, 17, 3, 13)], ids=str)
def test_rnn_matches_torch(rng, nonlinearity, shape):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    T, B, D, H = shape
    p = rnn_problem(rng, T, B, D, H)
    module = torch.nn.RNN(D, H, nonlinearity=nonlinearity).double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p["W_xh"].T))
        module.weight_hh_l0.copy_(torch.from_numpy(p["W_hh"].T))
        module.bias_ih_l0.copy_(torch.from_numpy(p["b_h"]))
        module.bias_hh_l0.zero_()
    x = torch.tensor(p["x"], requires_grad=True)
    h0 = torch.tensor(p["h0"][None], requires_grad=True)
    out, _ = module(x, h0)
    torch.sum(out * torch.tensor(p["dhs"])).backward()

    hs, cache = fb.rnn_forward(*(p[k] for k in RNN_INPUTS), activation=nonlinearity)
    grads = fb.rnn_backward(cache, p["dhs"])
    pairs = [
        (hs, out),
        (grads.dx, x.grad),
        (grads.dh0, h0.grad[0]),
        (grads.dW_xh.T, module.weight_ih_l0.grad),
        (grads.dW_hh.T, module.weight_hh_l0.grad),
        (grads.db_h, module.bias_ih_l0.grad),
        (grads.db_h, module.bias_hh_l0.grad),
    ]
    for mine, theirs in pairs:
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_layers_have_their_docstrings():
    for layer in (fb.RNN, fb.LSTM, fb.GRU, fb.Recurrent):
        assert layer.__doc__ and "Parameters" in layer.__doc__ and "num_layers" in layer.__doc__
