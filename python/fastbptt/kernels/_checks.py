"""Argument checks shared by the fast path and the reference: one place decides what is valid input.

Errors: ``TypeError`` for a dtype problem, ``ValueError`` for a shape or value problem,
each naming the argument, what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ACTIVATIONS = ("tanh", "relu", "sigmoid")
REDUCTIONS = ("sum", "mean")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def as_array(name: str, value) -> np.ndarray:
    """``np.asarray(value)``; ValueError naming the argument when NumPy cannot make an array of it (a ragged list)."""
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name}: cannot be read as an array ({error})") from error


def float_array(name: str, value, dtype: np.dtype | None = None, like: str = "x") -> np.ndarray:
    """``value`` as a C-contiguous, aligned float32/float64 array; with ``dtype`` given (the dtype of the argument
    named ``like``), it must have exactly that dtype.

    Non-contiguous, Fortran-order, strided and unaligned inputs are copied here, once (the core reads whole
    elements: a float at an odd address would be undefined behaviour); others are returned as they are. A copy too
    large to allocate (e.g. of a zero-stride broadcast view with huge sides) raises MemoryError naming ``name``.
    """
    array = as_array(name, value)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a float32 or float64 array, got dtype {array.dtype}; "
            f"convert it first, e.g. np.asarray({name}, dtype=np.float32)"
        )
    if dtype is not None and array.dtype != dtype:
        raise TypeError(
            f"{name}: has dtype {array.dtype} but {like} has dtype {dtype}; all arrays of one call must share one "
            f"dtype: convert with {name}.astype(np.{dtype})"
        )
    try:
        contiguous = np.ascontiguousarray(array)
        return contiguous if contiguous.flags.aligned else contiguous.copy()
    except (MemoryError, ValueError) as error:  # NumPy says ValueError when the byte count exceeds its index type
        raise MemoryError(
            f"{name}: a C-contiguous copy of this {array.dtype} array of shape {array.shape} "
            f"({array.size * array.itemsize} bytes) cannot be allocated ({error})"
        ) from None


def check_shape(name: str, array: np.ndarray, expected: Sequence[int], symbols: str) -> None:
    """Raises ValueError unless ``array.shape == expected``; ``symbols`` spells the shape, e.g. ``"[H, H]"``."""
    if array.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {symbols} = {tuple(expected)}, got {array.shape}")


def sequence(name: str, value, dtype: np.dtype | None = None) -> np.ndarray:
    """A time-major sequence ``[T, B, D]`` with T, B, D >= 1."""
    array = float_array(name, value, dtype)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D array [T, B, D] (time-major), got shape {array.shape}")
    for axis, what in enumerate(("T (time steps)", "B (batch)", "D (features)")):
        if array.shape[axis] < 1:
            raise ValueError(f"{name}: {what} must be >= 1, got shape {array.shape}")
    return array


def matrix(name: str, value, dtype: np.dtype, like: str = "x") -> np.ndarray:
    array = float_array(name, value, dtype, like)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {array.shape}")
    return array


def hidden_size(name: str, W: np.ndarray, gates: int, cell: str) -> int:
    """H from a recurrent weight ``W [H, gates*H]``; ValueError when its shape is not of that form."""
    H = W.shape[0]
    if H < 1 or W.shape[1] != gates * H:
        symbols = "[H, H]" if gates == 1 else f"[H, {gates}H]"
        raise ValueError(f"{name}: expected shape {symbols} for {cell}, got {W.shape}")
    return H


def initial_state(name: str, value, dtype: np.dtype, B: int, H: int) -> np.ndarray:
    """An initial state ``[B, H]``; zeros when ``value`` is None."""
    if value is None:
        return np.zeros((B, H), dtype=dtype)
    array = float_array(name, value, dtype)
    check_shape(name, array, (B, H), "[B, H]")
    return array


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1: TypeError for a non-integer (bool included), ValueError below 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return int(value)


def int64(name: str, value: int) -> int:
    """``value`` (an int) if it fits in int64, the type of every size in the core; ValueError naming the argument
    otherwise, before the compiled module's TypeError, which names none, could occur."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name}: must fit in int64 ({INT64_MIN} .. {INT64_MAX}), got {value}")
    return value


