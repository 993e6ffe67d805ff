"""The cells: one specification per cell, kept in one registry.

A specification (a subclass of :class:`Cell`) holds what the rest of the package knows of a cell: its gate blocks,
its parameters (base names and shapes in the kernels' layout), its state parts, its initialisation schemes, the
kernels that run it (the compiled core's or the NumPy reference's, by ``backend``), what one training call of it
allocates, and torch.nn's names and layout of its parameters. The layers, the stack driver, fastbptt.torch, memory
accounting and the diagnostics ask a specification; none of them knows a cell by name.

An instance is a cell with its options (the RNN's activation, the LSTM's forget gate) on one backend. It runs one
layer and direction forward and backward on a dict of its parameters by base name. States are an array ``[B, H]``
for a cell of one state part (h) and a pair ``(h, C)`` for two; None means zeros (forward) or no gradient
(backward). Adding a cell: subclass :class:`Cell`, fill in what it declares, and :func:`register` it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import numpy as np

from . import _checks
from . import init as initializers
from ._types import GRUCache, LayerNormLSTMCache, LSTMCache, RNNCache
from .conversions import gru_weights_from_torch
from .sequences import final_states

BACKENDS = ("fast", "reference")


def backend_module(backend: str):
    """The module that computes for ``backend`` (checked by the caller): "fast" (the compiled core) or
    "reference" (plain NumPy)."""
    module = _BACKEND_MODULES.get(backend)
    if module is None:
        from . import functional, reference  # imported here: they import this module's neighbours

        module = _BACKEND_MODULES[backend] = functional if backend == "fast" else reference
    return module


_BACKEND_MODULES: dict = {}  # filled on first use, so that an import statement does not run on every call


def with_final_state_gradient(dhs: np.ndarray, dh_T, hs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """``dhs`` with ``dh_T`` added at each sequence's last step (h there is both an output and the final state)."""
    if dh_T is None:
        return dhs
    dhs = _checks.upstream("dhs", dhs, hs.dtype, hs.shape, "[T, B, H]")
    return _plus_final(dhs, _checks.upstream("dh_T", dh_T, hs.dtype, hs.shape[1:], "[B, H]"), lengths)


class StepKernels(NamedTuple):
    """One step of a cell, its weights bound (:meth:`Cell.step_kernels`). The arrays are C-contiguous of the
    weights' dtype, as the compiled kernels take them unchecked."""

    #: ``forward(x [1, B, D], *state) -> (final state parts, record)``: every state part an array ``[B, size]``
    #: (zeros for none); the final parts are views of the record's memory, which backward reads.
    forward: Callable
    #: ``backward(record, d_final, need_dx) -> (dx [1, B, D] or None, d_state parts, (x [B, D], h_prev [B, P],
    #: dz [B, dz columns]))``: ``d_final`` holds the final parts' gradients (a part None: zeros), ``d_state`` the
    #: gradients of the state the step started from, and the last the step's rows for :meth:`Cell.weight_gradients`.
    backward: Callable


