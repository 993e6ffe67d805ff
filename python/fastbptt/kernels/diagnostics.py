"""Gradient-flow diagnostics: how BPTT's gradients vanish or explode, measured as the classic analysis derives it.

For the plain RNN (column-vector form of ``h_j = phi(h_{j-1} W_hh + ...)``) the step Jacobian is
``dh_j/dh_{j-1} = diag(phi'(z_j)) W_hhᵀ``; ``dh_t/dh_k`` is the product of the steps in between and obeys
``||dh_t/dh_k||_2 <= prod_j ||W_hh||_2 max|phi'(z_j)| <= (gamma_W gamma_h)^(t-k)``. For the LSTM the state is
``(h, C)``; the full ``dC_t/dC_{t-1}`` goes through ``h_{t-1}`` into every gate, not only through ``f_t``.

States are numbered as in the equations: ``h_0`` is the initial state and ``h_t = hs[t-1]`` for ``t = 1 .. T``.
The Jacobian products and their spectral norms are computed exactly by the core, in float64 whatever the cache's
dtype (the Jacobians are exact functions of the stored activations; long products leave float32's range), one
sequence per thread. The per-step gradient norms come out of the core's backward pass. The explicit step
Jacobians (:func:`rnn_step_jacobians`, :func:`lstm_state_jacobians`) are NumPy, the reference the tests check the
core against. With variable lengths, a sequence shorter than ``t`` has no ``h_t``: its norms are NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks, cells
from ._types import GRUCache, LayerNormLSTMCache, LSTMCache, RNNCache

#: sup |phi'| for each activation: gamma_h of the classic bound
GAMMA_H = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}


class Spectrum(NamedTuple):
    eigenvalues: np.ndarray  #: complex, sorted by decreasing modulus
    spectral_radius: float  #: max |eigenvalue|
    singular_values: np.ndarray  #: decreasing; the first is ||W||_2 (gamma_W of the classic bound)


class JacobianNorms(NamedTuple):
    t: int  #: the later state
    lags: np.ndarray  #: [t+1] t - k for k = 0 .. t
    norms: np.ndarray  #: [t+1, B] ||dh_t/dh_k||_2 for k = 0 .. t (lag 0: the identity, norm 1)
    bound: np.ndarray | None  #: [t+1] (gamma_W gamma_h)^(t-k), the classic bound with the activation's sup |phi'|
    #: [t+1, B] prod_{j=k+1..t} gamma_W max|phi'(z_j)|, the tighter data-dependent bound (LSTM: see there)
    data_bound: np.ndarray | None


class JacobianNormPairs(NamedTuple):
    norms: np.ndarray  #: [T+1, T+1, B] norms[t, k] = ||dh_t/dh_k||_2 for k <= t; NaN for k > t
    bound: np.ndarray | None  #: [T+1, T+1] the bound of :class:`JacobianNorms` for every pair; NaN for k > t
    data_bound: np.ndarray | None  #: [T+1, T+1, B] likewise


class CellJacobians(NamedTuple):
    full: np.ndarray  #: [T, B, H, H] dC_t/dC_{t-1} through h_{t-1} and the gates, t = 1 .. T
    naive: np.ndarray  #: [T, B, H] the diagonal f_t (1 without forget gate) that the short argument keeps
    full_norms: np.ndarray  #: [T, B] spectral norms of ``full``
    naive_norms: np.ndarray  #: [T, B] max |naive|, the spectral norm of diag(naive)


class GradientNorms(NamedTuple):
    per_sequence: np.ndarray  #: [T+1, B] ||dL/dh_k|| for k = 0 .. T (k = 0: the initial state), the cache's dtype
    mean: np.ndarray  #: [T+1] averaged over the batch


def spectrum(W_hh) -> Spectrum:
    """Eigenvalues, spectral radius and singular values of a square recurrent matrix."""
    W = _checks.matrix("W_hh", W_hh, None)
    if W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W_hh: expected a non-empty square matrix, got shape {W.shape}")
    eigenvalues = np.linalg.eigvals(W)
    eigenvalues = eigenvalues[np.argsort(-np.abs(eigenvalues), kind="stable")]
    return Spectrum(eigenvalues, float(np.abs(eigenvalues[0])), np.linalg.svd(W, compute_uv=False))


def spectral_norms(matrices) -> np.ndarray:
    """``||A||_2`` (the largest singular value) of each matrix in a stack ``[..., r, c]``, in float64, computed by
    the core: the largest eigenvalue of the (power-of-two scaled) Gram matrix, to a few units in the last place."""
    from .. import _core

    A = _checks.as_array("matrices", matrices)
    if A.ndim < 2 or not (np.issubdtype(A.dtype, np.floating) or np.issubdtype(A.dtype, np.integer)):
        raise ValueError(f"matrices: expected a real array of shape [..., r, c], got {A.dtype} {A.shape}")
    count = int(np.prod(A.shape[:-2], dtype=np.int64))
    stacked = np.ascontiguousarray(A.reshape((count,) + A.shape[-2:]), dtype=np.float64)
    return _core.spectral_norms(stacked).reshape(A.shape[:-2])


def _float64(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float64)


def _mask_short_sequences(cache, t: int, *arrays: np.ndarray) -> None:
    """Sequences that end before step t have no h_t: NaN in their column of every [.., B] array."""
    if cache.lengths is not None:
        short = np.asarray(cache.lengths) < t
        for array in arrays:
            array[..., short] = np.nan


def _products_back(factors: np.ndarray, t: int) -> np.ndarray:
    """``out[k] = prod_{j=k+1..t} factors[j-1]`` for ``k = 0 .. t`` (``out[t] = 1``); factors ``[T, B]``."""
    out = np.ones((t + 1,) + factors.shape[1:])
    for k in range(t - 1, -1, -1):
        out[k] = out[k + 1] * factors[k]
    return out


def _phi_prime(activation: str, h: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return 1 - h * h
    if activation == "sigmoid":
        return h * (1 - h)
    return (h > 0).astype(h.dtype)


def _state(cache, j: int) -> np.ndarray:
    return cache.h0 if j == 0 else cache.hs[j - 1]


def _check_t(t, T: int) -> int:
    t = T if t is None else t
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= T:
        raise ValueError(f"t: expected a state index in 1 .. {T}, got {t}")
    return int(t)


def rnn_step_jacobians(cache: RNNCache) -> np.ndarray:
    """``[T, B, H, H]``: ``dh_j/dh_{j-1} = diag(phi'(z_j)) W_hhᵀ`` for ``j = 1 .. T``."""
    cache = _checks.cache_of(RNNCache, cache)
    d = _phi_prime(cache.activation, cache.hs)  # [T, B, H]
    return d[..., :, None] * cache.W_hh.T[None, None]


class _RNNJacobians:
    """What every ``t`` of one RNN cache shares: phi' in float64, gamma_W and the per-step data bounds."""

    def __init__(self, cache: RNNCache):
        self.cache = cache
        self.phi_prime = _phi_prime(cache.activation, _float64(cache.hs))  # [T, B, H]
        self.W_hh = _float64(cache.W_hh)
        self.gamma_W = float(spectral_norms(self.W_hh))
        self.gamma_h = GAMMA_H[cache.activation]
        self.step_bounds = self.gamma_W * np.max(np.abs(self.phi_prime), axis=-1)  # [T, B]

    def norms(self, t: int) -> JacobianNorms:
        from .. import _core

        norms = _core.rnn_jacobian_norms(self.phi_prime, self.W_hh, t)
        data_bound = _products_back(self.step_bounds, t)
        _mask_short_sequences(self.cache, t, norms, data_bound)
        lags = t - np.arange(t + 1)
        return JacobianNorms(t, lags, norms, (self.gamma_W * self.gamma_h) ** lags.astype(float), data_bound)


def rnn_jacobian_norms(cache: RNNCache, t: int | None = None) -> JacobianNorms:
    """``||dh_t/dh_k||_2`` for every ``k <= t`` (default ``t = T``) and every sequence, with the classic bounds
    beside it.

    Exact products of the step Jacobians ``diag(phi'(z_j)) W_hhᵀ``, accumulated backwards from ``t`` in the core:
    ``t * B`` products of ``H x H`` matrices and as many spectral norms.
    """
    cache = _checks.cache_of(RNNCache, cache)
    t = _check_t(t, cache.hs.shape[0])
    return _RNNJacobians(cache).norms(t)


def rnn_jacobian_norm_pairs(cache: RNNCache) -> JacobianNormPairs:
    """:func:`rnn_jacobian_norms` for every ``t`` at once: ``||dh_t/dh_k||_2`` for all pairs ``k <= t``
    (``T (T+1) / 2 * B`` products and spectral norms)."""
    cache = _checks.cache_of(RNNCache, cache)
    jacobians = _RNNJacobians(cache)
    return _pairs(cache.hs.shape[0], cache.hs.shape[1], jacobians.norms)


def _pairs(T: int, B: int, norms_for_t) -> JacobianNormPairs:
    norms = np.full((T + 1, T + 1, B), np.nan)
    norms[0, 0] = 1.0
    bound = data_bound = None
    for t in range(1, T + 1):
        result = norms_for_t(t)
        norms[t, : t + 1] = result.norms
        if result.bound is not None:
            if bound is None:
                bound, data_bound = np.full((T + 1, T + 1), np.nan), np.full((T + 1, T + 1, B), np.nan)
                bound[0, 0], data_bound[0, 0] = 1.0, 1.0
            bound[t, : t + 1], data_bound[t, : t + 1] = result.bound, result.data_bound
    return JacobianNormPairs(norms, bound, data_bound)


def _lstm_cache(cache, name: str) -> LSTMCache:
    """``cache`` checked as an LSTMCache of an LSTM without a projection, which the Jacobians below assume."""
    cache = _checks.cache_of(LSTMCache, cache)
    if cache.W_hr is not None:
        raise ValueError(f"{name}: the LSTM with a projection (W_hr) is not supported; hidden_gradient_norms is")
    return cache


def _lstm_blocks(cache: LSTMCache):
    """The columns of each gate block (the LSTM's specification)."""
    return cells.cell_class("lstm")("reference", forget_gate=cache.forget_gate).gate_columns(cache.W_h.shape[0])


def lstm_state_jacobians(cache: LSTMCache, start: int = 0, stop: int | None = None) -> np.ndarray:
    """``[stop - start, B, 2H, 2H]``: the Jacobian of ``(h_j, C_j)`` with respect to ``(h_{j-1}, C_{j-1})`` for
    ``j = start+1 .. stop`` (default: every step, ``j = 1 .. T``).

    With ``dz = W_hᵀ dh_{j-1}``: ``dC_j = f dC_{j-1} + C_{j-1} f'(z_f) dz_f + g i'(z_i) dz_i + i g'(z_g) dz_g`` and
    ``dh_j = tanh(C_j) o'(z_o) dz_o + o (1 - tanh^2 C_j) dC_j``.
    """
    cache = _lstm_cache(cache, "lstm_state_jacobians")
    T, B, H = cache.hs.shape
    stop = T if stop is None else stop
    steps = slice(start, stop)
    blocks = _lstm_blocks(cache)
    gates = {name: cache.gates[steps, :, s] for name, s in blocks.items()}
    W = {name: cache.W_h[:, s].T for name, s in blocks.items()}  # dz_gate/dh_{j-1}, [H, H]
    c_prev = np.concatenate([cache.c0[None], cache.cs[:-1]])[steps]
    tanh_c = np.tanh(cache.cs[steps])
    i, g, o = gates["i"], gates["g"], gates["o"]
    dC_dh = (g * i * (1 - i))[..., None] * W["i"] + (i * (1 - g * g))[..., None] * W["g"]
    if cache.forget_gate:
        f = gates["f"]
        dC_dh = dC_dh + (c_prev * f * (1 - f))[..., None] * W["f"]
        dC_dC = f
    else:
        dC_dC = np.ones_like(i)
    out_gain = o * (1 - tanh_c * tanh_c)  # dh_j / dC_j
    dh_dh = (tanh_c * o * (1 - o))[..., None] * W["o"] + out_gain[..., None] * dC_dh
    eye = np.eye(H, dtype=cache.hs.dtype)
    J = np.empty((stop - start, B, 2 * H, 2 * H), dtype=cache.hs.dtype)
    J[..., :H, :H] = dh_dh
    J[..., :H, H:] = (out_gain * dC_dC)[..., None] * eye
    J[..., H:, :H] = dC_dh
    J[..., H:, H:] = dC_dC[..., None] * eye
    return J


def _lstm_arrays(cache: LSTMCache):
    return _float64(cache.gates), _float64(cache.cs), _float64(cache.c0), _float64(cache.W_h), cache.forget_gate


def lstm_cell_jacobians(cache: LSTMCache) -> CellJacobians:
    """The full ``dC_t/dC_{t-1}`` for every step, next to the naive ``diag(f_t)``, computed by the core.

    ``C_{t-1}`` reaches ``C_t`` directly (``f_t``) and through ``h_{t-1} = o_{t-1} tanh(C_{t-1})`` into the input,
    forget and candidate gates: ``full = diag(f_t) + (dC_t/dh_{t-1}) diag(o_{t-1} (1 - tanh^2 C_{t-1}))``. At
    ``t = 1``, ``h_0`` is an input, not a function of ``C_0``, so the full derivative is ``diag(f_1)``.
    ``full`` takes ``T * B * H * H`` float64 values.
    """
    from .. import _core

    cache = _lstm_cache(cache, "lstm_cell_jacobians")
    full, full_norms = _core.lstm_cell_jacobians(*_lstm_arrays(cache))
    if cache.forget_gate:
        naive = _float64(cache.gates[..., _lstm_blocks(cache)["f"]])
    else:
        naive = np.ones(cache.hs.shape)
    naive_norms = np.max(np.abs(naive), axis=-1)
    if cache.lengths is not None:  # steps past a sequence's end do not exist
        past_end = np.arange(1, cache.hs.shape[0] + 1)[:, None] > np.asarray(cache.lengths)[None, :]
        full[past_end], naive[past_end] = np.nan, np.nan
        full_norms[past_end], naive_norms[past_end] = np.nan, np.nan
    return CellJacobians(full, naive, full_norms, naive_norms)


class _LSTMJacobians:
    """What every ``t`` of one LSTM cache shares: the float64 arrays and the step Jacobians' norms."""

    def __init__(self, cache: LSTMCache, last_t: int, bounds: bool):
        from .. import _core

        self.cache = cache
        self.arrays = _lstm_arrays(cache)
        self.step_norms = _core.lstm_jacobian_norms(*self.arrays, last_t, True)[1] if bounds else None

    def norms(self, t: int) -> JacobianNorms:
        from .. import _core

        norms, _ = _core.lstm_jacobian_norms(*self.arrays, t, False)
        _mask_short_sequences(self.cache, t, norms)
        bound = data_bound = None
        if self.step_norms is not None:
            data_bound = _products_back(self.step_norms, t)
            _mask_short_sequences(self.cache, t, data_bound)
            has_t = ~np.isnan(norms).all(axis=0)  # sequences that reach step t
            bound = data_bound[:, has_t].max(axis=1) if has_t.any() else np.full(t + 1, np.nan)
        return JacobianNorms(t, t - np.arange(t + 1), norms, bound, data_bound)


def lstm_jacobian_norms(cache: LSTMCache, t: int | None = None, *, bounds: bool = True) -> JacobianNorms:
    """``||dh_t/dh_k||_2`` for the LSTM: a perturbation of ``h_k`` alone (``C_k`` is not a function of ``h_k``)
    carried through the full ``(h, C)`` recursion to ``h_t``, computed by the core. ``data_bound`` holds the
    product of the ``[2H, 2H]`` state Jacobians' spectral norms and ``bound`` its maximum over the batch (there is
    no activation-only bound for the gated cell). Those norms cost about three times the products themselves:
    ``bounds=False`` skips them and leaves ``bound`` and ``data_bound`` None."""
    cache = _lstm_cache(cache, "lstm_jacobian_norms")
    t = _check_t(t, cache.hs.shape[0])
    return _LSTMJacobians(cache, t, _checks.flag("bounds", bounds)).norms(t)


def lstm_jacobian_norm_pairs(cache: LSTMCache, *, bounds: bool = True) -> JacobianNormPairs:
    """:func:`lstm_jacobian_norms` for every ``t`` at once: all pairs ``k <= t``."""
    cache = _lstm_cache(cache, "lstm_jacobian_norm_pairs")
    T, B, _ = cache.hs.shape
    return _pairs(T, B, _LSTMJacobians(cache, T, _checks.flag("bounds", bounds)).norms)


def hidden_gradient_norms(cache, dhs, dc_T=None) -> GradientNorms:
    """``||dL/dh_k||`` for every state ``k = 0 .. T``: what BPTT carries back to each step (the upstream
    gradient of step ``k`` plus everything from later steps), per sequence and averaged.

    Computed by the core's backward pass, which records the norm of dL/dh at every step as it goes (O(B*H) per
    step beside the backward itself), from an RNN, LSTM (projected too), layer-normalised LSTM or GRU cache of either
    backend; ``dc_T`` as for :func:`fastbptt.lstm_backward`. With lengths, norms past a sequence's length are 0.
    """
    from .. import _core
    from .functional import _core_lengths

    cache = _checks.cache_of((RNNCache, LSTMCache, GRUCache, LayerNormLSTMCache), cache)
    dhs = _checks.upstream("dhs", dhs, cache.hs.dtype, cache.hs.shape, "[T, B, H]")
    lengths = _core_lengths(cache.lengths)
    if isinstance(cache, RNNCache):
        c = cache
        out = _core.rnn_backward(c.x, c.W_xh, c.W_hh, c.h0, c.hs, dhs, c.activation, lengths, True)
    elif isinstance(cache, (LSTMCache, LayerNormLSTMCache)):
        c = cache
        dc_T = np.zeros_like(c.c0) if dc_T is None else dc_T
        dc_T = _checks.upstream("dc_T", dc_T, c.hs.dtype, c.c0.shape, "[B, H]")
        if isinstance(c, LSTMCache):
            out = _core.lstm_backward(
                c.x, c.W_x, c.W_h, c.h0, c.c0, c.gates, c.hs, c.cs, dhs, dc_T, c.forget_gate, lengths, True, W_hr=c.W_hr
            )
        else:
            vectors = (c.gamma_ih, c.gamma_hh, c.gamma_c, c.beta_c)
            kept = (c.gates, c.x_hat, c.h_hat, c.cs, c.c_hat, c.hs, c.inv_std)
            out = _core.layer_norm_lstm_backward(
                c.x, c.W_x, c.W_h, *vectors, c.h0, c.c0, *kept, dhs, dc_T, lengths, True
            )
    else:
        c = cache
        out = _core.gru_backward(c.x, c.W_x, c.W_h, c.h0, c.gates, c.hn, c.hs, dhs, lengths, True)
    norms = out[-1]
    return GradientNorms(norms, norms.mean(axis=1))


SWEEP_RADII = (0.5, 0.9, 1.0, 1.1, 1.5)


def _decay_per_lag(norms_by_lag: np.ndarray) -> float:
    """Geometric-mean factor by which the norm changes per step of lag (from lag 1 to the largest)."""
    last = norms_by_lag[-1]
    if not (np.isfinite(last) and last > 0 and norms_by_lag[1] > 0):
        return float("nan")
    return float((last / norms_by_lag[1]) ** (1.0 / (len(norms_by_lag) - 2)))


def gradient_flow_sweep(T: int = 100, B: int = 16, H: int = 64, seed: int = 0) -> list[dict]:
    """Mean ``||dh_T/dh_k||_2`` against the lag ``T - k`` for tanh and ReLU RNNs whose recurrent matrix is
    ``rho`` times a random orthogonal matrix (every eigenvalue and singular value has modulus ``rho``), for each
    ``rho`` in :data:`SWEEP_RADII`, and for an LSTM with PyTorch's initialisation (``rho`` None). Inputs are
    ``N(0, 1)``. Each row: ``model``, ``rho``, ``lags``, ``mean_norm`` and ``bound`` indexed by lag, ``decay``."""
    from .functional import lstm_forward, rnn_forward
    from .init import orthogonal

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H))
    bound_in = 1.0 / np.sqrt(H)
    W_xh = rng.uniform(-bound_in, bound_in, (H, H))
    Q = orthogonal(rng, H)
    rows = []
    for activation in ("tanh", "relu"):
        for rho in SWEEP_RADII:
            _, cache = rnn_forward(x, W_xh, rho * Q, np.zeros(H), activation=activation)
            result = rnn_jacobian_norms(cache)
            mean = result.norms.mean(axis=1)[::-1]  # indexed by lag
            rows.append(
                {
                    "model": f"{activation} RNN",
                    "rho": rho,
                    "lags": np.arange(T + 1),
                    "mean_norm": mean,
                    "bound": result.bound[::-1],
                    "decay": _decay_per_lag(mean),
                }
            )
    W_x = rng.uniform(-bound_in, bound_in, (H, 4 * H))
    W_h = rng.uniform(-bound_in, bound_in, (H, 4 * H))
    b = rng.uniform(-bound_in, bound_in, 4 * H)
    _, _, cache = lstm_forward(x, W_x, W_h, b)
    result = lstm_jacobian_norms(cache)
    mean = result.norms.mean(axis=1)[::-1]
    rows.append(
        {
            "model": "LSTM",
            "rho": None,
            "lags": np.arange(T + 1),
            "mean_norm": mean,
            "bound": result.bound[::-1],
            "decay": _decay_per_lag(mean),
        }
    )
    return rows
