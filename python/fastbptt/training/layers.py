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

import json
import zipfile
from pathlib import Path

import numpy as np

from ..kernels import _checks, cells, stack
from ..kernels import functional as _functional
from ..kernels import init as initializers
from ..kernels import reference as _reference
from ..kernels.stack import StackCache

BACKENDS = {"fast": _functional, "reference": _reference}
FORMAT_VERSION = 1


def backend_module(backend: str):
    """The module that computes for ``backend``: "fast" (the compiled core) or "reference" (plain NumPy)."""
    return BACKENDS[_checks.choice("backend", backend, tuple(BACKENDS))]


def save_arrays(path, kind: str, config: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` and a JSON description (``kind``, ``config``) into one ``.npz`` file."""
    meta = json.dumps({"format": FORMAT_VERSION, "kind": kind, "config": config})
    np.savez(Path(path), __meta__=np.array(meta), **arrays)


def load_arrays(path, kind: str, config: dict, expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reads what :func:`save_arrays` wrote and checks it against ``kind``, ``config`` and the shapes of
    ``expected``; returns new arrays in the dtypes of ``expected``. Raises ValueError before anything is used."""
    try:
        # Opened here, not by np.load, which leaves the file open when it is not a valid archive.
        with open(Path(path), "rb") as file, np.load(file, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    try:
        meta = json.loads(str(stored.pop("__meta__")))
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not written by fastbptt's save() (no valid __meta__ entry)") from error
    if meta.get("format") != FORMAT_VERSION or meta.get("kind") != kind:
        raise ValueError(f"{path}: holds a {meta.get('kind')!r} (format {meta.get('format')}), expected a {kind!r}")
    if meta.get("config") != config:
        raise ValueError(f"{path}: was saved with {meta.get('config')}, but this {kind} has {config}")
    if set(stored) != set(expected):
        raise ValueError(f"{path}: holds arrays {sorted(stored)}, expected {sorted(expected)}")
    for name, array in stored.items():
        if array.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {array.shape}, expected {expected[name].shape}")
        if array.dtype.kind != "f":
            raise ValueError(f"{path}: {name} has dtype {array.dtype}, expected a float array")
    return {name: stored[name].astype(expected[name].dtype) for name in expected}


class _RecurrentLayer:
    """What RNN, LSTM and GRU share: stacking, directions, lengths, parameters and gradients as dicts,
    batch_first, the cache, save/load. A subclass says how one cell is initialised, run and differentiated."""

    kind = ""

    def __init__(self, input_size, hidden_size, *, num_layers, bidirectional, batch_first, dtype, backend):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.bidirectional = _checks.flag("bidirectional", bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.batch_first = bool(batch_first)
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.backend = backend
        self._kernels = backend_module(backend)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache: StackCache | None = None

    # -- what a cell kind provides ------------------------------------------------------------------------------
    #: runs one cell forward and backward (:mod:`fastbptt.kernels.cells`); set by the subclass
    cell: cells.RNNCell | cells.LSTMCell | cells.GRUCell

    def _cell_params(self, rng: np.random.Generator, input_size: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

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

    def _init_params(self, rng: np.random.Generator) -> None:
        params = {}
        for _, layer, direction in self._cells():
            input_size = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            for name, value in self._cell_params(rng, input_size).items():
                params[name + self.suffix(layer, direction)] = value
        self.params = {name: np.ascontiguousarray(value, dtype=self.dtype) for name, value in params.items()}
        self.grads = {name: np.zeros_like(value) for name, value in self.params.items()}

    def _params_of(self, layer: int, direction: int) -> dict[str, np.ndarray]:
        """The parameters of one layer and direction by base name (the arrays themselves, not copies)."""
        suffix = self.suffix(layer, direction)
        return {base: self.params[base + suffix] for base in self.cell.base_names}

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
        for part_name, part in zip(("h", "c"), self._state_arrays(name, value)):
            label = name if self.cell.state_parts == 1 else f"{name}[{'hc'.index(part_name)}] ({part_name})"
            part = _checks.float_array(label, part, dtype)
            _checks.check_shape(label, part, (cells, batch, self.hidden_size), "[num_layers * num_directions, B, H]")
            parts.append(part)
        return [parts[0][k] if self.cell.state_parts == 1 else (parts[0][k], parts[1][k]) for k in range(cells)]

    def _join_state(self, states: list):
        """The inverse of :meth:`_split_state` for states computed here."""
        if self._simple:
            return states[0]
        if self.cell.state_parts == 1:
            return np.stack(states)
        return np.stack([h for h, _ in states]), np.stack([c for _, c in states])

    def cell_cache(self, layer: int = 0, direction: int = 0):
        """The kernel cache (``RNNCache``, ``LSTMCache`` or ``GRUCache``) of one layer and direction from the last
        forward, e.g. for :mod:`fastbptt.diagnostics`. The reverse direction's cache is in reversed time."""
        cache = self._require_cache()
        if not (0 <= layer < self.num_layers and 0 <= direction < self.num_directions):
            raise ValueError(
                f"cell_cache: layer must lie in 0 .. {self.num_layers - 1} and direction in "
                f"0 .. {self.num_directions - 1}, got layer={layer}, direction={direction}"
            )
        return cache.cells[layer * self.num_directions + direction]

    def _require_cache(self) -> StackCache:
        if self.cache is None:
            raise ValueError(f"{type(self).__name__}: call forward first (there is no cache of a forward pass)")
        return self.cache

    # -- forward and backward -----------------------------------------------------------------------------------
    def forward(self, x, state=None, lengths=None):
        """Runs the layer over ``x [T,B,D]`` (``[B,T,D]`` if batch_first) from ``state`` (zeros when None).

        Returns ``(outputs, final_state)``: outputs ``[T,B,num_directions*H]`` (``[B,T,...]`` if batch_first) are the
        last layer's states, both directions concatenated, zero past each sequence's length; the final state has
        the layout of ``state``. Keeps the cache for :meth:`backward`.
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
        outputs, finals, self.cache = stack.forward(
            self.cell.forward, self._all_params(), x, states, lengths, **self._stack_options()
        )
        return self._user_layout(outputs), self._join_state(finals)

    def _all_params(self) -> list:
        return [self._params_of(layer, direction) for _, layer, direction in self._cells()]

    def _stack_options(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_directions": self.num_directions,
            "concurrent": self.backend == "fast",
        }

    def backward(self, doutputs, dstate=None):
        """Backpropagates ``doutputs`` (dL/d outputs, layout as the outputs) and ``dstate`` (dL/d final state, layout
        as the final state, or None) through the last forward. Adds the parameter gradients to ``self.grads`` and
        returns ``(dx, dstate0)``."""
        cache = self._require_cache()
        first = cache.cells[-1]
        dtype = first.hs.dtype
        T, B, H = first.hs.shape
        d_outputs = _checks.upstream(
            "dhs", self._time_major("dhs", doutputs), dtype, (T, B, self.num_directions * H), "[T, B, num_directions*H]"
        )
        dfinals = self._split_state("dstate", dstate, dtype, B)
        dx, dstates0, grads = stack.backward(
            self.cell.backward, self._all_params(), cache, d_outputs, dfinals, **self._stack_options()
        )
        for (_, layer, direction), cell_grads in zip(self._cells(), grads):
            suffix = self.suffix(layer, direction)
            for name, grad in cell_grads.items():
                self.grads[name + suffix] += grad
        return self._user_layout(dx), self._join_state(dstates0)

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


class RNN(_RecurrentLayer):
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
        self,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        init: str = "uniform",
        num_layers: int = 1,
        bidirectional: bool = False,
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            dtype=dtype,
            backend=backend,
        )
        self.activation = _checks.choice("activation", activation, _checks.ACTIVATIONS)
        self.cell = cells.RNNCell(self._kernels, self.activation)
        self.init = _checks.choice("init", init, initializers.SCHEMES)
        self._init_params(np.random.default_rng(seed))

    def _cell_params(self, rng, input_size):
        D, H = input_size, self.hidden_size
        if self.init == "uniform":
            return {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.uniform(rng, (H, H), H),
                "b_h": initializers.uniform(rng, (H,), H),
            }
        if self.init == "orthogonal":
            return {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.orthogonal(rng, H),
                "b_h": np.zeros(H),
            }
        return {"W_xh": rng.normal(0.0, 1e-3, (D, H)), "W_hh": initializers.identity(H), "b_h": np.zeros(H)}

    def _config(self) -> dict:
        return super()._config() | {"activation": self.activation}


class LSTM(_RecurrentLayer):
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
    num_layers : int
        Layers stacked on one another; layer k > 0 takes the outputs of layer k-1 (both directions).
    bidirectional : bool
        Each layer also runs over every sequence reversed (within its length); outputs concatenate the directions.
    seed, batch_first, dtype, backend
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
        num_layers: int = 1,
        bidirectional: bool = False,
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            dtype=dtype,
            backend=backend,
        )
        self.forget_gate = _checks.flag("forget_gate", forget_gate)
        self.cell = cells.LSTMCell(self._kernels, self.forget_gate)
        if init == "identity":
            raise ValueError(
                "init: 'identity' is the IRNN scheme of the plain ReLU RNN; use 'uniform' or 'orthogonal' for the LSTM"
            )
        self.init = _checks.choice("init", init, ("uniform", "orthogonal"))
        if forget_bias and not self.forget_gate:
            raise ValueError("forget_bias: the cell without forget gate has no forget-gate bias")
        self.forget_bias = float(forget_bias)
        self._init_params(np.random.default_rng(seed))

    def _cell_params(self, rng, input_size):
        D, H = input_size, self.hidden_size
        G = 4 if self.forget_gate else 3
        W_x = initializers.uniform(rng, (D, G * H), H)
        if self.init == "uniform":
            W_h, b = initializers.uniform(rng, (H, G * H), H), initializers.uniform(rng, (G * H,), H)
        else:
            W_h, b = np.hstack([initializers.orthogonal(rng, H) for _ in range(G)]), np.zeros(G * H)
        if self.forget_gate:
            b[H : 2 * H] += self.forget_bias
        return {"W_x": W_x, "W_h": W_h, "b": b}

    def _config(self) -> dict:
        return super()._config() | {"forget_gate": self.forget_gate}


class GRU(_RecurrentLayer):
    """The GRU layer with PyTorch's cell (gate blocks r, z, n; the recurrent bias of n inside the reset product).

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    init : {"uniform", "orthogonal"}
        "uniform": ``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter (PyTorch's default). "orthogonal": each
        gate block of ``W_h`` a random orthogonal ``[H, H]`` matrix, ``W_x`` uniform, biases zero.
    num_layers : int
        Layers stacked on one another; layer k > 0 takes the outputs of layer k-1 (both directions).
    bidirectional : bool
        Each layer also runs over every sequence reversed (within its length); outputs concatenate the directions.
    seed, batch_first, dtype, backend
        As for :class:`RNN`.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_x [D,3H]``, ``W_h [H,3H]``, ``b [3H]``, ``b_hn [H]`` (with suffixes for further layers and directions)
        and their accumulated gradients.
    """

    kind = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        init: str = "uniform",
        num_layers: int = 1,
        bidirectional: bool = False,
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            dtype=dtype,
            backend=backend,
        )
        self.cell = cells.GRUCell(self._kernels)
        self.init = _checks.choice("init", init, ("uniform", "orthogonal"))
        self._init_params(np.random.default_rng(seed))

    def _cell_params(self, rng, input_size):
        D, H = input_size, self.hidden_size
        W_x = initializers.uniform(rng, (D, 3 * H), H)
        if self.init == "uniform":
            # torch draws b_ih and b_hh; the r and z blocks of the two add up in b
            b_ih, b_hh = initializers.uniform(rng, (3 * H,), H), initializers.uniform(rng, (3 * H,), H)
            W_h = initializers.uniform(rng, (H, 3 * H), H)
            b = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H)])
            return {"W_x": W_x, "W_h": W_h, "b": b, "b_hn": b_hh[2 * H :]}
        W_h = np.hstack([initializers.orthogonal(rng, H) for _ in range(3)])
        return {"W_x": W_x, "W_h": W_h, "b": np.zeros(3 * H), "b_hn": np.zeros(H)}