def size(name: str, value) -> int:
    """A size (T, B, D, H): an int in ``1 .. INT64_MAX``; TypeError for a non-integer, ValueError otherwise."""
    return int64(name, positive_int(name, value))


def flag(name: str, value) -> bool:
    """``value`` as a bool: TypeError for anything but True or False (NumPy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def float_dtype(name: str, dtype) -> np.dtype:
    """``dtype`` as float32 or float64; TypeError otherwise."""
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r} ({error})") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    return dtype


def choice(name: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def targets_array(value, T: int, B: int, K: int, ignore_index: int) -> np.ndarray:
    """Class indices ``[T, B]`` in ``0 .. K-1`` (or ``ignore_index``) as C-contiguous int64."""
    array = as_array("targets", value)
    if array.dtype.kind not in "iu":  # not bool, and not timedelta64 (which NumPy counts as a signed integer)
        raise TypeError(
            f"targets: expected an integer array of class indices, got dtype {array.dtype}; "
            "convert it first, e.g. targets.astype(np.int64)"
        )
    check_shape("targets", array, (T, B), "[T, B]")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
    int64("ignore_index", int(ignore_index))
    if 0 <= ignore_index < K:
        raise ValueError(f"ignore_index: must lie outside the class indices 0 .. {K - 1}, got {ignore_index}")
    counted = array[array != ignore_index]
    if counted.size:
        low, high = int(counted.min()), int(counted.max())
        if low < 0 or high >= K:
            bad = low if low < 0 else high
            raise ValueError(
                f"targets: class indices must lie in 0 .. {K - 1} (K = {K}) or equal ignore_index "
                f"({ignore_index}), got {bad}"
            )
    return np.ascontiguousarray(array, dtype=np.int64)


def lengths_array(value, T: int, B: int) -> np.ndarray | None:
    """Per-sequence lengths ``[B]`` in ``1 .. T`` as C-contiguous int64, or None (every sequence runs T steps).

    Accepts any integer array or sequence of Python ints; TypeError for other dtypes (bool and float included,
    so that 3.0 or True never pass as a length), ValueError for a wrong count or a length out of range.
    """
    if value is None:
        return None
    array = as_array("lengths", value)
    if array.dtype.kind not in "iu":  # not bool, float or timedelta64
        raise TypeError(
            f"lengths: expected integers (one length per sequence), got dtype {array.dtype}; "
            "convert it first, e.g. np.asarray(lengths, dtype=np.int64)"
        )
    check_shape("lengths", array, (B,), "[B]")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 1 or high > T:
            bad = low if low < 1 else high
            raise ValueError(f"lengths: every length must lie in 1 .. T = {T}, got {bad}")
    return np.ascontiguousarray(array, dtype=np.int64)


#: ndim of every array a cache holds, by field name
CACHE_NDIM = {
    **dict.fromkeys(("x", "gates", "hs", "cs", "hn", "h_checkpoints", "c_checkpoints"), 3),
    **dict.fromkeys(("x_hat", "h_hat", "c_hat", "inv_std"), 3),
    **dict.fromkeys(("W_x", "W_h", "W_xh", "W_hh", "W_hr", "h0", "c0"), 2),
    **dict.fromkeys(("b", "lengths", "gamma_ih", "gamma_hh", "gamma_c", "beta_c"), 1),
}


def cache_of(kind, cache):
    """``cache`` if it is a ``kind`` (a type or a tuple of types), else TypeError naming what was expected."""
    if not isinstance(cache, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"cache: expected the {names} returned by the forward function, got {type(cache).__name__}")
    # The core reads a cache's arrays where they lie: a hand-built cache must hold arrays it can read.
    dtype = getattr(cache, "x", None).dtype if isinstance(getattr(cache, "x", None), np.ndarray) else None
    for field in dataclasses.fields(cache):
        value = getattr(cache, field.name)
        if value is None and field.type.endswith("| None"):  # lengths, a projection: optional
            continue
        if not isinstance(value, np.ndarray):
            if field.type in ("np.ndarray", "np.ndarray | None"):
                raise TypeError(f"cache.{field.name}: expected an array, got {type(value).__name__}")
            continue
        ndim = CACHE_NDIM.get(field.name)
        if ndim is not None and value.ndim != ndim:
            raise ValueError(f"cache.{field.name}: expected a {ndim}-D array, got shape {value.shape}")
        expected = np.dtype(np.int64) if field.name == "lengths" else dtype
        if value.dtype != expected or not (value.flags.c_contiguous and value.flags.aligned):
            raise ValueError(
                f"cache.{field.name}: expected a C-contiguous, aligned {expected} array as the forward function "
                f"returns, got dtype {value.dtype} (C-contiguous: {value.flags.c_contiguous}, aligned: "
                f"{value.flags.aligned})"
            )
    return cache


def upstream(name: str, value, dtype: np.dtype, shape: Sequence[int], symbols: str) -> np.ndarray:
    """An upstream gradient of the given shape, in the dtype of the forward pass."""
    array = float_array(name, value, dtype, like="the forward pass")
    check_shape(name, array, shape, symbols)
    return array


def packed(packed, dtype: np.dtype):
    """``packed`` (weights a cell's ``pack`` made, or None) when it is of ``dtype``; TypeError otherwise."""
    if packed is None:
        return None
    from .. import _core

    expected = _core.PackedFloat32 if dtype == np.float32 else _core.PackedFloat64
    if not isinstance(packed, expected):
        raise TypeError(f"packed: expected weights packed as {dtype} by the cell's pack, got {type(packed).__name__}")
    return packed


def checked_wavefront(wavefront, given, x):
    """``wavefront`` (None or a :class:`fastbptt.kernels.stack.Wavefront`) of a forward whose ``x`` was ``given``
    and, checked, is ``x``: a layer that reads its input as the layer below writes it must read that very array,
    which the checks must not have copied (converted to another dtype or layout)."""
    if wavefront is not None and wavefront.input_ready is not None and x is not given:
        raise ValueError(
            "wavefront: x is written as this call reads it, so it must be a C-contiguous array of the weights' "
            "dtype (it was converted)"
        )
    return wavefront


def checkpoint_alone(**others) -> None:
    """Refuses, naming it, the first of ``others`` (arguments by name) that is not None: a checkpointed forward
    takes none of them."""
    for name, value in others.items():
        if value is not None:
            raise ValueError(f"checkpoint: not supported together with {name}; pass one of them")


def inference_flag(inference, checkpoint) -> bool:
    """``inference`` checked, and refused together with ``checkpoint`` (which keeps states for a backward)."""
    inference = flag("inference", inference)
    if inference and checkpoint is not None:
        raise ValueError("checkpoint: keeps states for a backward, which inference=True has none of; pass one of them")
    return inference


def rnn_args(x, W_xh, W_hh, b_h, h0, activation):
    """Validated ``(x, W_xh, W_hh, b_h, h0, activation)`` of ``rnn_forward``; h0 None becomes zeros."""
    x, W_xh, W_hh, H = sequence_and_weights(x, "W_xh", W_xh, "W_hh", W_hh, 1, "the RNN")
    b_h = vector("b_h", b_h, x.dtype, H, "[H]")
    h0 = initial_state("h0", h0, x.dtype, x.shape[1], H)
    return x, W_xh, W_hh, b_h, h0, choice("activation", activation, ACTIVATIONS)


def sequence_and_weights(x, input_name: str, W_in, recurrent_name: str, W_rec, gates: int, cell: str):
    """Validated ``(x [T, B, D], W_in [D, gates*H], W_rec [H, gates*H], H)``, checked in that order but W_rec
    before W_in (H comes from W_rec)."""
    x = sequence("x", x)
    W_rec = matrix(recurrent_name, W_rec, x.dtype)
    H = hidden_size(recurrent_name, W_rec, gates, cell)
    W_in = matrix(input_name, W_in, x.dtype)
    check_shape(input_name, W_in, (x.shape[2], gates * H), "[D, H]" if gates == 1 else f"[D, {gates}H]")
    return x, W_in, W_rec, H


def vector(name: str, value, dtype: np.dtype, size: int, symbols: str) -> np.ndarray:
    """A float vector of ``size`` elements (``symbols``: its shape as the error message names it)."""
    array = float_array(name, value, dtype)
    check_shape(name, array, (size,), symbols)
    return array


def lstm_args(x, W_x, W_h, b, h0, c0, forget_gate, W_hr=None):
    """Validated ``(x, W_x, W_h, b, h0, c0, forget_gate, W_hr)`` of ``lstm_forward``; None states become zeros.
    With the projection ``W_hr [H, P]``, ``W_h`` is ``[P, G*H]`` and ``h0`` ``[B, P]``."""
    forget_gate = flag("forget_gate", forget_gate)
    G = 4 if forget_gate else 3
    cell = (
        "the LSTM with forget gate (blocks i, f, g, o)"
        if forget_gate
        else ("the LSTM without forget gate (blocks i, g, o)")
    )
    x = sequence("x", x)
    dtype = x.dtype
    T, B, D = x.shape
    W_h = matrix("W_h", W_h, dtype)
    if W_hr is not None:
        W_hr = matrix("W_hr", W_hr, dtype)
        H, P = W_hr.shape
        if H < 1 or P < 1:
            raise ValueError(f"W_hr: expected shape [H, P] with H, P >= 1, got {W_hr.shape}")
        check_shape("W_h", W_h, (P, G * H), f"[P, {G}H] for {cell} with a projection")
    else:
        H = P = W_h.shape[0]
    if H < 1 or W_h.shape[1] != G * H:
        hint = ""
        if H >= 1 and W_h.shape[1] == (7 - G) * H:
            hint = f"; it has {7 - G} gate blocks: pass forget_gate={not forget_gate}"
        raise ValueError(f"W_h: expected shape [H, {G}H] for {cell}, got {W_h.shape}{hint}")
    W_x = matrix("W_x", W_x, dtype)
    check_shape("W_x", W_x, (D, G * H), f"[D, {G}H]")
    b = vector("b", b, dtype, G * H, f"[{G}H]")
    h0 = initial_state("h0", h0, dtype, B, P)
    c0 = initial_state("c0", c0, dtype, B, H)
    return x, W_x, W_h, b, h0, c0, forget_gate, W_hr


def layer_norm_lstm_args(x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0):
    """Validated arguments of ``layer_norm_lstm_forward``, in its order; None states become zeros."""
    x, W_x, W_h, H = sequence_and_weights(x, "W_x", W_x, "W_h", W_h, 4, "the layer-normalised LSTM (i, f, g, o)")
    vectors = [
        vector(name, value, x.dtype, size, symbols)
        for name, value, size, symbols in (
            ("b", b, 4 * H, "[4H]"),
            ("gamma_ih", gamma_ih, 4 * H, "[4H]"),
            ("gamma_hh", gamma_hh, 4 * H, "[4H]"),
            ("gamma_c", gamma_c, H, "[H]"),
            ("beta_c", beta_c, H, "[H]"),
        )
    ]
    states = [initial_state(name, value, x.dtype, x.shape[1], H) for name, value in (("h0", h0), ("c0", c0))]
    return (x, W_x, W_h, *vectors, *states)


def gru_args(x, W_x, W_h, b, b_hn, h0):
    """Validated ``(x, W_x, W_h, b, b_hn, h0)`` of ``gru_forward``; h0 None becomes zeros."""
    x, W_x, W_h, H = sequence_and_weights(x, "W_x", W_x, "W_h", W_h, 3, "the GRU (blocks r, z, n)")
    b = vector("b", b, x.dtype, 3 * H, "[3H]")
    b_hn = vector("b_hn", b_hn, x.dtype, H, "[H]")
    h0 = initial_state("h0", h0, x.dtype, x.shape[1], H)
    return x, W_x, W_h, b, b_hn, h0


def output_args(hs, W_yh, b_y, targets, reduction, ignore_index):
    """Validated ``(hs, W_yh, b_y, targets, reduction)`` of ``softmax_cross_entropy``."""
    hs = sequence("hs", hs)
    dtype = hs.dtype
    T, B, H = hs.shape
    W_yh = matrix("W_yh", W_yh, dtype, like="hs")
    if W_yh.shape[0] != H or W_yh.shape[1] < 1:
        raise ValueError(f"W_yh: expected shape [H, K] = ({H}, K) with K >= 1, got {W_yh.shape}")
    K = W_yh.shape[1]
    b_y = float_array("b_y", b_y, dtype, like="hs")
    check_shape("b_y", b_y, (K,), "[K]")
    targets = targets_array(targets, T, B, K, ignore_index)
    return hs, W_yh, b_y, targets, choice("reduction", reduction, REDUCTIONS)
