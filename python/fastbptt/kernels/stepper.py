"""One cell run a step (or a few steps) at a time, its weights packed once.

A sequence kernel packs its weights for its products on every call; over T steps that cost is paid once, but a
Python loop of one-step calls (autoregressive generation, beam search, a decoder fed its own outputs, a step cell
in fastbptt.torch) would pay it at every step, and for a small batch packing costs as much as the step's product.
A :class:`Stepper` packs a copy of the weights when it is made and runs every step with it.
"""

from __future__ import annotations

import numpy as np

from . import _checks, cells
from ._types import read_only


class Stepper:
    """A cell with its weights packed once, run one step (or a few) per call, forward and backward.

    ``Stepper(cell, params, ...)`` copies ``params`` (the cell's parameters by base name, kernel layout: for the
    LSTM ``W_x [D, G*H]``, ``W_h [H, G*H]`` (``[P, G*H]`` with a projection), ``b [G*H]``) into read-only arrays of
    one dtype and packs them. Later
    edits of the arrays given do not reach it: make a new Stepper for new weights (one per optimiser step, say).
    A forward has the bits of the cell's sequence kernel over the same steps: steps run one after another, the
    state carried, give the bits of one call over all of them. Backward through them step by step adds up the
    weight gradients in another order than one sequence call does, so those agree to rounding.

    Parameters
    ----------
    cell : str, Cell subclass or Cell
        A registered cell's name ("rnn", "lstm", "gru"), its specification, or a specification instance (its
        options and backend then come with it).
    params : dict of array_like
        The cell's parameters by base name (``Cell.parameter_shapes``).
    dtype : float32 or float64, optional
        The dtype to compute in; the dtype of ``params`` when omitted (float64 for anything that is not float32).
    backend : {"fast", "reference"}
        The compiled core (weights packed) or the NumPy reference (nothing packed: the same results to rounding).
    **options
        The cell's options (``activation=`` of the RNN, ``forget_gate=`` of the LSTM).

    Examples
    --------
    >>> step = fastbptt.Stepper("lstm", {"W_x": W_x, "W_h": W_h, "b": b})
    >>> state = None
    >>> for t in range(T):
    ...     h, state, _ = step(x[t], state, inference=True)
    """

    def __init__(self, cell, params: dict, *, dtype=None, backend: str = "fast", **options):
        if isinstance(cell, cells.Cell):
            if options or backend != "fast":
                raise TypeError("Stepper: a Cell instance brings its own options and backend; pass them to it")
            self.cell = cell
        else:
            self.cell = cells.cell_class(cell)(backend, **options)
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of the cell's parameters by name, got {type(params).__name__}")
        names = self.cell.parameter_names
        missing, unknown = [n for n in names if n not in params], sorted(set(params) - set(names))
        if missing or unknown:
            raise ValueError(
                f"params: {self.cell.name} takes {', '.join(names)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )
        if dtype is None:
            given = _checks.as_array(names[0], params[names[0]]).dtype
            dtype = given if given in _checks.FLOAT_DTYPES else np.float64
        self.dtype = _checks.float_dtype("dtype", dtype)
        arrays = {name: np.array(params[name], dtype=self.dtype, order="C", copy=True) for name in names}
        W_h = arrays[names[1]]
        if W_h.ndim != 2:
            raise ValueError(f"{names[1]}: expected a matrix [state features, gate blocks * H], got shape {W_h.shape}")
        first_weights = arrays[names[0]]
        if first_weights.ndim != 2:
            raise ValueError(f"{names[0]}: expected a matrix [D, ...], got shape {first_weights.shape}")
        # the recurrent matrix multiplies the state into every gate block: H units a block
        self.input_size, self.hidden_size = first_weights.shape[0], W_h.shape[1] // len(self.cell.gate_blocks)
        expected = self.cell.parameter_shapes(self.input_size, self.hidden_size)
        for name in names:
            if arrays[name].shape != expected[name]:
                raise ValueError(f"{name}: expected shape {expected[name]}, got {arrays[name].shape}")
        self.params = {name: read_only(array) for name, array in arrays.items()}
        self.packed = self.cell.pack(self.params)

    def __repr__(self) -> str:
        return (
            f"Stepper({self.cell!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"dtype={np.dtype(self.dtype).name})"
        )

    def __call__(self, x, state=None, *, inference: bool = False):
        """Runs the cell over ``x``: one step ``[B, D]`` or a few ``[T, B, D]`` (time-major), from ``state`` (None:
        zeros; an array ``[B, H]``, or a pair ``(h, C)`` for the LSTM, a part None for zeros).

        Returns ``(h, final state, cache)``: ``h [B, H]`` for one step (``hs [T, B, H]`` for several; P features
        for a projected LSTM), the state
        after the last step, and what :meth:`backward` needs (None with ``inference``, which keeps nothing for a
        backward). ``h`` is read-only unless ``inference``: backward reads it.
        """
        x = _checks.float_array("x", x, self.dtype, like="the Stepper's weights")
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size or 0 in x.shape:
            raise ValueError(f"x: expected [B, D] or [T, B, D] with D = {self.input_size}, got shape {x.shape}")
        one_step = x.ndim == 2
        x = x[None] if one_step else x
        state = self._checked_state("state", state, x.shape[1])
        hs, final, cache = self.cell.forward_checked(
            self.params, x, state, None, _checks.flag("inference", inference), self.packed
        )
        return (hs[0] if one_step else hs), final, cache

    def backward(self, cache, dh, dstate=None, *, need_dx: bool = True, need_weight_grads: bool = True):
        """Backpropagates a call's ``cache``: ``dh`` is dL/dh of its output (``[B, H]`` for one step, ``[T, B, H]``
        for several), ``dstate`` of its final state (None: none; for the LSTM a pair whose parts may be None).

        Returns ``(dx, dstate0, grads)``: dx of the call's input (its shape; None without ``need_dx``), the
        gradient of the state it started from, and the parameters' gradients by base name (None without
        ``need_weight_grads``), each a new array.
        """
        if cache is None or getattr(cache, "packed", None) is not self.packed:
            raise TypeError("cache: expected the cache of a call of this Stepper (made without inference=True)")
        hs = cache.hs
        dh = _checks.float_array("dh", dh, self.dtype, like="the Stepper's weights")
        one_step = dh.ndim == 2 and hs.shape[0] == 1
        dhs = dh[None] if one_step else dh
        _checks.check_shape("dh", dhs, hs.shape, "[T, B, H]")
        dstate = self._checked_state("dstate", dstate, hs.shape[1])
        dx, dstate0, grads = self.cell.backward_checked(
            self.params,
            cache,
            dhs,
            dstate,
            _checks.flag("need_dx", need_dx),
            _checks.flag("need_weight_grads", need_weight_grads),
        )
        return (dx[0] if one_step and dx is not None else dx), dstate0, grads

    def _checked_state(self, name: str, state, B: int):
        """``state`` (or a state's gradient) as the cell takes it: None, an array [B, H], or a pair of such arrays
        (parts may be None) for a cell of two state parts; C-contiguous of the Stepper's dtype."""
        if state is None:
            return None
        parts = self.cell.state_parts
        sizes = self.cell.state_sizes(self.hidden_size)
        if parts == 2:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name}: expected None or a pair (h, C), got {type(state).__name__}")
            return tuple(self._checked_part(f"{name}[{k}]", part, B, sizes[k]) for k, part in enumerate(state))
        return self._checked_part(name, state, B, sizes[0])

    def _checked_part(self, name: str, array, B: int, size: int):
        if array is None:
            return None
        array = _checks.float_array(name, array, self.dtype, like="the Stepper's weights")
        _checks.check_shape(name, array, (B, size), "[B, H]")
        return array
