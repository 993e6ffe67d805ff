"""Optimisers over dicts of NumPy parameters, and clipping by the global gradient norm.

Parameters are updated in place, so layers and models that share the arrays see the new values at once.
"""

from __future__ import annotations

import math

import numpy as np


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number > 0, got {value}")
    return value


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scales all gradients together so that their global L2 norm is at most ``max_norm`` (the remedy for
    exploding gradients); returns the norm before clipping.

    The norm is ``sqrt(sum of squares over every array)``, accumulated in float64. When it exceeds ``max_norm``
    every array is multiplied by ``max_norm / norm`` in place, so the clipped norm is ``max_norm``. A non-finite
    norm leaves the gradients unchanged: the caller sees it in the return value and can skip the step.
    """
    max_norm = _check_positive("max_norm", max_norm)
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for grad in grads.values():
            grad *= grad.dtype.type(scale)
    return total


class _Optimizer:
    def __init__(self, params: dict[str, np.ndarray], lr: float):
        if not params:
            raise ValueError("params: expected a non-empty dict of parameter arrays")
        self.params = params
        self.lr = _check_positive("lr", lr)

    #: the per-parameter arrays of the optimiser's state, and its scalar settings and counters
    _state_arrays: tuple[str, ...] = ()
    _state_scalars: tuple[str, ...] = ("lr",)

    def state_dict(self) -> dict:
        """The optimiser's state as plain values and copies of its arrays (picklable, ``np.savez``-able per
        array): with the parameters saved beside it, :meth:`load_state_dict` resumes training exactly."""
        state = {"type": type(self).__name__}
        state.update({name: getattr(self, name) for name in self._state_scalars})
        state.update({name: {k: a.copy() for k, a in getattr(self, name).items()} for name in self._state_arrays})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Takes the state :meth:`state_dict` returned (of an optimiser of this type over parameters of the same
        names and shapes); checks everything before it changes anything, and raises ValueError on a mismatch."""
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            got = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected the state_dict() of a {type(self).__name__}, got {got!r}")
        missing = [name for name in (*self._state_scalars, *self._state_arrays) if name not in state]
        if missing:
            raise ValueError(f"state: lacks {missing}")
        for name in self._state_arrays:
            arrays = state[name]
            if set(arrays) != set(self.params):
                raise ValueError(
                    f"state[{name!r}]: keys {sorted(arrays)} differ from the parameters' {sorted(self.params)}"
                )
            for key, array in arrays.items():
                if np.shape(array) != self.params[key].shape:
                    raise ValueError(
                        f"state[{name!r}][{key!r}]: shape {np.shape(array)} differs from the parameter's "
                        f"{self.params[key].shape}"
                    )
        for name in self._state_scalars:
            setattr(self, name, state[name])
        for name in self._state_arrays:
            for key, array in getattr(self, name).items():
                np.copyto(array, state[name][key], casting="same_kind")

    def _checked(self, grads: dict[str, np.ndarray]):
        if set(grads) != set(self.params):
            raise ValueError(f"grads: keys {sorted(grads)} differ from the parameters' {sorted(self.params)}")
        for name, grad in grads.items():
            if np.shape(grad) != self.params[name].shape:
                raise ValueError(
                    f"grads[{name!r}]: shape {np.shape(grad)} differs from the parameter's {self.params[name].shape}"
                )
        return grads.items()


class SGD(_Optimizer):
    """Stochastic gradient descent with optional (heavy-ball) momentum, PyTorch's form:
    ``v = momentum * v + g``, ``p -= lr * v``."""

    def __init__(self, params: dict[str, np.ndarray], lr: float, momentum: float = 0.0):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()}

    _state_arrays = ("velocity",)
    _state_scalars = ("lr", "momentum")

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """Updates every parameter in place from its gradient."""
        for name, grad in self._checked(grads):
            v = self.velocity[name]
            v *= self.momentum
            v += grad
            self.params[name] -= self.lr * v


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as PyTorch computes it."""

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas: both must lie in [0, 1), got {betas}")
        self.beta1, self.beta2 = beta1, beta2
        self.eps = _check_positive("eps", eps)
        self.t = 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    _state_arrays = ("m", "v")
    _state_scalars = ("lr", "beta1", "beta2", "eps", "t")

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """Updates every parameter in place from its gradient."""
        self.t += 1
        correction1 = 1.0 - self.beta1**self.t
        correction2 = 1.0 - self.beta2**self.t
        for name, grad in self._checked(grads):
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1.0 - self.beta1) * grad
            v *= self.beta2
            v += (1.0 - self.beta2) * np.square(grad)
            denominator = np.sqrt(v / correction2) + self.eps
            self.params[name] -= (self.lr / correction1) * m / denominator
