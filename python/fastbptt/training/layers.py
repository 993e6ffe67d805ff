"""Recurrent layers that hold their parameters: ``RNN``, ``LSTM`` and ``GRU`` on top of the functional kernels.

A layer keeps the cache of its last ``forward``; ``backward`` consumes it, returns the gradients of the inputs and
of the initial state, and *accumulates* the parameter gradients into ``layer.grads`` (``zero_grad`` clears them),
so several backward passes (e.g. truncated BPTT windows) can add up before one optimiser step.

Layers stack (``num_layers``) and run in both directions (``bidirectional``) with PyTorch's layouts: the outputs of
the two directions are concatenated along the features, and states are ``[num_layers * num_directions, B, H]``
(direction fastest). A single one-directional layer keeps the simpler ``[B, H]`` states. The parameters of layer k
and direction d carry the suffix ``_l{k}`` (none for layer 0) and ``_reverse`` (for the reverse direction), as in
PyTorch: ``W_x``, ``W_x_reverse``, ``W_x_l1``, ``W_x_l1_reverse``. Every ``forward`` takes ``lengths [B]`` for
batches of sequences of different lengths: outputs past a sequence's length are zero, its final state is the one
at its own last step, and the reverse direction starts at each sequence's own end.
"""

from __future__ import annotations

import numpy as np

from ..kernels import _checks, cells, stack
from ..kernels.stack import StackCache
from ..kernels.stepper import Stepper
from .saving import load_arrays, save_arrays

__all__ = ["GRU", "LSTM", "RNN", "LayerNormLSTM", "Recurrent"]


