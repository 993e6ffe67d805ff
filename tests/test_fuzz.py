"""Property-based bad-input campaign (DESIGN.md section 5) for every public kernel, the layers and workspace_bytes.

Each example starts from a valid call (random sizes 1..6, float32 or float64) and replaces one or more arguments:
another dtype (every NumPy kind, byte-swapped floats included), another ndim or shape (sides 0 .. 7), a huge
zero-stride array (sides up to 2**62, at least 2**50 bytes, so that no machine can copy it), Fortran order,
strided, negative-stride, read-only or unaligned views of the same values, nested lists, Python scalars, None
and other objects. The oracle, for the fast path and for ``fastbptt.reference`` called with the same arguments:

- both return, and the results agree within the tolerances of ``conftest.TOL`` (and the fast path neither
  modifies an input nor returns a view of one), or
- both raise the same exception, of exactly one of TypeError, ValueError, OverflowError, MemoryError, and its
  message starts with the name of an argument of the call (``"W_hh: ..."``).

Anything else fails the test: another exception type, a mismatch, a crash of the interpreter, a hang.

The regular suite runs a few dozen derandomised examples per test. The long campaign (random seeds) is

    FASTBPTT_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py -q

(``tools/fuzz.sh`` runs it with the statistics printed).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from conftest import TOL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbptt as fb
from fastbptt import reference as ref

LONG_RUN = "FASTBPTT_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("FASTBPTT_FUZZ_EXAMPLES", "300")),
    deadline=None,  # the long run is bounded by example count; a hang shows as a test that never ends
    derandomize=not LONG_RUN,  # the regular suite runs the same examples every time
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ALLOWED = (TypeError, ValueError, OverflowError, MemoryError)

# Every kind of dtype NumPy has; only the native float32 and float64 are accepted.
OTHER_DTYPES = [
    np.dtype(name)
    for name in (
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "longdouble",
        "complex64",
        "complex128",
        "clongdouble",
        ">f4" if np.little_endian else "<f4",
        ">f8" if np.little_endian else "<f8",
        "datetime64[s]",
        "timedelta64[ms]",
        "U3",
        "S3",
        "O",
        "V8",
    )
] + [np.dtype([("a", "f8")]), np.dtype(("f8", (2,)))]

# Sides of a zero-stride array: real sizes, and sizes no allocation can satisfy.
HUGE_SIDES = [0, 1, 2, 3, 2**20, 2**31, 2**40, 2**50, 2**62]
MIN_HUGE_BYTES = 2**50  # beyond any address space: the copy fails at once, whatever the overcommit policy


# ---------------------------------------------------------------------------------------------------------------
# Strategies: one argument replaced by something else


def _strided(a: np.ndarray, steps) -> np.ndarray:
    """The values of ``a`` in a view with the given step along each axis (negative steps included)."""
    big = np.zeros(tuple(n * abs(s) for n, s in zip(a.shape, steps)), dtype=a.dtype)
    index = tuple(slice(None, None, abs(s)) for s in steps)
    big[index] = a
    view = big[index]
    flip = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)
    if any(s < 0 for s in steps):
        big[index] = a[flip]
        view = big[index][flip]
    return view


def _unaligned(a: np.ndarray) -> np.ndarray:
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


@st.composite
def huge_array(draw, dtype):
    ndim = draw(st.integers(1, 4))
    shape = [draw(st.sampled_from(HUGE_SIDES)) for _ in range(ndim)]
    itemsize = np.dtype(dtype).itemsize
    if 0 not in shape and int(np.prod(shape, dtype=object)) * itemsize < MIN_HUGE_BYTES:
        shape[draw(st.integers(0, ndim - 1))] = 2**50
    # NumPy cannot describe more than 2**63 bytes (it multiplies the non-zero sides, a zero side notwithstanding)
    while int(np.prod([side for side in shape if side], dtype=object)) * itemsize > 2**62:
        shape[int(np.argmax(shape))] //= 2**12
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))


def same_values(draw, a: np.ndarray):
    """``a`` in another memory layout or container, values unchanged."""
    how = draw(st.sampled_from(["fortran", "strided", "read_only", "unaligned", "list", "broadcast_copy"]))
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        return _strided(a, [draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in range(a.ndim)])
    if how == "read_only":
        return _read_only(a)
    if how == "unaligned":
        return _unaligned(a)
    if how == "list":
        return a.tolist()
    # the first entry of every axis repeated by zero strides: other values, a valid shape, not C-contiguous
    return np.broadcast_to(a[(slice(0, 1),) * a.ndim], a.shape)


RAGGED = [[1.0], [1.0, 2.0]]


@st.composite
def replacement(draw, a, seed: int, allow_none: bool):
    """A replacement for the array argument ``a`` (None when it is an optional argument left out)."""
    kinds = ["layout", "dtype", "shape", "huge", "python"]
    if a is None:
        a = np.zeros((1, 1))
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(seed)
    if kind == "layout":
        return same_values(draw, a)
    if kind == "dtype":
        dtype = draw(st.sampled_from(OTHER_DTYPES + [np.dtype(np.float32), np.dtype(np.float64)]))
        return np.zeros(a.shape, dtype=dtype)
    if kind == "shape":
        ndim = draw(st.integers(0, 4))
        shape = tuple(draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7])) for _ in range(ndim))
        return rng.uniform(-1, 1, shape).astype(a.dtype)
    if kind == "huge":
        return draw(huge_array(a.dtype))
    # None is valid where the argument is optional, else a TypeError naming it (dtype object)
    choices = [0, 1.5, True, 1j, "x", b"x", [], {}, object(), float(a.flat[0]), None, RAGGED]
    return draw(st.sampled_from(choices))


@st.composite
def mutated(draw, valid: dict, seed: int, optional=()):
    """``valid`` with a non-empty random subset of its arrays replaced."""
    names = list(valid)
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=min(3, len(names)), unique=True))
    args = dict(valid)
    for name in chosen:
        args[name] = draw(replacement(valid[name], seed + len(name), name in optional))
    return args, chosen


SIZES = st.integers(1, 6)
FLOATS = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------------------------------------------
# The oracle


def call(f, *args, **kwargs):
    try:
        return True, f(*args, **kwargs)
    except ALLOWED as error:
        return False, error


def snapshot(args: dict) -> dict:
    """Copies of the writable array arguments (the huge zero-stride ones are read-only and cannot be copied)."""
    return {
        name: np.array(value, copy=True)
        for name, value in args.items()
        if isinstance(value, np.ndarray) and value.flags.writeable
    }


def assert_unchanged(before: dict, args: dict) -> None:
    for name, copy in before.items():
        np.testing.assert_array_equal(args[name], copy, err_msg=f"{name} was modified by the call")


def result_arrays(result):
    """The arrays of a result (tuples, named tuples, caches), in a fixed order; caches yield their fields."""
    if isinstance(result, np.ndarray):
        yield result
    elif isinstance(result, (tuple, list)):
        for item in result:
            yield from result_arrays(item)
    elif dataclasses.is_dataclass(result):
        for field in dataclasses.fields(result):
            yield from result_arrays(getattr(result, field.name))
    elif isinstance(result, float):
        yield np.asarray(result)


def fresh_arrays(result):
    """The arrays a call created (caches hold references to the inputs by design, so they are left out)."""
    if isinstance(result, np.ndarray):
        yield result
    elif isinstance(result, (tuple, list)):
        for item in result:
            yield from fresh_arrays(item)


def caches(result):
    """The kernel caches in a result."""
    if isinstance(result, (tuple, list)):
        for item in result:
            yield from caches(item)
    elif dataclasses.is_dataclass(result) and hasattr(result, "computed"):
        yield result


def assert_same_outcome(fast, reference, names, dtype, kind: str, inputs: dict, held_caches=()) -> None:
    """The oracle described in the module docstring (``held_caches``: kernel caches a layer keeps)."""
    (fast_ok, fast_value), (ref_ok, ref_value) = fast, reference
    assert fast_ok == ref_ok, f"fast path {'returned' if fast_ok else 'raised ' + repr(fast_value)}, reference " + (
        "returned" if ref_ok else "raised " + repr(ref_value)
    )
    if not fast_ok:
        assert type(fast_value) is type(ref_value), f"fast {fast_value!r} vs reference {ref_value!r}"
        for error in (fast_value, ref_value):
            assert type(error) in ALLOWED, f"{type(error).__name__} is not one of the documented exceptions: {error}"
            named = str(error).split(":", 1)[0]
            assert named in names, f"the message does not start with an argument name {names}: {error}"
        return
    fast_arrays, ref_arrays = list(result_arrays(fast_value)), list(result_arrays(ref_value))
    assert len(fast_arrays) == len(ref_arrays)
    tol = TOL[np.dtype(dtype).type][kind]
    for got, want in zip(fast_arrays, ref_arrays):
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
    held_caches = [*caches(fast_value), *held_caches]
    read_by_backward = [getattr(cache, name) for cache in held_caches for name in cache.computed]
    for out in fresh_arrays(fast_value):
        assert out.flags.c_contiguous
        if not out.flags.writeable:  # read-only exactly where backward reads the array (test_aliasing.py)
            assert any(np.shares_memory(out, a) for a in read_by_backward), "a read-only result no cache holds"
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                assert not np.may_share_memory(out, value), f"a result shares memory with {name}"


def both(function_name: str, args: dict, **kwargs):
    """(fast outcome, reference outcome) of the same call; the fast path must leave every input as it was."""
    before = snapshot(args)
    fast = call(getattr(fb, function_name), **args, **kwargs)
    assert_unchanged(before, args)
    return fast, call(getattr(ref, function_name), **args, **kwargs)


def call_dtype(args: dict, first: str, fallback):
    value = args[first]
    return value.dtype if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float64) else fallback


# ---------------------------------------------------------------------------------------------------------------
# Valid problems


def rnn_valid(rng, T, B, D, H, dtype, with_h0):
    k = 1 / np.sqrt(H)
    args = {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "W_xh": rng.uniform(-k, k, (D, H)).astype(dtype),
        "W_hh": rng.uniform(-k, k, (H, H)).astype(dtype),
        "b_h": rng.uniform(-k, k, H).astype(dtype),
    }
    if with_h0:
        args["h0"] = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    return args


def lstm_valid(rng, T, B, D, H, dtype, forget_gate, with_states):
    k, G = 1 / np.sqrt(H), 4 if forget_gate else 3
    args = {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "W_x": rng.uniform(-k, k, (D, G * H)).astype(dtype),
        "W_h": rng.uniform(-k, k, (H, G * H)).astype(dtype),
        "b": rng.uniform(-k, k, G * H).astype(dtype),
    }
    if with_states:
        args["h0"] = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
        args["c0"] = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    return args


def gru_valid(rng, T, B, D, H, dtype, with_h0):
    k = 1 / np.sqrt(H)
    args = {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "W_x": rng.uniform(-k, k, (D, 3 * H)).astype(dtype),
        "W_h": rng.uniform(-k, k, (H, 3 * H)).astype(dtype),
        "b": rng.uniform(-k, k, 3 * H).astype(dtype),
        "b_hn": rng.uniform(-k, k, H).astype(dtype),
    }
    if with_h0:
        args["h0"] = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    return args


@st.composite
def lengths_argument(draw, T: int, B: int):
    """None, valid lengths (any order), or lengths wrong in count, range, dtype or kind."""
    kind = draw(st.sampled_from(["none", "valid", "valid", "range", "count", "dtype", "python"]))
    if kind == "none":
        return None
    if kind == "valid":
        return np.array(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    if kind == "range":
        values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=B, max_size=B))
        return np.array(values, dtype=np.int64)
    if kind == "count":
        return np.ones(draw(st.sampled_from([0, B + 1, max(0, B - 1)])), dtype=np.int64)
    if kind == "dtype":
        return np.ones(B, dtype=draw(st.sampled_from(OTHER_DTYPES + [np.dtype(np.float64)])))
    return draw(st.sampled_from([T, 1.5, "3", [T] * B, [[T]] * B, RAGGED, object(), [2**70] * B]))


TEXT_CHOICES = st.one_of(st.text(max_size=8), st.none(), st.integers(), st.binary(max_size=4))


# ---------------------------------------------------------------------------------------------------------------
# Forward kernels


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, with_h0=st.booleans(), data=st.data())
def test_rnn_forward(T, B, D, H, dtype, seed, with_h0, data):
    valid = rnn_valid(np.random.default_rng(seed), T, B, D, H, dtype, with_h0)
    args, _ = data.draw(mutated(valid, seed, optional=("h0",)))
    activation = data.draw(st.one_of(st.sampled_from(["tanh", "relu", "sigmoid"]), TEXT_CHOICES))
    fast, reference = both("rnn_forward", args, activation=activation)
    names = [*valid, "h0", "activation"]
    assert_same_outcome(fast, reference, names, call_dtype(args, "x", dtype), "outputs", args)


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_lstm_forward(T, B, D, H, dtype, seed, data):
    forget_gate = data.draw(st.booleans())
    valid = lstm_valid(np.random.default_rng(seed), T, B, D, H, dtype, forget_gate, data.draw(st.booleans()))
    args, _ = data.draw(mutated(valid, seed, optional=("h0", "c0")))
    flag = data.draw(st.one_of(st.just(forget_gate), st.sampled_from([np.bool_(forget_gate), 1, 0, None, "yes"])))
    fast, reference = both("lstm_forward", args, forget_gate=flag)
    names = [*valid, "h0", "c0", "forget_gate"]
    assert_same_outcome(fast, reference, names, call_dtype(args, "x", dtype), "outputs", args)


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, with_h0=st.booleans(), data=st.data())
def test_gru_forward(T, B, D, H, dtype, seed, with_h0, data):
    valid = gru_valid(np.random.default_rng(seed), T, B, D, H, dtype, with_h0)
    args, _ = data.draw(mutated(valid, seed, optional=("h0",)))
    fast, reference = both("gru_forward", args, lengths=data.draw(lengths_argument(T, B)))
    names = [*valid, "h0", "lengths"]
    assert_same_outcome(fast, reference, names, call_dtype(args, "x", dtype), "outputs", args)


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_lengths_and_checkpoint_arguments(T, B, D, H, dtype, seed, data):
    """Every valid argument but ``lengths`` (all three forwards) and ``checkpoint`` (the LSTM's)."""
    rng = np.random.default_rng(seed)
    lengths = data.draw(lengths_argument(T, B))
    cell = data.draw(st.sampled_from(["rnn", "lstm", "gru"]))
    if cell == "rnn":
        fast, reference = both("rnn_forward", rnn_valid(rng, T, B, D, H, dtype, True), lengths=lengths)
    elif cell == "gru":
        fast, reference = both("gru_forward", gru_valid(rng, T, B, D, H, dtype, True), lengths=lengths)
    else:
        checkpoint = data.draw(st.sampled_from([None, None, "sqrt", 1, T, 2**70, 0, -3, 1.5, "log", True, b"x"]))
        args = lstm_valid(rng, T, B, D, H, dtype, True, True)
        fast, reference = both("lstm_forward", args, lengths=lengths, checkpoint=checkpoint)
    assert_same_outcome(fast, reference, ["lengths", "checkpoint"], dtype, "outputs", {})


@FUZZ
@given(T=SIZES, B=SIZES, H=SIZES, K=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_softmax_cross_entropy(T, B, H, K, dtype, seed, data):
    rng = np.random.default_rng(seed)
    valid = {
        "hs": rng.uniform(-1, 1, (T, B, H)).astype(dtype),
        "W_yh": rng.uniform(-1, 1, (H, K)).astype(dtype),
        "b_y": rng.uniform(-1, 1, K).astype(dtype),
    }
    args, _ = data.draw(mutated(valid, seed))
    targets = rng.integers(0, K, (T, B))
    ignore_index = data.draw(
        st.one_of(
            st.just(-100),
            st.integers(-(2**70), 2**70),
            st.sampled_from([np.int8(-1), np.uint64(2**64 - 1), np.int64(-(2**63)), True, 1.5, None, "-1"]),
        )
    )
    targets_kind = data.draw(st.sampled_from(["valid", "dtype", "values", "shape", "ignored", "python"]))
    if targets_kind == "dtype":
        targets = np.zeros((T, B), dtype=data.draw(st.sampled_from(OTHER_DTYPES + [np.dtype(np.float64)])))
    elif targets_kind == "values":
        targets = targets.copy()
        targets.flat[data.draw(st.integers(0, targets.size - 1))] = data.draw(st.integers(-(2**63), 2**63 - 1))
    elif targets_kind == "shape":
        targets = np.zeros(tuple(data.draw(st.lists(st.integers(0, 7), max_size=3))), dtype=np.int64)
    elif targets_kind == "ignored" and isinstance(ignore_index, int) and -(2**63) <= ignore_index < 2**63:
        targets = np.where(rng.random((T, B)) < 0.5, ignore_index, targets).astype(np.int64)
    elif targets_kind == "python":
        targets = data.draw(st.sampled_from([None, 0, "t", targets.tolist(), np.asfortranarray(targets)]))
    args["targets"] = targets
    reduction = data.draw(st.one_of(st.sampled_from(["sum", "mean"]), TEXT_CHOICES))
    fast, reference = both("softmax_cross_entropy", args, reduction=reduction, ignore_index=ignore_index)
    names = [*valid, "targets", "reduction", "ignore_index"]
    assert_same_outcome(fast, reference, names, call_dtype(args, "hs", dtype), "outputs", args)


# ---------------------------------------------------------------------------------------------------------------
# Backward kernels: the upstream gradients and the cache replaced


@st.composite
def cache_replacement(draw, cache, other_kind_cache):
    """The cache itself, a wrong object, or the cache of the other kernel."""
    return draw(st.sampled_from([cache, cache, cache, other_kind_cache, None, {}, (), "cache"]))


def check_backward(data, kernel: str, caches, other_kind_cache, valid: dict, seed, dtype, optional=()):
    """``kernel`` (e.g. "rnn_backward") of both paths on mutated upstream gradients and the cache of its own
    path, of the other path (caches are interchangeable), or a replaced one: the same outcome, inputs unchanged."""
    fast_cache, ref_cache = caches
    args, _ = data.draw(mutated(valid, seed, optional=optional))
    which = data.draw(st.sampled_from(["own", "other backend", "replaced"]))
    before = snapshot(args)
    if which == "replaced":
        cache = data.draw(cache_replacement(fast_cache, other_kind_cache))
        fast_cache = ref_cache = cache
    elif which == "other backend":
        fast_cache, ref_cache = ref_cache, fast_cache
    fast = call(getattr(fb, kernel), fast_cache, **args)
    assert_unchanged(before, args)
    reference = call(getattr(ref, kernel), ref_cache, **args)
    assert_same_outcome(fast, reference, ["cache", *valid], dtype, "grads", args)


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_rnn_backward(T, B, D, H, dtype, seed, data):
    rng = np.random.default_rng(seed)
    activation = data.draw(st.sampled_from(["tanh", "relu", "sigmoid"]))
    problem = rnn_valid(rng, T, B, D, H, dtype, True)
    _, fast_cache = fb.rnn_forward(**problem, activation=activation)
    _, ref_cache = ref.rnn_forward(**problem, activation=activation)
    _, _, lstm_cache = fb.lstm_forward(np.ones((1, 1, 1), dtype), *(np.ones(s, dtype) for s in [(1, 4), (1, 4), 4]))
    valid = {"dhs": rng.standard_normal((T, B, H)).astype(dtype)}
    check_backward(data, "rnn_backward", (fast_cache, ref_cache), lstm_cache, valid, seed, dtype)


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_lstm_backward(T, B, D, H, dtype, seed, data):
    rng = np.random.default_rng(seed)
    forget_gate = data.draw(st.booleans())
    problem = lstm_valid(rng, T, B, D, H, dtype, forget_gate, True)
    _, _, fast_cache = fb.lstm_forward(**problem, forget_gate=forget_gate)
    _, _, ref_cache = ref.lstm_forward(**problem, forget_gate=forget_gate)
    _, rnn_cache = fb.rnn_forward(*(np.ones(s, dtype) for s in [(1, 1, 1), (1, 1), (1, 1), 1]))
    valid = {"dhs": rng.standard_normal((T, B, H)).astype(dtype), "dc_T": rng.standard_normal((B, H)).astype(dtype)}
    check_backward(data, "lstm_backward", (fast_cache, ref_cache), rnn_cache, valid, seed, dtype, optional=("dc_T",))


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_gru_backward(T, B, D, H, dtype, seed, data):
    rng = np.random.default_rng(seed)
    problem = gru_valid(rng, T, B, D, H, dtype, True)
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B, max_size=B)))
    _, fast_cache = fb.gru_forward(**problem, lengths=lengths)
    _, ref_cache = ref.gru_forward(**problem, lengths=lengths)
    _, rnn_cache = fb.rnn_forward(*(np.ones(s, dtype) for s in [(1, 1, 1), (1, 1), (1, 1), 1]))
    valid = {"dhs": rng.standard_normal((T, B, H)).astype(dtype)}
    check_backward(data, "gru_backward", (fast_cache, ref_cache), rnn_cache, valid, seed, dtype)


