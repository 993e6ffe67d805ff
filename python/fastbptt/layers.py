"""Recurrent layers that hold their parameters: ``RNN`` and ``LSTM`` on top of the functional kernels.

A layer keeps the cache of its last ``forward``; ``backward`` consumes it, returns the gradients of the inputs and
of the initial state, and *accumulates* the parameter gradients into ``layer.grads`` (``zero_grad`` clears them),
so several backward passes (e.g. truncated BPTT windows) can add up before one optimiser step.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from . import _checks
from . import functional as _functional
from . import init as initializers
from . import reference as _reference

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
    """What RNN and LSTM share: parameters and gradients as dicts, batch_first, the cache, save/load."""

    kind = ""

    def __init__(self, input_size, hidden_size, *, batch_first, dtype, backend):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.batch_first = bool(batch_first)
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.backend = backend
        self._kernels = backend_module(backend)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache = None

    def _set_params(self, params: dict[str, np.ndarray]) -> None:
        self.params = {name: np.ascontiguousarray(value, dtype=self.dtype) for name, value in params.items()}
        self.grads = {name: np.zeros_like(value) for name, value in self.params.items()}

    def zero_grad(self) -> None:
        """Sets every accumulated parameter gradient to zero (in place)."""
        for grad in self.grads.values():
            grad.fill(0)

    def _time_major(self, name: str, array):
        """``array`` as ``[T, B, ...]``: swaps the first two axes when the layer is batch_first."""
        array = np.asarray(array)
        if self.batch_first:
            if array.ndim < 2:
                raise ValueError(f"{name}: expected [B, T, ...] (batch_first=True), got shape {array.shape}")
            return np.swapaxes(array, 0, 1)
        return array

    def _user_layout(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(array, 0, 1)) if self.batch_first else array

    def _require_cache(self):
        if self.cache is None:
            raise ValueError(f"{type(self).__name__}.backward: call forward first (there is nothing to backpropagate)")
        return self.cache

    def _config(self) -> dict:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size}

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
        ``W_xh [D,H]``, ``W_hh [H,H]``, ``b_h [H]`` and their accumulated gradients.
    """

    kind = "RNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        init: str = "uniform",
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        super().__init__(input_size, hidden_size, batch_first=batch_first, dtype=dtype, backend=backend)
        self.activation = _checks.choice("activation", activation, _checks.ACTIVATIONS)
        self.init = _checks.choice("init", init, initializers.SCHEMES)
        rng = np.random.default_rng(seed)
        D, H = self.input_size, self.hidden_size
        if self.init == "uniform":
            params = {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.uniform(rng, (H, H), H),
                "b_h": initializers.uniform(rng, (H,), H),
            }
        elif self.init == "orthogonal":
            params = {
                "W_xh": initializers.uniform(rng, (D, H), H),
                "W_hh": initializers.orthogonal(rng, H),
                "b_h": np.zeros(H),
            }
        else:
            params = {
                "W_xh": rng.normal(0.0, 1e-3, (D, H)),
                "W_hh": initializers.identity(H),
                "b_h": np.zeros(H),
            }
        self._set_params(params)

    def _config(self) -> dict:
        return super()._config() | {"activation": self.activation}

    def forward(self, x, state=None):
        """Runs the layer over ``x [T,B,D]`` (``[B,T,D]`` if batch_first) from ``state`` ``h0 [B,H]`` (zeros
        when None). Returns ``(hs, h_T)`` with ``hs [T,B,H]`` (``[B,T,H]`` if batch_first), and keeps the
        cache for :meth:`backward`."""
        hs, self.cache = self._kernels.rnn_forward(
            self._time_major("x", x),
            self.params["W_xh"],
            self.params["W_hh"],
            self.params["b_h"],
            state,
            activation=self.activation,
        )
        return self._user_layout(hs), hs[-1].copy()

    def backward(self, dhs, dstate=None):
        """Backpropagates ``dhs`` (dL/dh_t for every step, layout as the outputs) and ``dstate`` (an extra
        dL/dh_T on the final state, or None) through the last forward. Adds the parameter gradients to
        ``self.grads`` and returns ``(dx, dh0)``."""
        cache = self._require_cache()
        dhs = self._with_final_state_gradient(self._time_major("dhs", dhs), dstate, cache.hs)
        grads = self._kernels.rnn_backward(cache, dhs)
        self.grads["W_xh"] += grads.dW_xh
        self.grads["W_hh"] += grads.dW_hh
        self.grads["b_h"] += grads.db_h
        return self._user_layout(grads.dx), grads.dh0

    @staticmethod
    def _with_final_state_gradient(dhs, dh_T, hs: np.ndarray) -> np.ndarray:
        """dhs with dh_T added to its last step (h_T is both the last output and the final state)."""
        if dh_T is None:
            return dhs
        dhs = np.array(_checks.upstream("dhs", dhs, hs.dtype, hs.shape, "[T, B, H]"))
        dhs[-1] += _checks.upstream("dh_T", dh_T, hs.dtype, hs.shape[1:], "[B, H]")
        return dhs

    def state_at(self, step: int):
        """The state after ``step`` steps of the last forward (0: the initial state)."""
        cache = self._require_cache()
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()