class Recurrent:
    """A recurrent layer of any registered cell (:mod:`fastbptt.kernels.cells`): stacking, directions, lengths,
    parameters and gradients as dicts, batch_first, the cache, save/load. :class:`RNN`, :class:`LSTM` and
    :class:`GRU` are this layer with their cell's options as arguments.

    Parameters
    ----------
    cell : str or Cell subclass
        A registered cell's name ("rnn", "lstm", "gru", ...) or its specification.
    input_size, hidden_size : int
        D and H.
    num_layers : int
        Layers stacked on one another; layer k > 0 takes the outputs of layer k-1 (both directions).
    bidirectional : bool
        Each layer also runs over every sequence reversed (within its length); outputs concatenate the directions.
    batch_first : bool
        Inputs and outputs as ``[B, T, ...]`` instead of time-major ``[T, B, ...]``.
    dtype : float32 (default) or float64
    backend : {"fast", "reference"}
        The compiled core or the NumPy reference.
    init : str, optional
        One of the cell's initialisation schemes (its ``init_schemes``); the first of them when omitted.
    init_options : dict, optional
        Options of the initialisation that the cell takes (the LSTM's ``forget_bias``).
    seed : int or None
        Seed of the initialisation.
    **cell_options
        The cell's options (the RNN's ``activation``, the LSTM's ``forget_gate``).

    Attributes
    ----------
    cell : Cell
        The cell's specification with its options, on the layer's backend.
    params, grads : dict of ndarray
        The cell's parameters by base name (with the suffixes ``_l{k}`` for layer k > 0 and ``_reverse`` for the
        reverse direction) and their accumulated gradients.
    """

    kind = ""  #: what save() records; the cell's name unless a subclass names it

    def __init__(
        self,
        cell,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
        init: str | None = None,
        init_options: dict | None = None,
        seed=None,
        **cell_options,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.bidirectional = _checks.flag("bidirectional", bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.batch_first = bool(batch_first)
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.backend = backend
        spec = cells.cell_class(cell)
        unknown = sorted(set(cell_options) - set(spec.option_defaults))
        if unknown:
            takes = ", ".join(spec.option_defaults) or "none"
            raise TypeError(
                f"{type(self).__name__}: unexpected keyword argument(s) {', '.join(unknown)} (the {spec.name} cell's "
                f"options: {takes}; the layer's: num_layers, bidirectional, batch_first, dtype, backend, init, seed)"
            )
        #: runs one cell forward and backward, and says its parameters and states (:mod:`fastbptt.kernels.cells`)
        self.cell = spec(backend, **cell_options)
        self.kind = self.kind or spec.name
        if init in spec.init_hints:
            raise ValueError(f"init: {spec.init_hints[init]}; use one of {', '.join(map(repr, spec.init_schemes))}")
        self.init = _checks.choice("init", init or spec.init_schemes[0], spec.init_schemes)
        self._init_options = self.cell.init_options(self.init, **(init_options or {}))
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache: StackCache | None = None
        self._init_params(np.random.default_rng(seed))

    def __getstate__(self) -> dict:
        """What pickle and copy.deepcopy keep: configuration, parameters and gradients, not the cache of the last
        forward (its arrays are read-only so that no edit changes a gradient, which a copy would not keep)."""
        return {**self.__dict__, "cache": None}

    # -- parameters ---------------------------------------------------------------------------------------------
    @property
    def _simple(self) -> bool:
        """One layer, one direction: states are [B, H] rather than [num_layers * num_directions, B, H]."""
        return self.num_layers == 1 and not self.bidirectional

    @staticmethod
    def suffix(layer: int, direction: int) -> str:
        """The parameter-name suffix of a layer and direction: "", "_reverse", "_l1", "_l1_reverse", ..."""
        return ("" if layer == 0 else f"_l{layer}") + ("_reverse" if direction else "")

    def _cells(self):
        """(index, layer, direction) of every cell, in the order of the state's first axis."""
        return [
            (layer * self.num_directions + direction, layer, direction)
            for layer in range(self.num_layers)
            for direction in range(self.num_directions)
        ]

    @property
    def output_size(self) -> int:
        """The features of one direction's outputs (and of the state h): hidden_size, or the LSTM's proj_size."""
        return self.cell.output_size(self.hidden_size)

    def _init_params(self, rng: np.random.Generator) -> None:
        params = {}
        for _, layer, direction in self._cells():
            input_size = self.input_size if layer == 0 else self.num_directions * self.output_size
            values = self.cell.init_parameters(rng, input_size, self.hidden_size, self.init, **self._init_options)
            for name, value in values.items():
                params[name + self.suffix(layer, direction)] = value
        self.params = {name: np.ascontiguousarray(value, dtype=self.dtype) for name, value in params.items()}
        self.grads = {name: np.zeros_like(value) for name, value in self.params.items()}

    def _params_of(self, layer: int, direction: int) -> dict[str, np.ndarray]:
        """The parameters of one layer and direction by base name (the arrays themselves, not copies)."""
        suffix = self.suffix(layer, direction)
        return {base: self.params[base + suffix] for base in self.cell.parameter_names}

    def zero_grad(self) -> None:
        """Sets every accumulated parameter gradient to zero (in place)."""
        for grad in self.grads.values():
            grad.fill(0)

    # -- layouts and states -------------------------------------------------------------------------------------
    def _time_major(self, name: str, array):
        """``array`` as ``[T, B, ...]``: swaps the first two axes when the layer is batch_first."""
        array = _checks.as_array(name, array)
        if self.batch_first:
            if array.ndim < 2:
                raise ValueError(f"{name}: expected [B, T, ...] (batch_first=True), got shape {array.shape}")
            return np.swapaxes(array, 0, 1)
        return array

    def _user_layout(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(array, 0, 1)) if self.batch_first else array

    def _state_arrays(self, name: str, value) -> tuple:
        """A state as a tuple of the cell's ``state_parts`` arrays (h, or h and c)."""
        if self.cell.state_parts == 1:
            return (value,)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) for the {self.kind}, got {type(value).__name__}")
        return tuple(value)

    def _split_state(self, name: str, value, dtype: np.dtype, batch: int) -> list:
        """The per-cell states of ``value`` (None: every cell starts from zeros / gets no gradient)."""
        cells = len(self._cells())
        if value is None:
            return [None] * cells
        if self._simple:
            return [value]
        parts = []
        sizes = self.cell.state_sizes(self.hidden_size)
        for part_name, part, size in zip(("h", "c"), self._state_arrays(name, value), sizes):
            label = name if self.cell.state_parts == 1 else f"{name}[{'hc'.index(part_name)}] ({part_name})"
            part = _checks.float_array(label, part, dtype)
            _checks.check_shape(label, part, (cells, batch, size), "[num_layers * num_directions, B, H]")
            parts.append(part)
        return [parts[0][k] if self.cell.state_parts == 1 else (parts[0][k], parts[1][k]) for k in range(cells)]

    def _join_state(self, states: list):
        """The inverse of :meth:`_split_state` for states computed here."""
        if self._simple:
            return states[0]
        if self.cell.state_parts == 1:
            return np.stack(states)
        return np.stack([h for h, _ in states]), np.stack([c for _, c in states])

    def stepper(self, layer: int = 0, direction: int = 0) -> Stepper:
        """A :class:`fastbptt.Stepper` of one layer and direction: its cell with a packed copy of its current
        parameters, to run a step at a time (generation). Make a new one after the parameters change."""
        self._check_cell_index("stepper", layer, direction)
        return Stepper(self.cell, self._params_of(layer, direction))

    def _check_cell_index(self, name: str, layer: int, direction: int) -> None:
        if not (0 <= layer < self.num_layers and 0 <= direction < self.num_directions):
            raise ValueError(
                f"{name}: layer must lie in 0 .. {self.num_layers - 1} and direction in "
                f"0 .. {self.num_directions - 1}, got layer={layer}, direction={direction}"
            )

    def cell_cache(self, layer: int = 0, direction: int = 0):
        """The kernel cache (``RNNCache``, ``LSTMCache``, ``GRUCache`` or ``LayerNormLSTMCache``) of one layer and
        direction from the last
        forward, e.g. for :mod:`fastbptt.diagnostics`. The reverse direction's cache is in reversed time."""
        cache = self._require_cache()
        self._check_cell_index("cell_cache", layer, direction)
        return cache.cells[layer * self.num_directions + direction]

    def _require_cache(self) -> StackCache:
        if self.cache is None:
            raise ValueError(f"{type(self).__name__}: call forward first (there is no cache of a forward pass)")
        return self.cache

    # -- forward and backward -----------------------------------------------------------------------------------
    def forward(self, x, state=None, lengths=None, *, inference: bool = False):
        """Runs the layer over ``x [T,B,D]`` (``[B,T,D]`` if batch_first) from ``state`` (zeros when None).

        Returns ``(outputs, final_state)``: outputs ``[T,B,num_directions*H]`` (``[B,T,...]`` if batch_first) are the
        last layer's states, both directions concatenated, zero past each sequence's length; the final state has
        the layout of ``state``. Keeps the cache for :meth:`backward`, unless ``inference``: then the kernels keep
        only the current state (the same outputs, no memory that grows with T beyond them) and no backward follows.
        """
        x = _checks.sequence("x", self._time_major("x", x))
        if x.shape[2] != self.input_size:
            layout = "[B, T, D]" if self.batch_first else "[T, B, D]"
            raise ValueError(f"x: expected {layout} with D = input_size = {self.input_size}, got {x.shape[2]} features")
        if x.dtype != self.dtype:
            raise TypeError(
                f"x: has dtype {x.dtype} but this {self.kind} layer computes in {self.dtype}: convert x with "
                f"x.astype(np.{self.dtype}), or make the layer with dtype=np.{x.dtype}"
            )
        T, B, _ = x.shape
        lengths = _checks.lengths_array(lengths, T, B)
        states = self._split_state("state", state, x.dtype, B)
        # The last forward's cache goes first: held through this one, it would double the peak memory, and its
        # arrays' memory is what this forward's arrays can reuse (see set_array_cache_limit).
        self.cache = None
        inference = _checks.flag("inference", inference)
        widths = [self.output_size] * self.num_layers if self.cell.runs_in_wavefront else None
        outputs, finals, cache = stack.forward(
            self.cell.forward,
            self._all_params(),
            x,
            states,
            lengths,
            inference=inference,
            widths=widths,
            **self._stack_options(),
        )
        self.cache = None if inference else cache
        return self._user_layout(outputs), self._join_state(finals)

    def _all_params(self) -> list:
        return [self._params_of(layer, direction) for _, layer, direction in self._cells()]

    def _stack_options(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_directions": self.num_directions,
            "concurrent": self.cell.backend == "fast",
        }

    def backward(self, doutputs, dstate=None, *, need_dx: bool = True):
        """Backpropagates ``doutputs`` (dL/d outputs, layout as the outputs) and ``dstate`` (dL/d final state, layout
        as the final state, or None) through the last forward. Adds the parameter gradients to ``self.grads`` and
        returns ``(dx, dstate0)``; ``need_dx=False`` skips dx (None), for an input that needs no gradient."""
        cache = self._require_cache()
        first = cache.cells[-1]
        dtype = first.hs.dtype
        T, B, H = first.hs.shape
        d_outputs = _checks.upstream(
            "dhs", self._time_major("dhs", doutputs), dtype, (T, B, self.num_directions * H), "[T, B, num_directions*H]"
        )
        dfinals = self._split_state("dstate", dstate, dtype, B)
        dx, dstates0, grads = stack.backward(
            self.cell.backward,
            self._all_params(),
            cache,
            d_outputs,
            dfinals,
            need_dx=_checks.flag("need_dx", need_dx),
            **self._stack_options(),
        )
        for (_, layer, direction), cell_grads in zip(self._cells(), grads):
            suffix = self.suffix(layer, direction)
            for name, grad in cell_grads.items():
                self.grads[name + suffix] += grad
        return (None if dx is None else self._user_layout(dx)), self._join_state(dstates0)

    def state_at(self, step: int):
        """The state after ``step`` steps of the last forward (0: the initial state), in the layout of ``state``.

        For truncated BPTT, which carries the state of a window into the next: one direction only, no lengths."""
        cache = self._require_cache()
        if self.bidirectional or cache.lengths is not None:
            raise ValueError("state_at: only a one-directional layer run without lengths has a state to carry on")
        return self._join_state([self.cell.state_at(cell, step) for cell in cache.cells])

    # -- save and load ------------------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            **self.cell.options,
        }

    def save(self, path) -> None:
        """Writes the parameters and the layer's configuration to one ``.npz`` file."""
        save_arrays(path, self.kind, self._config(), self.params)

    def load(self, path) -> None:
        """Reads parameters written by :meth:`save` into this layer (cast to its dtype).

        Raises ValueError, and changes nothing, when the file is unreadable or was written by a layer of another
        kind or configuration.
        """
        loaded = load_arrays(path, self.kind, self._config(), self.params)
        for name, value in loaded.items():
            self.params[name][...] = value