# ---------------------------------------------------------------------------------------------------------------
# workspace_bytes

SIZE_ARGUMENTS = st.one_of(
    st.integers(1, 64),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64, True, 1.0, None, "3", np.int8(3), np.uint64(2**64 - 1)]),
)


@FUZZ
@given(
    cell=st.one_of(st.sampled_from(["rnn", "lstm", "gru"]), TEXT_CHOICES),
    sizes=st.tuples(SIZE_ARGUMENTS, SIZE_ARGUMENTS, SIZE_ARGUMENTS, SIZE_ARGUMENTS),
    dtype=st.one_of(
        st.sampled_from(OTHER_DTYPES + [np.float32, np.float64, "float32", "f8", None]),
        st.sampled_from(["nonsense", 3, 1.5, object(), "f8,f8", "(2)f8"]),
    ),
    forget_gate=st.sampled_from([True, False]),
)
def test_workspace_bytes(cell, sizes, dtype, forget_gate):
    ok, value = call(fb.workspace_bytes, cell, *sizes, dtype, forget_gate=forget_gate)
    if not ok:
        assert str(value).split(":", 1)[0] in ("cell", "T", "B", "D", "H", "dtype", "forget_gate"), value
        return
    # No wrap-around whatever the sizes: the result is at least the states forward keeps for backward.
    T, B, D, H = (int(s) for s in sizes)
    itemsize = np.dtype(dtype).itemsize
    assert isinstance(value, int) and value >= T * B * H * itemsize + T * B * D * itemsize > 0