class Cell:
    """The specification of a cell; an instance is the cell with its options, on one backend.

    A subclass sets the class attributes and implements :meth:`parameter_shapes`, :meth:`init_parameters`,
    :meth:`forward`, :meth:`backward`, :meth:`state_at`, :meth:`from_torch`, :meth:`to_torch_grads` and
    :meth:`training_scalars`; the rest has defaults that fit most cells.
    """

    #: the registry's key, and the ``kind`` a layer of this cell saves
    name: ClassVar[str] = ""
    #: 1: the state is h; 2: the state is (h, C)
    state_parts: ClassVar[int] = 1
    #: the cell's options and their defaults; a layer saves them with its parameters
    option_defaults: ClassVar[dict] = {}
    #: the initialisation schemes of :meth:`init_parameters`, the first the default
    init_schemes: ClassVar[tuple[str, ...]] = ("uniform",)
    #: why a scheme of another cell is not one of this cell's, by scheme
    init_hints: ClassVar[dict[str, str]] = {}
    #: torch.nn's parameter names of one layer and direction, in torch.nn's order
    torch_parameters: ClassVar[tuple[str, ...]] = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    #: those of them that ``bias=False`` leaves out
    torch_biases: ClassVar[tuple[str, ...]] = ("bias_ih", "bias_hh")
    #: torch-side initial values other than torch.nn's ``U(-1/sqrt(H), 1/sqrt(H))``: "ones" or "zeros" by name
    torch_initial_values: ClassVar[dict[str, str]] = {}
    #: whether forward has a checkpointed mode (``checkpoint=``) that keeps only segment-start states
    checkpointing: ClassVar[bool] = False

    def __init__(self, backend: str = "fast", **options):
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(self.option_defaults) or "none"
            raise TypeError(f"{self.name}: unknown option(s) {', '.join(unknown)} (its options: {known})")
        self.options = self.checked_options({**self.option_defaults, **options})
        self.backend = _checks.choice("backend", backend, BACKENDS)

    @property
    def kernels(self):
        """The module whose kernels run the cell (:func:`backend_module`)."""
        return backend_module(self.backend)

    def checked_options(self, options: dict) -> dict:
        """``options`` validated (a subclass raises TypeError/ValueError naming a bad one)."""
        return options

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}(backend={self.backend!r}{options})"

    # -- layout -----------------------------------------------------------------------------------------------
    @property
    def gate_blocks(self) -> tuple[str, ...]:
        """The gate blocks of the pre-activations, in column order (each H wide)."""
        return ("h",)

    def gate_columns(self, H: int) -> dict[str, slice]:
        """Each gate block's columns in a row of the pre-activations."""
        return {name: slice(k * H, (k + 1) * H) for k, name in enumerate(self.gate_blocks)}

    def parameter_shapes(self, D: int, H: int) -> dict[str, tuple[int, ...]]:
        """Base names and shapes of one layer and direction's parameters (kernel layout), in order."""
        raise NotImplementedError

    def state_sizes(self, H: int) -> tuple[int, ...]:
        """The features of each state part for H hidden units: H for each by default; the first is the output's
        (a layer's outputs have it, the next layer's input is it times the directions)."""
        return (H,) * self.state_parts

    def output_size(self, H: int) -> int:
        """The features of the output (and of the state h) for H hidden units."""
        return self.state_sizes(H)[0]

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The base names of :meth:`parameter_shapes`, in order."""
        return tuple(self.parameter_shapes(1, 1))

    def init_parameters(self, rng: np.random.Generator, D: int, H: int, scheme: str, **init_options) -> dict:
        """Initial parameters by base name (float64; the layer casts them), drawn from ``rng`` by ``scheme``."""
        raise NotImplementedError

    def init_options(self, scheme: str, **init_options) -> dict:
        """``init_options`` validated for ``scheme`` (a subclass takes its own, such as the LSTM's forget bias)."""
        if init_options:
            raise TypeError(f"{self.name}: init takes no option(s) {', '.join(sorted(init_options))}")
        return {}

    # -- running ----------------------------------------------------------------------------------------------
    def forward(
        self,
        p: dict,
        x: np.ndarray,
        state,
        lengths: np.ndarray | None,
        inference: bool = False,
        packed=None,
        wavefront=None,
    ):
        """``(hs [T,B,H], final state, cache)`` of one layer and direction over time-major ``x``; with ``inference``
        nothing is kept for a backward and the cache is None. ``packed``: :meth:`pack`'s result for ``p`` (kept by
        the caller across calls, and by the cache for backward), or None. ``wavefront``: the stack driver's, where
        :attr:`runs_in_wavefront` (see :class:`fastbptt.kernels.stack.Wavefront`), or None."""
        raise NotImplementedError

    @property
    def runs_in_wavefront(self) -> bool:
        """Whether :meth:`forward` takes ``wavefront=``: its steps can wait for those of an input written as it
        runs and publish those of its output (the fast backend's RNN, LSTM and GRU)."""
        return False

    def forward_checked(
        self, p: dict, x: np.ndarray, state, lengths, inference: bool = False, packed=None, wavefront=None
    ):
        """:meth:`forward` of arguments the caller has checked: ``p``'s arrays and ``x`` C-contiguous of one float
        dtype and of the cell's shapes, the state's arrays too (a part None for zeros), ``lengths`` None or an
        int64 array [B] of lengths in 1..T, ``packed`` :meth:`pack`'s for ``p``. The fast backend skips the
        kernels' own checks, which cost more than a step of a small cell (the step cells, a generated token) and
        add up to a good part of a short sequence's call (fastbptt.torch's modules). The final state may be a
        view of ``hs`` (read-only: backward reads it)."""
        return self.forward(p, x, state, lengths, inference, **_given(packed=packed, wavefront=wavefront))

    def backward_checked(
        self, p: dict, cache, dhs: np.ndarray, dstate, need_dx: bool = True, need_weight_grads: bool = True,
        wavefront=None,
    ):  # fmt: skip
        """:meth:`backward` of arguments the caller has checked (``dhs`` and ``dstate``'s arrays C-contiguous of
        the cache's dtype and shapes), for a cache of :meth:`forward_checked`."""
        return self.backward(p, cache, dhs, dstate, need_dx, need_weight_grads, **_given(wavefront=wavefront))

    def step_kernels(self, p: dict, packed) -> StepKernels:
        """One step's forward and backward bound to ``p`` and ``packed`` (:meth:`pack`'s), for a caller that runs
        many one-step calls and must pay little per call (the step cells of fastbptt.torch): no checks, no cache
        object, and a backward without the weight gradients that gives the rows :meth:`weight_gradients` forms
        them from, so that a loop of steps forms them once. The fast backend's RNN, LSTM (without projection) and
        GRU have them; see :class:`StepKernels` for what they take and give."""
        raise NotImplementedError(f"{self.name}: no step_kernels on the {self.backend} backend")

    def weight_gradients(self, p: dict, x: np.ndarray, h_prev: np.ndarray, dz: np.ndarray) -> dict:
        """The parameters' gradients by base name from rows of inputs ``x [N, D]``, the states before them
        ``h_prev [N, H]`` and their ``dz [N, dz columns]`` (:meth:`step_kernels`' rows, of any steps)."""
        raise NotImplementedError(f"{self.name}: no weight_gradients")

    def pack(self, p: dict):
        """``p``'s weights packed once for the forwards and backwards of many calls (the ``packed`` of
        :meth:`forward`), or None where the backend packs nothing (the reference)."""
        return None

    def backward(
        self,
        p: dict,
        cache,
        dhs: np.ndarray,
        dstate,
        need_dx: bool = True,
        need_weight_grads: bool = True,
        wavefront=None,
    ):
        """``(dx, dstate0, parameter gradients by base name)`` for ``forward``'s cache; dx is None without
        ``need_dx`` and the gradients None without ``need_weight_grads``. ``wavefront``: as for :meth:`forward`
        (``dstate``'s h part then None)."""
        raise NotImplementedError

    def state_at(self, cache, step: int):
        """The state after ``step`` steps of the forward of ``cache`` (0: the initial state), as new arrays."""
        raise NotImplementedError

    # -- a cache as arrays (fastbptt.torch under torch.compile) -----------------------------------------------
    def saved_arrays(self, cache) -> list:
        """The arrays of ``cache`` that :meth:`cache_from` cannot recompute from the inputs: what forward computed."""
        return [getattr(cache, name) for name in type(cache).computed]

    def saved_shapes(self, T: int, B: int, D: int, H: int) -> list:
        """The shapes of :meth:`saved_arrays` for a call of those sizes."""
        raise NotImplementedError(f"{self.name}: no cache layout for torch.compile (saved_shapes, cache_from)")

    def cache_from(self, p: dict, x: np.ndarray, state, lengths, saved: list):
        """The cache ``forward(p, x, state, lengths)`` returned, from its :meth:`saved_arrays` and the inputs."""
        raise NotImplementedError(f"{self.name}: no cache layout for torch.compile (saved_shapes, cache_from)")

    # -- torch.nn's layout ------------------------------------------------------------------------------------
    def torch_shapes(self, D: int, H: int) -> dict[str, tuple[int, ...]]:
        """torch.nn's shapes of :attr:`torch_parameters` (rows are the gate blocks, as torch.nn keeps them)."""
        G = len(self.gate_blocks)
        return {"weight_ih": (G * H, D), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}

    def from_torch(self, tensors: dict) -> dict:
        """The kernels' parameters from torch.nn's (NumPy arrays by torch name; None for a bias left out)."""
        raise NotImplementedError

    def to_torch_grads(self, grads: dict | None, has_bias: bool) -> list:
        """The gradients of :attr:`torch_parameters` (in that order; None for a bias left out, and all None when
        ``grads`` is None: not computed) from the kernels'."""
        raise NotImplementedError

    # -- memory -----------------------------------------------------------------------------------------------
    def dz_columns(self, H: int) -> int:
        """Columns of a row of backward's dZ: the gate blocks, and for some cells more."""
        return len(self.gate_blocks) * H

    def packed_weights(self, D: int, H: int) -> list[tuple[int, int, int]]:
        """(rows, columns, column groups) of each weight matrix the core packs for one forward and one backward:
        by default [W_x; W_h] stacked for the step product, W_hᵀ and W_xᵀ for backward."""
        G = len(self.gate_blocks)
        return [(D + H, G * H, G), (G * H, H, 1), (G * H, D, 1)]

    def training_scalars(self, T: int, B: int, D: int, H: int, block_rows: int, checkpoint) -> int:
        """Scalars one forward + backward allocates beyond its inputs, but for the packed weights: what forward
        keeps, backward's scratch of ``block_rows`` rows, default and returned states, and the gradients."""
        raise NotImplementedError


def _summed_bias_from_torch(tensors: dict, names: tuple[str, str, str]) -> dict:
    """(W_x, W_h, b) from torch.nn's four tensors: the transposes, and the sum of the two biases."""
    weight_ih, weight_hh = tensors["weight_ih"], tensors["weight_hh"]
    bias_ih, bias_hh = tensors.get("bias_ih"), tensors.get("bias_hh")
    summed = np.zeros(weight_hh.shape[0], weight_hh.dtype) if bias_ih is None else bias_ih + bias_hh
    W_x, W_h, b = names
    return {W_x: weight_ih.T, W_h: weight_hh.T, b: summed}


def _summed_bias_to_torch(grads: dict | None, names: tuple[str, str, str], has_bias: bool) -> list:
    if grads is None:
        return [None] * 4
    dW_x, dW_h, db = (grads[name] for name in names)
    # Two arrays, not one shared by both biases: in-place updates of one .grad (clipping) must not touch the other.
    return [dW_x.T, dW_h.T, *((db, db.copy()) if has_bias else (None, None))]


def _core_pack(cell: Cell, function: str, *arguments):
    """The compiled core's ``function`` (a cell's ``*_pack``) of ``arguments``, for the fast backend; None for the
    reference, which packs nothing. The weights must be C-contiguous arrays of one float dtype (as a Stepper
    keeps them)."""
    if cell.backend != "fast":
        return None
    from .. import _core

    return getattr(_core, function)(*arguments)


def _transposed_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """aᵀ b for :meth:`Cell.weight_gradients` (rows of the fast backend): the compiled core's product, which runs
    on fastbptt's threads, where NumPy's would run on its BLAS's own."""
    from .. import _core

    return _core.transposed_product(np.ascontiguousarray(a), np.ascontiguousarray(b))


def _hidden_and_cell_state_at(cache, step: int) -> tuple:
    """(h, C) after ``step`` steps of a cache that keeps ``hs`` and ``cs`` (the LSTMs'), as new arrays."""
    if step == 0:
        return cache.h0.copy(), cache.c0.copy()
    return cache.hs[step - 1].copy(), cache.cs[step - 1].copy()


def _zero_state(x: np.ndarray, W_h: np.ndarray) -> np.ndarray:
    """The zeros a state None stands for: [B, H] of x's dtype."""
    return np.zeros((x.shape[1], W_h.shape[0]), x.dtype)


def _plus_final(dhs: np.ndarray, dh_T, lengths: np.ndarray | None) -> np.ndarray:
    """``dhs`` (checked) with the final state's gradient ``dh_T`` (or None) added at each sequence's last step, in
    a new array when there is one to add."""
    if dh_T is None:
        return dhs
    dhs = dhs.copy()
    if lengths is None:
        dhs[-1] += dh_T
    else:
        dhs[lengths - 1, np.arange(dhs.shape[1])] += dh_T
    return dhs


def _final_state(hs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Each sequence's state at its own last step: a view of ``hs`` without lengths."""
    return hs[-1] if lengths is None else final_states(hs, lengths)


def _given(**keywords) -> dict:
    """The keywords that are not None: a cell's method takes ``packed=`` and ``wavefront=`` only where it has them."""
    return {name: value for name, value in keywords.items() if value is not None}


def _state_or_zeros(state, x: np.ndarray, hs: np.ndarray) -> np.ndarray:
    """An initial state as forward took it: the array given, or the zeros the kernels make for None."""
    return np.zeros(hs.shape[1:], x.dtype) if state is None else np.ascontiguousarray(state)


def _named(names: tuple[str, ...], grads, computed: bool) -> dict | None:
    """The weight gradients by base name, or None when they were not computed."""
    return dict(zip(names, grads)) if computed else None


def _gradient_scalars(T: int, B: int, D: int, parameter_shapes: dict, state_parts: int, H: int) -> int:
    """dx, the initial states' gradients and the parameters' gradients."""
    return T * B * D + state_parts * B * H + sum(int(np.prod(shape)) for shape in parameter_shapes.values())


_REGISTRY: dict[str, type[Cell]] = {}


def register(cell_class: type[Cell]) -> type[Cell]:
    """Adds a specification to the registry under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cell_class, type) and issubclass(cell_class, Cell)) or not cell_class.name:
        raise TypeError(f"register: expected a subclass of Cell with a name, got {cell_class!r}")
    if _REGISTRY.get(cell_class.name, cell_class) is not cell_class:
        raise ValueError(f"register: a cell named {cell_class.name!r} is registered already")
    _REGISTRY[cell_class.name] = cell_class
    return cell_class


def unregister(name: str) -> None:
    """Removes the specification registered under ``name``."""
    del _REGISTRY[name]


def cell_class(cell) -> type[Cell]:
    """The specification of ``cell``: a registered name, or a subclass of :class:`Cell` itself."""
    if isinstance(cell, type) and issubclass(cell, Cell):
        return cell
    if isinstance(cell, str) and cell in _REGISTRY:
        return _REGISTRY[cell]
    raise ValueError(f"cell: expected one of {', '.join(map(repr, _REGISTRY))} or a Cell subclass, got {cell!r}")


def names() -> tuple[str, ...]:
    """The names of the registered cells."""
    return tuple(_REGISTRY)


@register
class RNNCell(Cell):
    """``h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h)``."""

    name = "rnn"
    option_defaults: ClassVar[dict] = {"activation": "tanh"}
    init_schemes = initializers.SCHEMES

    def checked_options(self, options):
        return {"activation": _checks.choice("activation", options["activation"], _checks.ACTIVATIONS)}

    def parameter_shapes(self, D, H):
        return {"W_xh": (D, H), "W_hh": (H, H), "b_h": (H,)}

    def init_parameters(self, rng, D, H, scheme, **init_options):
        if scheme == "uniform":
            return {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.uniform(rng, (H, H), H),
                "b_h": initializers.uniform(rng, (H,), H),
            }
        if scheme == "orthogonal":
            return {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.orthogonal(rng, H),
                "b_h": np.zeros(H),
            }
        return {"W_xh": rng.normal(0.0, 1e-3, (D, H)), "W_hh": initializers.identity(H), "b_h": np.zeros(H)}

    def forward(self, p, x, h0, lengths, inference=False, packed=None, wavefront=None):
        hs, cache = self.kernels.rnn_forward(
            x,
            p["W_xh"],
            p["W_hh"],
            p["b_h"],
            h0,
            activation=self.options["activation"],
            lengths=lengths,
            inference=inference,
            packed=packed,
            wavefront=wavefront,
        )
        return hs, final_states(hs, lengths), cache

    @property
    def runs_in_wavefront(self):
        return self.backend == "fast"

    def pack(self, p):
        return _core_pack(self, "rnn_pack", p["W_xh"], p["W_hh"])

    def forward_checked(self, p, x, h0, lengths, inference=False, packed=None, wavefront=None):
        if self.backend != "fast":
            return super().forward_checked(p, x, h0, lengths, inference, packed, wavefront)
        h0 = _zero_state(x, p["W_hh"]) if h0 is None else h0
        hs, cache = self.kernels.rnn_forward_checked(
            x, p["W_xh"], p["W_hh"], p["b_h"], h0, self.options["activation"], lengths, inference, packed, wavefront
        )
        return hs, _final_state(hs, lengths), cache

    def backward_checked(self, p, cache, dhs, dh_T, need_dx=True, need_weight_grads=True, wavefront=None):
        if self.backend != "fast":
            return super().backward_checked(p, cache, dhs, dh_T, need_dx, need_weight_grads, wavefront)
        dhs = _plus_final(dhs, dh_T, cache.lengths)
        grads = self.kernels.rnn_backward_checked(cache, dhs, need_dx, need_weight_grads, wavefront)
        return grads.dx, grads.dh0, _named(("W_xh", "W_hh", "b_h"), grads[2:], need_weight_grads)

    def step_kernels(self, p, packed):
        if self.backend != "fast":
            return super().step_kernels(p, packed)
        from .. import _core

        W_xh, W_hh, b_h, activation = p["W_xh"], p["W_hh"], p["b_h"], self.options["activation"]
        no_lengths = self.kernels.NO_LENGTHS

        def forward(x, h0):
            hs = _core.rnn_forward(x, W_xh, W_hh, b_h, h0, activation, no_lengths, packed)
            return (hs[0],), (x, h0, hs)

        def backward(record, d_final, need_dx):
            x, h0, hs = record
            dh = d_final[0]
            dhs = np.zeros_like(hs) if dh is None else dh[None]
            grads = _core.rnn_backward(
                x, W_xh, W_hh, h0, hs, dhs, activation, no_lengths, False, need_dx, False, packed, True
            )
            return grads[0], (grads[1],), (x[0], h0, grads[-1][0])

        return StepKernels(forward, backward)

    def weight_gradients(self, p, x, h_prev, dz):
        return {"W_xh": _transposed_product(x, dz), "W_hh": _transposed_product(h_prev, dz), "b_h": dz.sum(axis=0)}

    def backward(self, p, cache, dhs, dh_T, need_dx=True, need_weight_grads=True, wavefront=None):
        dhs = with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        grads = self.kernels.rnn_backward(
            cache, dhs, need_dx=need_dx, need_weight_grads=need_weight_grads, wavefront=wavefront
        )
        return grads.dx, grads.dh0, _named(("W_xh", "W_hh", "b_h"), grads[2:], need_weight_grads)

    def state_at(self, cache, step):
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()

    def saved_shapes(self, T, B, D, H):
        return [(T, B, H)]

    def cache_from(self, p, x, h0, lengths, saved):
        (hs,) = saved
        weights = (np.ascontiguousarray(p[name]) for name in ("W_xh", "W_hh"))
        return RNNCache(x, *weights, _state_or_zeros(h0, x, hs), hs, self.options["activation"], lengths)

    def from_torch(self, tensors):
        return _summed_bias_from_torch(tensors, ("W_xh", "W_hh", "b_h"))

    def to_torch_grads(self, grads, has_bias):
        return _summed_bias_to_torch(grads, ("W_xh", "W_hh", "b_h"), has_bias)

    def training_scalars(self, T, B, D, H, block_rows, checkpoint):
        saved = T * B * H  # hs
        scratch = block_rows * (self.dz_columns(H) + H)  # dZ and the previous states of one block
        states = B * H  # default h0
        return saved + scratch + states + _gradient_scalars(T, B, D, self.parameter_shapes(D, H), 1, H)


@register
class LSTMCell(Cell):
    """The LSTM, gate blocks i, f, g, o (i, g, o without forget gate); states ``(h, C)``."""

    name = "lstm"
    state_parts = 2
    checkpointing = True
    option_defaults: ClassVar[dict] = {"forget_gate": True, "proj_size": 0}
    init_schemes = ("uniform", "orthogonal")
    init_hints: ClassVar[dict[str, str]] = {"identity": "'identity' is the IRNN scheme of the plain ReLU RNN"}

    def checked_options(self, options):
        proj_size = options["proj_size"]
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or proj_size < 0:
            raise ValueError(f"proj_size: expected an int >= 0 (0: no projection), got {proj_size!r}")
        return {"forget_gate": _checks.flag("forget_gate", options["forget_gate"]), "proj_size": int(proj_size)}

    @property
    def gate_blocks(self):
        return ("i", "f", "g", "o") if self.options["forget_gate"] else ("i", "g", "o")

    @property
    def projects(self) -> bool:
        """Whether the output is projected: ``h_t = (o_t * tanh C_t) W_hr`` with ``W_hr [H, proj_size]``."""
        return self.options["proj_size"] > 0

    @property
    def torch_parameters(self):
        return ("weight_ih", "weight_hh", "bias_ih", "bias_hh", *(("weight_hr",) if self.projects else ()))

    @property
    def parameter_names(self):
        return ("W_x", "W_h", "b", *(("W_hr",) if self.projects else ()))

    def state_sizes(self, H):
        return (self.options["proj_size"] or H, H)

    def parameter_shapes(self, D, H):
        GH, P = len(self.gate_blocks) * H, self.output_size(H)
        shapes = {"W_x": (D, GH), "W_h": (P, GH), "b": (GH,)}
        if self.projects:
            shapes["W_hr"] = (H, P)
        return shapes

    def torch_shapes(self, D, H):
        shapes = super().torch_shapes(D, H)
        if self.projects:
            P = self.output_size(H)
            shapes["weight_hh"] = (len(self.gate_blocks) * H, P)
            shapes["weight_hr"] = (P, H)
        return shapes

    def init_options(self, scheme, forget_bias: float = 0.0, **others):
        super().init_options(scheme, **others)
        if forget_bias and not self.options["forget_gate"]:
            raise ValueError("forget_bias: the cell without forget gate has no forget-gate bias")
        return {"forget_bias": float(forget_bias)}

    def init_parameters(self, rng, D, H, scheme, forget_bias: float = 0.0):
        G, P = len(self.gate_blocks), self.output_size(H)
        W_x = initializers.uniform(rng, (D, G * H), H)
        if scheme == "uniform":
            W_h, b = initializers.uniform(rng, (P, G * H), H), initializers.uniform(rng, (G * H,), H)
        else:  # orthogonal recurrent blocks [P, H]: the rows of an orthogonal [H, H] matrix
            W_h, b = np.hstack([initializers.orthogonal(rng, H)[:P] for _ in range(G)]), np.zeros(G * H)
        if "f" in self.gate_blocks:
            b[self.gate_columns(H)["f"]] += forget_bias
        params = {"W_x": W_x, "W_h": W_h, "b": b}
        if self.projects:
            params["W_hr"] = initializers.uniform(rng, (H, P), H)
        return params

    def forward(self, p, x, state, lengths, inference=False, packed=None, wavefront=None):
        h0, c0 = (None, None) if state is None else state
        hs, c_T, cache = self.kernels.lstm_forward(
            x,
            p["W_x"],
            p["W_h"],
            p["b"],
            h0,
            c0,
            forget_gate=self.options["forget_gate"],
            lengths=lengths,
            inference=inference,
            packed=packed,
            W_hr=p.get("W_hr"),
            wavefront=wavefront,
        )
        return hs, (final_states(hs, lengths), c_T), cache

    @property
    def runs_in_wavefront(self):
        return self.backend == "fast"

    def pack(self, p):
        return _core_pack(self, "lstm_pack", p["W_x"], p["W_h"], self.options["forget_gate"], p.get("W_hr"))

    def forward_checked(self, p, x, state, lengths, inference=False, packed=None, wavefront=None):
        if self.backend != "fast":
            return super().forward_checked(p, x, state, lengths, inference, packed, wavefront)
        h0, c0 = (None, None) if state is None else state
        if h0 is None or c0 is None:
            P, H = self.state_sizes(p["W_h"].shape[1] // len(self.gate_blocks))
            h0 = np.zeros((x.shape[1], P), x.dtype) if h0 is None else h0
            c0 = np.zeros((x.shape[1], H), x.dtype) if c0 is None else c0
        hs, c_T, cache = self.kernels.lstm_forward_checked(
            x, p["W_x"], p["W_h"], p["b"], h0, c0, self.options["forget_gate"], lengths, inference, packed,
            p.get("W_hr"), wavefront,
        )  # fmt: skip
        return hs, (_final_state(hs, lengths), c_T), cache

    def backward_checked(self, p, cache, dhs, dstate, need_dx=True, need_weight_grads=True, wavefront=None):
        if self.backend != "fast":
            return super().backward_checked(p, cache, dhs, dstate, need_dx, need_weight_grads, wavefront)
        dh_T, dc_T = (None, None) if dstate is None else dstate
        dc_T = np.zeros_like(cache.c0) if dc_T is None else dc_T
        dhs = _plus_final(dhs, dh_T, cache.lengths)
        grads = self.kernels.lstm_backward_checked(cache, dhs, dc_T, need_dx, need_weight_grads, wavefront)
        return grads.dx, (grads.dh0, grads.dc0), _named(self.parameter_names, grads[3:], need_weight_grads)

    def step_kernels(self, p, packed):
        if self.backend != "fast" or self.projects:
            return super().step_kernels(p, packed)
        from .. import _core

        W_x, W_h, b, forget_gate = p["W_x"], p["W_h"], p["b"], self.options["forget_gate"]
        no_lengths = self.kernels.NO_LENGTHS

        def forward(x, h0, c0):
            hs, cs, gates = _core.lstm_forward(x, W_x, W_h, b, h0, c0, forget_gate, no_lengths, packed)
            return (hs[0], cs[0]), (x, h0, c0, gates, hs, cs)

        def backward(record, d_final, need_dx):
            x, h0, c0, gates, hs, cs = record
            dh, dc = d_final
            dhs = np.zeros_like(hs) if dh is None else dh[None]
            dc = np.zeros_like(c0) if dc is None else dc
            grads = _core.lstm_backward(
                x,
                W_x,
                W_h,
                h0,
                c0,
                gates,
                hs,
                cs,
                dhs,
                dc,
                forget_gate,
                no_lengths,
                False,
                need_dx,
                False,
                packed,
                None,
                True,
            )
            return grads[0], (grads[1], grads[2]), (x[0], h0, grads[-1][0])

        return StepKernels(forward, backward)

    def weight_gradients(self, p, x, h_prev, dz):
        if self.projects:
            return super().weight_gradients(p, x, h_prev, dz)
        return {"W_x": _transposed_product(x, dz), "W_h": _transposed_product(h_prev, dz), "b": dz.sum(axis=0)}

    def backward(self, p, cache, dhs, dstate, need_dx=True, need_weight_grads=True, wavefront=None):
        dh_T, dc_T = (None, None) if dstate is None else dstate
        dhs = with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        grads = self.kernels.lstm_backward(
            cache, dhs, dc_T, need_dx=need_dx, need_weight_grads=need_weight_grads, wavefront=wavefront
        )
        return grads.dx, (grads.dh0, grads.dc0), _named(self.parameter_names, grads[3:], need_weight_grads)

    def state_at(self, cache, step):
        return _hidden_and_cell_state_at(cache, step)

    def saved_shapes(self, T, B, D, H):
        return [(T, B, len(self.gate_blocks) * H), (T, B, self.output_size(H)), (T, B, H)]

    def cache_from(self, p, x, state, lengths, saved):
        gates, hs, cs = saved
        h0, c0 = (None, None) if state is None else state
        weights = (np.ascontiguousarray(p[name]) for name in ("W_x", "W_h"))
        states = (_state_or_zeros(h0, x, hs), _state_or_zeros(c0, x, cs))
        W_hr = None if p.get("W_hr") is None else np.ascontiguousarray(p["W_hr"])
        return LSTMCache(x, *weights, *states, gates, hs, cs, self.options["forget_gate"], lengths, W_hr=W_hr)

    def from_torch(self, tensors):
        params = _summed_bias_from_torch(tensors, ("W_x", "W_h", "b"))
        if self.projects:
            params["W_hr"] = tensors["weight_hr"].T
        return params

    def to_torch_grads(self, grads, has_bias):
        torch_grads = _summed_bias_to_torch(grads, ("W_x", "W_h", "b"), has_bias)
        if self.projects:
            torch_grads.append(None if grads is None else grads["W_hr"].T)
        return torch_grads

    def dz_columns(self, H):
        return len(self.gate_blocks) * H + (self.output_size(H) if self.projects else 0)  # and dL/dh_t

    def packed_weights(self, D, H):
        G, P = len(self.gate_blocks), self.output_size(H)
        projection = [(H, P, 1), (P, H, 1)] if self.projects else []  # W_hr and W_hrᵀ
        return [(D + P, G * H, G), (G * H, P, 1), (G * H, D, 1), *projection]

    def training_scalars(self, T, B, D, H, block_rows, checkpoint):
        from .checkpoint import segment_steps

        GH, P = len(self.gate_blocks) * H, self.output_size(H)
        if checkpoint is None:
            saved = T * B * (GH + P + H)  # gates, hs, cs
        else:
            segment = segment_steps(checkpoint, T, B, GH)
            # hs, the (h, C) checkpoints, and one segment's gates, hs, cs, upstream copy and dx
            saved = T * B * H + 2 * -(-T // segment) * B * H + segment * B * (GH + 3 * H + D)
        scratch = block_rows * (self.dz_columns(H) + P) + B * H  # one block's dZ and previous states; dh
        if self.projects:
            scratch += (block_rows + B) * H  # a block's m_t, a step's dL/dm_t
        states = 4 * B * H  # default h0, c0, dc_T and the returned copy of c_T
        return saved + scratch + states + _gradient_scalars(T, B, D, self.parameter_shapes(D, H), 2, H)


@register
class GRUCell(Cell):
    """PyTorch's GRU: gate blocks r, z, n, the recurrent bias of n (``b_hn``) inside the reset product."""

    name = "gru"
    init_schemes = ("uniform", "orthogonal")
    init_hints: ClassVar[dict[str, str]] = {"identity": "'identity' is the IRNN scheme of the plain ReLU RNN"}

    @property
    def gate_blocks(self):
        return ("r", "z", "n")

    def parameter_shapes(self, D, H):
        return {"W_x": (D, 3 * H), "W_h": (H, 3 * H), "b": (3 * H,), "b_hn": (H,)}

    def init_parameters(self, rng, D, H, scheme, **init_options):
        W_x = initializers.uniform(rng, (D, 3 * H), H)
        if scheme == "uniform":
            # torch draws b_ih and b_hh; the r and z blocks of the two add up in b
            b_ih, b_hh = initializers.uniform(rng, (3 * H,), H), initializers.uniform(rng, (3 * H,), H)
            W_h = initializers.uniform(rng, (H, 3 * H), H)
            b = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H)])
            return {"W_x": W_x, "W_h": W_h, "b": b, "b_hn": b_hh[2 * H :]}
        W_h = np.hstack([initializers.orthogonal(rng, H) for _ in range(3)])
        return {"W_x": W_x, "W_h": W_h, "b": np.zeros(3 * H), "b_hn": np.zeros(H)}

    def forward(self, p, x, h0, lengths, inference=False, packed=None, wavefront=None):
        hs, cache = self.kernels.gru_forward(
            x,
            p["W_x"],
            p["W_h"],
            p["b"],
            p["b_hn"],
            h0,
            lengths=lengths,
            inference=inference,
            packed=packed,
            wavefront=wavefront,
        )
        return hs, final_states(hs, lengths), cache

    @property
    def runs_in_wavefront(self):
        return self.backend == "fast"

    def pack(self, p):
        return _core_pack(self, "gru_pack", p["W_x"], p["W_h"])

    def forward_checked(self, p, x, h0, lengths, inference=False, packed=None, wavefront=None):
        if self.backend != "fast":
            return super().forward_checked(p, x, h0, lengths, inference, packed, wavefront)
        h0 = _zero_state(x, p["W_h"]) if h0 is None else h0
        hs, cache = self.kernels.gru_forward_checked(
            x, p["W_x"], p["W_h"], p["b"], p["b_hn"], h0, lengths, inference, packed, wavefront
        )
        return hs, _final_state(hs, lengths), cache

    def backward_checked(self, p, cache, dhs, dh_T, need_dx=True, need_weight_grads=True, wavefront=None):
        if self.backend != "fast":
            return super().backward_checked(p, cache, dhs, dh_T, need_dx, need_weight_grads, wavefront)
        dhs = _plus_final(dhs, dh_T, cache.lengths)
        grads = self.kernels.gru_backward_checked(cache, dhs, need_dx, need_weight_grads, wavefront)
        return grads.dx, grads.dh0, _named(("W_x", "W_h", "b", "b_hn"), grads[2:], need_weight_grads)

    def step_kernels(self, p, packed):
        if self.backend != "fast":
            return super().step_kernels(p, packed)
        from .. import _core

        W_x, W_h, b, b_hn = p["W_x"], p["W_h"], p["b"], p["b_hn"]
        no_lengths = self.kernels.NO_LENGTHS

        def forward(x, h0):
            hs, gates, hn = _core.gru_forward(x, W_x, W_h, b, b_hn, h0, no_lengths, packed)
            return (hs[0],), (x, h0, gates, hn, hs)

        def backward(record, d_final, need_dx):
            x, h0, gates, hn, hs = record
            dh = d_final[0]
            dhs = np.zeros_like(hs) if dh is None else dh[None]
            grads = _core.gru_backward(
                x, W_x, W_h, h0, gates, hn, hs, dhs, no_lengths, False, need_dx, False, packed, True
            )
            return grads[0], (grads[1],), (x[0], h0, grads[-1][0])

        return StepKernels(forward, backward)

    def weight_gradients(self, p, x, h_prev, dz):
        H = dz.shape[1] // 4  # a row of dZ: dz_r, dz_z, d(hn) (the recurrent product's), dz_n (the input's)
        input_side = np.concatenate([dz[:, : 2 * H], dz[:, 3 * H :]], axis=1)
        return {
            "W_x": _transposed_product(x, input_side),
            "W_h": _transposed_product(h_prev, dz[:, : 3 * H]),
            "b": input_side.sum(axis=0),
            "b_hn": dz[:, 2 * H : 3 * H].sum(axis=0),
        }

    def backward(self, p, cache, dhs, dh_T, need_dx=True, need_weight_grads=True, wavefront=None):
        dhs = with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        grads = self.kernels.gru_backward(
            cache, dhs, need_dx=need_dx, need_weight_grads=need_weight_grads, wavefront=wavefront
        )
        return grads.dx, grads.dh0, _named(("W_x", "W_h", "b", "b_hn"), grads[2:], need_weight_grads)

    def state_at(self, cache, step):
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()

    def saved_shapes(self, T, B, D, H):
        return [(T, B, 3 * H), (T, B, H), (T, B, H)]

    def cache_from(self, p, x, h0, lengths, saved):
        gates, hn, hs = saved
        weights = (np.ascontiguousarray(p[name]) for name in ("W_x", "W_h"))
        return GRUCache(x, *weights, _state_or_zeros(h0, x, hs), gates, hn, hs, lengths)

    def from_torch(self, tensors):
        names = self.torch_parameters
        W_x, W_h, b, b_hn = gru_weights_from_torch(*(tensors.get(name) for name in names))
        return {"W_x": W_x, "W_h": W_h, "b": b, "b_hn": b_hn}

    def to_torch_grads(self, grads, has_bias):
        if grads is None:
            return [None] * len(self.torch_parameters)
        db, db_hn = grads["b"], grads["b_hn"]
        H = db_hn.shape[0]
        biases = (db, np.concatenate([db[: 2 * H], db_hn])) if has_bias else (None, None)
        return [grads["W_x"].T, grads["W_h"].T, *biases]

    def dz_columns(self, H):
        return 4 * H  # the gate blocks and r's share of n's recurrent product

    def packed_weights(self, D, H):
        # W_x for the input projection, W_h per step, W_hᵀ and W_xᵀ for backward
        return [(D, 3 * H, 3), (H, 3 * H, 3), (3 * H, H, 1), (3 * H, D, 1)]

    def training_scalars(self, T, B, D, H, block_rows, checkpoint):
        saved = T * B * (3 * H + 2 * H)  # gates, hn, hs
        scratch = block_rows * (self.dz_columns(H) + H) + B * H  # one block's dZ and previous states; dh's direct part
        states = B * H  # default h0
        return saved + scratch + states + _gradient_scalars(T, B, D, self.parameter_shapes(D, H), 1, H)