class RNN(Recurrent):
    """The plain RNN layer ``h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h)``.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    activation : {"tanh", "relu", "sigmoid"}
    init : {"uniform", "orthogonal", "identity"}
        "uniform": PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter (default).
        "orthogonal": ``W_hh`` a random orthogonal matrix, ``W_xh`` uniform as above, ``b_h`` zero.
        "identity": the IRNN of Le, Jaitly & Hinton (2015), meant for ``activation="relu"``: ``W_hh = I``,
        ``b_h = 0``, ``W_xh ~ N(0, 0.001^2)``.
    num_layers : int
        Layers stacked on one another; layer k > 0 takes the outputs of layer k-1 (both directions).
    bidirectional : bool
        Each layer also runs over every sequence reversed (within its length); outputs concatenate the directions.
    seed : int or None
        Seed of the initialisation.
    batch_first : bool
        Inputs and outputs as ``[B, T, ...]`` instead of time-major ``[T, B, ...]``.
    dtype : float32 (default) or float64
    backend : {"fast", "reference"}
        The compiled core or the NumPy reference.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_xh [D,H]``, ``W_hh [H,H]``, ``b_h [H]`` (with suffixes for further layers and directions) and their
        accumulated gradients.
    """

    kind = "RNN"

    def __init__(
        self, input_size: int, hidden_size: int, *, activation: str = "tanh", init: str = "uniform", **options
    ):
        super().__init__("rnn", input_size, hidden_size, init=init, activation=activation, **options)
        self.activation = self.cell.options["activation"]