class LSTM(_RecurrentLayer):
    """The LSTM layer (gate blocks i, f, g, o as PyTorch), or the original cell without forget gate.

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
    seed, batch_first, dtype, backend
        As for :class:`RNN`.

    Attributes
    ----------
    params, grads : dict of ndarray
        ``W_x [D,G*H]``, ``W_h [H,G*H]``, ``b [G*H]`` and their accumulated gradients.
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
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        super().__init__(input_size, hidden_size, batch_first=batch_first, dtype=dtype, backend=backend)
        if not isinstance(forget_gate, (bool, np.bool_)):
            raise TypeError(f"forget_gate: expected True or False, got {forget_gate!r}")
        self.forget_gate = bool(forget_gate)
        if init == "identity":
            raise ValueError(
                "init: 'identity' is the IRNN scheme of the plain ReLU RNN; use 'uniform' or 'orthogonal' for the LSTM"
            )
        self.init = _checks.choice("init", init, ("uniform", "orthogonal"))
        if forget_bias and not self.forget_gate:
            raise ValueError("forget_bias: the cell without forget gate has no forget-gate bias")
        self.forget_bias = float(forget_bias)
        rng = np.random.default_rng(seed)
        D, H = self.input_size, self.hidden_size
        G = 4 if self.forget_gate else 3
        W_x = initializers.uniform(rng, (D, G * H), H)
        if self.init == "uniform":
            W_h, b = initializers.uniform(rng, (H, G * H), H), initializers.uniform(rng, (G * H,), H)
        else:
            W_h, b = np.hstack([initializers.orthogonal(rng, H) for _ in range(G)]), np.zeros(G * H)
        if self.forget_gate:
            b[H : 2 * H] += self.forget_bias
        self._set_params({"W_x": W_x, "W_h": W_h, "b": b})

    def _config(self) -> dict:
        return super()._config() | {"forget_gate": self.forget_gate}

    def forward(self, x, state=None):
        """Runs the layer over ``x`` from ``state = (h0, c0)`` (zeros when None). Returns ``(hs, (h_T, c_T))``
        and keeps the cache for :meth:`backward`."""
        h0, c0 = (None, None) if state is None else self._state_pair("state", state)
        hs, c_T, self.cache = self._kernels.lstm_forward(
            self._time_major("x", x),
            self.params["W_x"],
            self.params["W_h"],
            self.params["b"],
            h0,
            c0,
            forget_gate=self.forget_gate,
        )
        return self._user_layout(hs), (hs[-1].copy(), c_T)

    def backward(self, dhs, dstate=None):
        """Backpropagates ``dhs`` and ``dstate = (dh_T, dc_T)`` (either may be None) through the last forward.
        Adds the parameter gradients to ``self.grads`` and returns ``(dx, (dh0, dc0))``."""
        cache = self._require_cache()
        dh_T, dc_T = (None, None) if dstate is None else self._state_pair("dstate", dstate)
        dhs = RNN._with_final_state_gradient(self._time_major("dhs", dhs), dh_T, cache.hs)
        grads = self._kernels.lstm_backward(cache, dhs, dc_T)
        self.grads["W_x"] += grads.dW_x
        self.grads["W_h"] += grads.dW_h
        self.grads["b"] += grads.db
        return self._user_layout(grads.dx), (grads.dh0, grads.dc0)

    @staticmethod
    def _state_pair(name: str, value):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) for the LSTM, got {type(value).__name__}")
        return value[0], value[1]

    def state_at(self, step: int):
        """The state ``(h, c)`` after ``step`` steps of the last forward (0: the initial state)."""
        cache = self._require_cache()
        if step == 0:
            return cache.h0.copy(), cache.c0.copy()
        return cache.hs[step - 1].copy(), cache.cs[step - 1].copy()