@register
class LayerNormLSTMCell(Cell):
    """The layer-normalised LSTM (``fastbptt.layer_norm_lstm_forward``): gate blocks i, f, g, o, the input and
    recurrent projections each normalised over its 4H pre-activations and scaled, the cell state normalised over H
    before its tanh; states ``(h, C)``."""

    name = "layer_norm_lstm"
    state_parts = 2
    torch_parameters: ClassVar[tuple[str, ...]] = (
        "weight_ih",
        "weight_hh",
        "bias",
        "gamma_ih",
        "gamma_hh",
        "gamma_c",
        "beta_c",
    )
    torch_biases: ClassVar[tuple[str, ...]] = ("bias",)
    torch_initial_values: ClassVar[dict[str, str]] = {
        "bias": "zeros",
        "gamma_ih": "ones",
        "gamma_hh": "ones",
        "gamma_c": "ones",
        "beta_c": "zeros",
    }
    _VECTORS = ("gamma_ih", "gamma_hh", "gamma_c", "beta_c")

    @property
    def gate_blocks(self):
        return ("i", "f", "g", "o")

    def parameter_shapes(self, D, H):
        return {
            "W_x": (D, 4 * H),
            "W_h": (H, 4 * H),
            "b": (4 * H,),
            "gamma_ih": (4 * H,),
            "gamma_hh": (4 * H,),
            "gamma_c": (H,),
            "beta_c": (H,),
        }

    def init_parameters(self, rng, D, H, scheme, **init_options):
        return {
            "W_x": initializers.uniform(rng, (D, 4 * H), H),
            "W_h": initializers.uniform(rng, (H, 4 * H), H),
            "b": np.zeros(4 * H),
            "gamma_ih": np.ones(4 * H),
            "gamma_hh": np.ones(4 * H),
            "gamma_c": np.ones(H),
            "beta_c": np.zeros(H),
        }

    def forward(self, p, x, state, lengths, inference=False, packed=None):
        h0, c0 = (None, None) if state is None else state
        hs, c_T, cache = self.kernels.layer_norm_lstm_forward(
            x, p["W_x"], p["W_h"], p["b"], *(p[name] for name in self._VECTORS), h0, c0, lengths=lengths,
            inference=inference,
        )  # fmt: skip
        return hs, (final_states(hs, lengths), c_T), cache

    def backward(self, p, cache, dhs, dstate, need_dx=True, need_weight_grads=True):
        dh_T, dc_T = (None, None) if dstate is None else dstate
        dhs = with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        grads = self.kernels.layer_norm_lstm_backward(
            cache, dhs, dc_T, need_dx=need_dx, need_weight_grads=need_weight_grads
        )
        return grads.dx, (grads.dh0, grads.dc0), _named(self.parameter_names, grads[3:], need_weight_grads)

    def state_at(self, cache, step):
        return _hidden_and_cell_state_at(cache, step)

    def saved_shapes(self, T, B, D, H):
        widths = (4 * H, 4 * H, 4 * H, H, H, H, 3)  # LayerNormLSTMCache.computed's arrays
        return [(T, B, width) for width in widths]

    def cache_from(self, p, x, state, lengths, saved):
        h0, c0 = (None, None) if state is None else state
        hs = saved[LayerNormLSTMCache.computed.index("hs")]
        weights = (np.ascontiguousarray(p[name]) for name in ("W_x", "W_h", *self._VECTORS))
        states = (_state_or_zeros(h0, x, hs), _state_or_zeros(c0, x, hs))
        return LayerNormLSTMCache(x, *weights, *states, *saved, lengths)

    def torch_shapes(self, D, H):
        return {name: (shape[1], shape[0]) if len(shape) == 2 else shape for name, shape in zip(
            self.torch_parameters, self.parameter_shapes(D, H).values()
        )}  # fmt: skip

    def from_torch(self, tensors):
        H = tensors["weight_hh"].shape[1]
        bias = tensors.get("bias")
        params = {"W_x": tensors["weight_ih"].T, "W_h": tensors["weight_hh"].T}
        params["b"] = np.zeros(4 * H, tensors["weight_hh"].dtype) if bias is None else bias
        return {**params, **{name: tensors[name] for name in self._VECTORS}}

    def to_torch_grads(self, grads, has_bias):
        if grads is None:
            return [None] * len(self.torch_parameters)
        bias = grads["b"] if has_bias else None
        return [grads["W_x"].T, grads["W_h"].T, bias, *(grads[name] for name in self._VECTORS)]

    def dz_columns(self, H):
        return 8 * H  # the gradients of h W_h and of x W_x before their normalisations

    def packed_weights(self, D, H):
        return [(D, 4 * H, 1), (H, 4 * H, 1), (4 * H, H, 1), (4 * H, D, 1)]  # W_x, W_h per step, W_hᵀ, W_xᵀ

    def training_scalars(self, T, B, D, H, block_rows, checkpoint):
        saved = T * B * (3 * 4 * H + 3 * H + 3)  # gates, x_hat, h_hat, cs, c_hat, hs, inv_std
        scratch = block_rows * (self.dz_columns(H) + H) + 5 * H  # one block's dZ and previous states; a row's dz, dy
        states = 4 * B * H  # default h0, c0, dc_T and the returned copy of c_T
        return saved + scratch + states + _gradient_scalars(T, B, D, self.parameter_shapes(D, H), 2, H)