class LSTM(Recurrent):
    """The LSTM layer (gate blocks i, f, g, o as PyTorch), or the original cell without forget gate.

    States are pairs ``(h, c)``.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    forget_gate : bool
        True: the modern cell, ``C_t = f_t * C_{t-1} + i_t * g_t`` (4 gate blocks). False: the original cell,
        ``C_t = C_{t-1} + i_t * g_t`` (3 blocks i, g, o).
    forget_bias : float
        Added to the forget-gate bias after initialisation (1.0 is the usual remedy that keeps the cell state,
        and its gradient, alive early in training; Jozefowicz et al. 2015). Must be 0 without forget gate.
    init : {"uniform", "orthogonal"}
        "uniform": ``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter (PyTorch's default). "orthogonal": each
        gate block of ``W_h`` a random orthogonal ``[H, H]`` matrix, ``W_x`` uniform, ``b`` zero.
    num_layers, bidirectional, seed, batch_first, dtype, backend
        As for :class:`RNN`.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_x [D,G*H]``, ``W_h [H,G*H]``, ``b [G*H]`` (with suffixes for further layers and directions) and their
        accumulated gradients.
    """

    kind = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        forget_gate: bool = True,
        forget_bias: float = 0.0,
        init: str = "uniform",
        **options,
    ):
        super().__init__(
            "lstm",
            input_size,
            hidden_size,
            init=init,
            init_options={"forget_bias": forget_bias},
            forget_gate=forget_gate,
            **options,
        )
        self.forget_gate = self.cell.options["forget_gate"]
        self.forget_bias = self._init_options["forget_bias"]