# ---------------------------------------------------------------------------------------------------------------
# Layers


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_layers(T, B, D, H, dtype, seed, data):
    rng = np.random.default_rng(seed)
    cell = data.draw(st.sampled_from(["RNN", "LSTM", "GRU"]))
    batch_first = data.draw(st.booleans())
    layers = [
        getattr(fb, cell)(D, H, seed=seed, dtype=dtype, batch_first=batch_first, backend=b)
        for b in ("fast", "reference")
    ]
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    state = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    valid = {"x": x, "h": state} | ({"c": state[::-1].copy()} if cell == "LSTM" else {})
    args, _ = data.draw(mutated(valid, seed, optional=("h", "c")))
    state_arg = (args["h"], args["c"]) if cell == "LSTM" else args["h"]
    before = snapshot(args)
    fast = call(layers[0].forward, args["x"], state_arg)
    assert_unchanged(before, args)
    reference = call(layers[1].forward, args["x"], state_arg)
    names = ["x", "h0", "c0", "state", "state[0] (h)", "state[1] (c)"]
    held = layers[0].cache.cells if layers[0].cache is not None else ()
    assert_same_outcome(fast, reference, names, dtype, "outputs", {"x": args["x"]}, held)
    if not fast[0]:
        return
    hs = fast[1][0]
    dhs = data.draw(replacement(rng.standard_normal(hs.shape).astype(dtype), seed, False))
    fast = call(layers[0].backward, dhs)
    reference = call(layers[1].backward, dhs)
    assert_same_outcome(fast, reference, ["dhs"], dtype, "grads", {"dhs": dhs})
    if fast[0]:
        for name in layers[0].grads:
            scale = max(1.0, float(np.max(np.abs(layers[1].grads[name]))))
            tol = TOL[np.dtype(dtype).type]["grads"]
            np.testing.assert_allclose(layers[0].grads[name], layers[1].grads[name], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_layers_name_a_ragged_input(cell):
    with pytest.raises(ValueError, match=r"^x: "):
        getattr(fb, cell)(1, 2).forward(RAGGED)


def test_the_campaign_reaches_every_outcome():
    """Guards against a campaign that passes trivially: the regular examples include successes, TypeErrors,
    ValueErrors and MemoryErrors (from the huge zero-stride arrays)."""
    seen = set()

    @settings(FUZZ, max_examples=200, derandomize=True)
    @given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, seed=SEEDS, data=st.data())
    def collect(T, B, D, H, seed, data):
        valid = rnn_valid(np.random.default_rng(seed), T, B, D, H, np.float64, False)
        args, _ = data.draw(mutated(valid, seed))
        ok, value = call(fb.rnn_forward, **args)
        seen.add("ok" if ok else type(value).__name__)

    collect()
    assert {"ok", "TypeError", "ValueError", "MemoryError"} <= seen, seen