class GRU(Recurrent):
    """The GRU layer with PyTorch's cell (gate blocks r, z, n; the recurrent bias of n inside the reset product).

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    init : {"uniform", "orthogonal"}
        "uniform": ``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter (PyTorch's default). "orthogonal": each
        gate block of ``W_h`` a random orthogonal ``[H, H]`` matrix, ``W_x`` uniform, biases zero.
    num_layers, bidirectional, seed, batch_first, dtype, backend
        As for :class:`RNN`.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_x [D,3H]``, ``W_h [H,3H]``, ``b [3H]``, ``b_hn [H]`` (with suffixes for further layers and directions)
        and their accumulated gradients.
    """

    kind = "GRU"

    def __init__(self, input_size: int, hidden_size: int, *, init: str = "uniform", **options):
        super().__init__("gru", input_size, hidden_size, init=init, **options)


class LayerNormLSTM(Recurrent):
    """The layer-normalised LSTM layer (Ba, Kiros & Hinton 2016; :func:`fastbptt.layer_norm_lstm_forward`).

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    num_layers, bidirectional, seed, batch_first, dtype, backend
        As for :class:`RNN`.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_x [D,4H]``, ``W_h [H,4H]`` (``U(-1/sqrt(H), 1/sqrt(H))``), ``b [4H]`` (zeros), ``gamma_ih [4H]``,
        ``gamma_hh [4H]``, ``gamma_c [H]`` (ones), ``beta_c [H]`` (zeros), with suffixes for further layers and
        directions, and their accumulated gradients.
    """

    kind = "LayerNormLSTM"

    def __init__(self, input_size: int, hidden_size: int, **options):
        super().__init__("layer_norm_lstm", input_size, hidden_size, **options)