# ---------------------------------------------------------------------------------------------------------------
# Caches assembled by hand: RNNCache and LSTMCache are public types, and the fast backward hands their fields to
# the core without the Python checks of the forward functions. The core must still refuse what does not fit.


@FUZZ
@given(T=SIZES, B=SIZES, D=SIZES, H=SIZES, dtype=FLOATS, seed=SEEDS, data=st.data())
def test_forged_caches(T, B, D, H, dtype, seed, data):
    rng = np.random.default_rng(seed)
    if data.draw(st.booleans()):
        _, cache = fb.rnn_forward(**rnn_valid(rng, T, B, D, H, dtype, True))
        backward, extra = fb.rnn_backward, {}
    else:
        _, _, cache = fb.lstm_forward(**lstm_valid(rng, T, B, D, H, dtype, True, True))
        backward, extra = fb.lstm_backward, {"dc_T": rng.standard_normal((B, H)).astype(dtype)}
    fields = {f.name: getattr(cache, f.name) for f in dataclasses.fields(cache)}
    arrays = {name: value for name, value in fields.items() if isinstance(value, np.ndarray)}
    forged, _ = data.draw(mutated(arrays, seed))
    # Arrays only: a field that is not an array at all stops in Python with an AttributeError (c.hs.dtype) before
    # the core is reached; that is a misuse of the type, not input the core could misread.
    # Aligned arrays only: the backward functions hand the cache's arrays to the core as they are, and an unaligned
    # float array there is read as misaligned floats (undefined behaviour, reported by tools/sanitize.sh); forward
    # results are always aligned, so only hand-built caches can carry one.
    forged = {
        name: value if isinstance(value, np.ndarray) and value.flags.aligned else np.asarray(arrays[name])
        for name, value in forged.items()
    }
    if "activation" in fields:
        # text only: bytes that are not UTF-8 are test_forged_cache_with_bytes_activation
        forged["activation"] = data.draw(st.one_of(st.just(fields["activation"]), st.text(max_size=8)))
    cache = dataclasses.replace(cache, **forged)
    ok, value = call(backward, cache, rng.standard_normal((T, B, H)).astype(dtype), **extra)
    if not ok:
        # isinstance, not the exact type: the bindings allocate the gradients from the forged sizes before the core
        # checks them, so x [0, 0, 2**31] asks NumPy for dW_x [2**31, 4H] and gets its unnamed MemoryError subclass
        assert isinstance(value, ALLOWED), f"{type(value).__name__}: {value}"
        if isinstance(value, MemoryError):
            return
        named = [
            name
            for name in [
                *fields,
                "dhs",
                "dc_T",
                "T (time steps)",
                "B (batch)",
                "D (input features)",
                "H (hidden units)",
            ]
            if name in str(value)
        ]
        assert named, f"the message names no argument or cache field: {value}"


def test_forged_cache_with_bytes_activation():
    _, cache = fb.rnn_forward(*(np.ones(shape) for shape in [(1, 1, 1), (1, 1), (1, 1), 1]))
    cache = dataclasses.replace(cache, activation=b"\x80")
    with pytest.raises(ValueError) as error:
        fb.rnn_backward(cache, np.ones((1, 1, 1)))
    assert type(error.value) is ValueError
