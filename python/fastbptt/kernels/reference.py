"""The executable specification: every kernel in plain NumPy, one loop over time, written from the equations.

Each function has the name, arguments and result type of its fast twin in :mod:`fastbptt`, so the two can be
swapped in tests and in user code; caches are interchangeable too. It computes in the dtype it is given, so the
float64 reference is the yardstick for both float32 and float64 fast results. It computes nothing in the compiled
core: besides NumPy it uses the package's pure-Python argument checks and result types, and one fact of the core,
the length of its backward blocks, to which checkpointed segments are rounded so that caches are interchangeable.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from . import checkpoint as _checkpoint
from ._types import (
    CheckpointedLSTMCache,
    GRUCache,
    GRUGrads,
    LayerNormLSTMCache,
    LayerNormLSTMGrads,
    LSTMCache,
    LSTMGrads,
    OutputGrads,
    ProjectedLSTMGrads,
    RNNCache,
    RNNGrads,
)
from .conversions import gru_weights_from_torch, gru_weights_to_torch, lstm_weights_from_torch, lstm_weights_to_torch
from .memory import workspace_bytes
from .sequences import final_states, reverse_sequences

__all__ = [
    "final_states",
    "gru_backward",
    "gru_forward",
    "gru_weights_from_torch",
    "gru_weights_to_torch",
    "layer_norm_lstm_backward",
    "layer_norm_lstm_forward",
    "lstm_backward",
    "lstm_forward",
    "lstm_weights_from_torch",
    "lstm_weights_to_torch",
    "reverse_sequences",
    "rnn_backward",
    "rnn_forward",
    "softmax_cross_entropy",
    "workspace_bytes",
]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp(-z) overflows to inf for z < -709 (float64), and 1 / (1 + inf) = 0 is the right limit.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _phi(activation: str, z: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(z)
    if activation == "relu":
        return np.where(z < 0, np.zeros_like(z), z)  # keeps NaN, unlike a max that might drop it
    return _sigmoid(z)


def _phi_prime_from_output(activation: str, h: np.ndarray) -> np.ndarray:
    """phi'(z) written through h = phi(z): tanh' = 1 - h^2, sigmoid' = h (1 - h), relu' = [z > 0] = [h > 0]."""
    if activation == "tanh":
        return 1 - h * h
    if activation == "relu":
        return (h > 0).astype(h.dtype)
    return h * (1 - h)


def _running(lengths: np.ndarray | None, t: int, B: int) -> np.ndarray:
    """``[B, 1]`` mask of the sequences that run step t (all of them without lengths)."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def _no_wavefront(wavefront) -> None:
    if wavefront is not None:
        raise ValueError("wavefront: the reference runs one layer at a time; pass None")


def rnn_forward(
    x,
    W_xh,
    W_hh,
    b_h,
    h0=None,
    *,
    activation: str = "tanh",
    lengths=None,
    inference: bool = False,
    packed=None,
    wavefront=None,
) -> tuple[np.ndarray, RNNCache | None]:
    """Reference of :func:`fastbptt.rnn_forward`: ``h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h)``.

    A sequence past its length keeps its state and outputs zeros. ``packed`` is taken for the fast path's signature
    and not used (the reference packs nothing); so in every forward here. ``wavefront`` (the stack driver's) is
    refused: the reference runs a layer at a time."""
    _no_wavefront(wavefront)
    x, W_xh, W_hh, b_h, h0, activation = _checks.rnn_args(x, W_xh, W_hh, b_h, h0, activation)
    T, B, _ = x.shape
    lengths = _checks.lengths_array(lengths, T, B)
    inference = _checks.flag("inference", inference)
    hs = np.empty((T, B, W_hh.shape[0]), dtype=x.dtype)
    h = h0
    for t in range(T):
        running = _running(lengths, t, B)
        h_new = _phi(activation, x[t] @ W_xh + h @ W_hh + b_h)
        h = np.where(running, h_new, h)
        hs[t] = np.where(running, h_new, 0)
    if inference:
        return hs, None
    cache = RNNCache(x, W_xh, W_hh, h0, hs, activation, lengths)
    return cache.hs, cache


def rnn_backward(
    cache: RNNCache, dhs, *, need_dx: bool = True, need_weight_grads: bool = True, wavefront=None
) -> RNNGrads:
    """Reference of :func:`fastbptt.rnn_backward`, accumulating each step's contribution as the chain rule gives it:

    ``dz_t = (dL/dh_t) * phi'(z_t)``, ``dL/dh_{t-1} += dz_t W_hhᵀ``, ``dW_xh += x_tᵀ dz_t``, ``dW_hh += h_{t-1}ᵀ dz_t``.
    """
    _no_wavefront(wavefront)
    c = _checks.cache_of(RNNCache, cache)
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    T = c.x.shape[0]
    dx = np.empty_like(c.x)
    dW_xh = np.zeros_like(c.W_xh)
    dW_hh = np.zeros_like(c.W_hh)
    db_h = np.zeros(c.W_hh.shape[0], dtype=c.x.dtype)
    dh_from_later = np.zeros_like(c.h0)
    for t in reversed(range(T)):
        h_prev = c.hs[t - 1] if t > 0 else c.h0
        # A sequence that has ended by step t neither takes its upstream gradient nor passes any on.
        dh = np.where(_running(c.lengths, t, c.h0.shape[0]), dhs[t] + dh_from_later, 0)
        dz = dh * _phi_prime_from_output(c.activation, c.hs[t])
        dW_xh += c.x[t].T @ dz
        dW_hh += h_prev.T @ dz
        db_h += dz.sum(axis=0)
        dx[t] = dz @ c.W_xh.T
        dh_from_later = dz @ c.W_hh.T
    return RNNGrads(*_asked_for((dx, dh_from_later, dW_xh, dW_hh, db_h), need_dx, need_weight_grads, states=1))


def _asked_for(grads: tuple, need_dx, need_weight_grads, states: int) -> tuple:
    """``grads`` (dx, the initial states' gradients, the weights') with None for what was not asked for."""
    need_dx, need_weight_grads = _checks.flag("need_dx", need_dx), _checks.flag("need_weight_grads", need_weight_grads)
    dx, initial, weights = grads[0], grads[1 : 1 + states], grads[1 + states :]
    return (dx if need_dx else None, *initial, *(weights if need_weight_grads else (None,) * len(weights)))


def _gate_blocks(forget_gate: bool, H: int) -> dict[str, slice]:
    names = "ifgo" if forget_gate else "igo"
    return {name: slice(k * H, (k + 1) * H) for k, name in enumerate(names)}


def lstm_forward(
    x,
    W_x,
    W_h,
    b,
    h0=None,
    c0=None,
    *,
    forget_gate: bool = True,
    lengths=None,
    checkpoint=None,
    inference=False,
    packed=None,
    W_hr=None,
    wavefront=None,
) -> tuple[np.ndarray, np.ndarray, LSTMCache | CheckpointedLSTMCache | None]:
    """Reference of :func:`fastbptt.lstm_forward` (with ``checkpoint``, the same segments and cache; with ``W_hr``,
    ``h_t = (o_t * tanh C_t) W_hr``)."""
    _no_wavefront(wavefront)
    x, W_x, W_h, b, h0, c0, forget_gate, W_hr = _checks.lstm_args(x, W_x, W_h, b, h0, c0, forget_gate, W_hr)
    T, B, _ = x.shape
    lengths = _checks.lengths_array(lengths, T, B)
    inference = _checks.inference_flag(inference, checkpoint)
    if checkpoint is not None:
        _checks.checkpoint_alone(lengths=lengths, W_hr=W_hr)
        segment = _checkpoint.segment_steps(checkpoint, T, B, W_h.shape[1])
        hs, c_T, h_points, c_points = _checkpoint.lstm_forward(
            _segment_forward, x, W_x, W_h, b, h0, c0, forget_gate, segment
        )
        return hs, c_T, CheckpointedLSTMCache(x, W_x, W_h, b, h_points, c_points, segment, forget_gate)
    H = c0.shape[1]
    blocks = _gate_blocks(forget_gate, H)
    gates = np.empty((T, B, W_h.shape[1]), dtype=x.dtype)
    hs = np.empty((T, B, h0.shape[1]), dtype=x.dtype)
    cs = np.empty((T, B, H), dtype=x.dtype)
    h, c = h0, c0
    for t in range(T):
        running = _running(lengths, t, B)
        z = x[t] @ W_x + h @ W_h + b
        i = _sigmoid(z[:, blocks["i"]])
        g = np.tanh(z[:, blocks["g"]])
        o = _sigmoid(z[:, blocks["o"]])
        if forget_gate:
            f = _sigmoid(z[:, blocks["f"]])
            c_new = f * c + i * g
            gates[t, :, blocks["f"]] = np.where(running, f, 0)
        else:
            c_new = c + i * g
        h_new = o * np.tanh(c_new)
        if W_hr is not None:
            h_new = h_new @ W_hr
        gates[t, :, blocks["i"]] = np.where(running, i, 0)
        gates[t, :, blocks["g"]] = np.where(running, g, 0)
        gates[t, :, blocks["o"]] = np.where(running, o, 0)
        h, c = np.where(running, h_new, h), np.where(running, c_new, c)
        hs[t] = np.where(running, h_new, 0)
        cs[t] = np.where(running, c_new, 0)
    if inference:
        return hs, c.copy(), None
    cache = LSTMCache(x, W_x, W_h, h0, c0, gates, hs, cs, forget_gate, lengths, W_hr=W_hr)
    return cache.hs, c.copy(), cache


def _segment_forward(x, W_x, W_h, b, h0, c0, forget_gate):
    hs, _, cache = lstm_forward(x, W_x, W_h, b, h0, c0, forget_gate=forget_gate)
    return hs, cache.cs, cache.gates


def _segment_backward_into(
    x, W_x, W_h, h0, c0, gates, hs, cs, dhs, dc_T, forget_gate, dW_x, dW_h, db, need_dx, need_weight_grads
):
    cache = LSTMCache(x, W_x, W_h, h0, c0, gates, hs, cs, forget_gate)
    grads = lstm_backward(cache, dhs, dc_T, need_dx=need_dx, need_weight_grads=need_weight_grads)
    if need_weight_grads:
        dW_x += grads.dW_x
        dW_h += grads.dW_h
        db += grads.db
    return grads.dx, grads.dh0, grads.dc0


def lstm_backward(
    cache: LSTMCache | CheckpointedLSTMCache,
    dhs,
    dc_T=None,
    *,
    need_dx: bool = True,
    need_weight_grads: bool = True,
    wavefront=None,
) -> LSTMGrads:
    """Reference of :func:`fastbptt.lstm_backward`.

    With ``dh = dL/dh_t`` and ``dc = dL/dC_t`` (both including what flows back from step t+1):
    ``dc += dh * o * (1 - tanh²C_t)``, ``dz_o = dh * tanh(C_t) * o(1-o)``, ``dz_i = dc * g * i(1-i)``,
    ``dz_g = dc * i * (1-g²)``, ``dz_f = dc * C_{t-1} * f(1-f)``; then ``dL/dC_{t-1} = dc * f`` (``dc`` without
    forget gate) and ``dL/dh_{t-1} = dz W_hᵀ``.
    """
    _no_wavefront(wavefront)
    c = _checks.cache_of((LSTMCache, CheckpointedLSTMCache), cache)
    dtype, shape = c.x.dtype, (*c.x.shape[:2], c.W_h.shape[0])  # [T, B, P]: W_h is [P, G*H]
    dhs = _checks.upstream("dhs", dhs, dtype, shape, "[T, B, H]")
    dc = np.zeros_like(c.c0) if dc_T is None else _checks.upstream("dc_T", dc_T, dtype, c.c0.shape, "[B, H]")
    if isinstance(c, CheckpointedLSTMCache):
        needs = (_checks.flag("need_dx", need_dx), _checks.flag("need_weight_grads", need_weight_grads))
        return LSTMGrads(*_checkpoint.lstm_backward(_segment_forward, _segment_backward_into, c, dhs, dc, *needs))
    T = c.x.shape[0]
    H = c.c0.shape[1]
    blocks = _gate_blocks(c.forget_gate, H)
    dx = np.empty_like(c.x)
    dW_x = np.zeros_like(c.W_x)
    dW_h = np.zeros_like(c.W_h)
    dW_hr = None if c.W_hr is None else np.zeros_like(c.W_hr)
    db = np.zeros(c.W_h.shape[1], dtype=c.x.dtype)
    dh_from_later = np.zeros_like(c.h0)
    dz = np.empty((c.x.shape[1], c.W_h.shape[1]), dtype=c.x.dtype)
    for t in reversed(range(T)):
        h_prev = c.hs[t - 1] if t > 0 else c.h0
        c_prev = c.cs[t - 1] if t > 0 else c.c0
        i = c.gates[t, :, blocks["i"]]
        g = c.gates[t, :, blocks["g"]]
        o = c.gates[t, :, blocks["o"]]
        tanh_c = np.tanh(c.cs[t])
        # A sequence that has ended by step t takes no upstream gradient there; dc keeps its dc_T until its
        # last step comes.
        running = _running(c.lengths, t, c.h0.shape[0])
        dh = np.where(running, dhs[t] + dh_from_later, 0)
        if c.W_hr is not None:  # h_t = m_t W_hr with m_t = o * tanh(C_t): the gates see dL/dm_t
            dW_hr += (o * tanh_c).T @ dh
            dh = dh @ c.W_hr.T
        dc_carried = dc
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        dz[:, blocks["o"]] = dh * tanh_c * o * (1 - o)
        dz[:, blocks["i"]] = dc * g * i * (1 - i)
        dz[:, blocks["g"]] = dc * i * (1 - g * g)
        if c.forget_gate:
            f = c.gates[t, :, blocks["f"]]
            dz[:, blocks["f"]] = dc * c_prev * f * (1 - f)
            dc = dc * f
        dz[~running[:, 0]] = 0
        dc = np.where(running, dc, dc_carried)
        dW_x += c.x[t].T @ dz
        dW_h += h_prev.T @ dz
        db += dz.sum(axis=0)
        dx[t] = dz @ c.W_x.T
        dh_from_later = dz @ c.W_h.T
    if c.W_hr is None:
        return LSTMGrads(*_asked_for((dx, dh_from_later, dc, dW_x, dW_h, db), need_dx, need_weight_grads, states=2))
    grads = _asked_for((dx, dh_from_later, dc, dW_x, dW_h, db, dW_hr), need_dx, need_weight_grads, states=2)
    return ProjectedLSTMGrads(*grads)


def _layer_norm(v: np.ndarray):
    """(LN(v), 1 / sqrt(var + 1e-5)) over the last axis, biased variance (torch.nn.functional.layer_norm's)."""
    centred = v - v.mean(axis=-1, keepdims=True)
    inverse = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + 1e-5)
    return centred * inverse, inverse


def _layer_norm_backward(d: np.ndarray, v_hat: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The gradient of LN's input from ``d``, that of its output ``v_hat``."""
    return inverse * (d - d.mean(axis=-1, keepdims=True) - v_hat * (d * v_hat).mean(axis=-1, keepdims=True))


def layer_norm_lstm_forward(
    x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0=None, c0=None, *, lengths=None, inference: bool = False
) -> tuple[np.ndarray, np.ndarray, LayerNormLSTMCache | None]:
    """Reference of :func:`fastbptt.layer_norm_lstm_forward`, one step at a time as its equations say."""
    x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0 = _checks.layer_norm_lstm_args(
        x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0
    )
    T, B, _ = x.shape
    H = W_h.shape[0]
    lengths = _checks.lengths_array(lengths, T, B)
    inference = _checks.flag("inference", inference)
    widths = (4 * H, 4 * H, 4 * H, H, H, H, 3)  # of the arrays in LayerNormLSTMCache.computed's order
    kept = {name: np.zeros((T, B, width), x.dtype) for name, width in zip(LayerNormLSTMCache.computed, widths)}
    h, c = h0, c0
    for t in range(T):
        running = _running(lengths, t, B)
        x_hat, inv_x = _layer_norm(x[t] @ W_x)
        h_hat, inv_h = _layer_norm(h @ W_h)
        z = x_hat * gamma_ih + h_hat * gamma_hh + b
        i, f, g, o = (
            _sigmoid(z[:, :H]),
            _sigmoid(z[:, H : 2 * H]),
            np.tanh(z[:, 2 * H : 3 * H]),
            _sigmoid(z[:, 3 * H :]),
        )
        c_new = f * c + i * g
        c_hat, inv_c = _layer_norm(c_new)
        h_new = o * np.tanh(c_hat * gamma_c + beta_c)
        step = {
            "gates": np.concatenate([i, f, g, o], axis=1),
            "x_hat": x_hat,
            "h_hat": h_hat,
            "cs": c_new,
            "c_hat": c_hat,
            "hs": h_new,
            "inv_std": np.concatenate([inv_x, inv_h, inv_c], axis=1),
        }
        for name, value in step.items():
            kept[name][t] = np.where(running, value, 0)
        h, c = np.where(running, h_new, h), np.where(running, c_new, c)
    if inference:
        return kept["hs"], c.copy(), None
    computed = (kept[name] for name in LayerNormLSTMCache.computed)
    cache = LayerNormLSTMCache(x, W_x, W_h, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0, *computed, lengths)
    return cache.hs, c.copy(), cache


def layer_norm_lstm_backward(
    cache: LayerNormLSTMCache, dhs, dc_T=None, *, need_dx: bool = True, need_weight_grads: bool = True
) -> LayerNormLSTMGrads:
    """Reference of :func:`fastbptt.layer_norm_lstm_backward`: the chain rule through each normalisation
    (``dv = s (d - mean(d) - v̂ mean(d v̂))``) and the LSTM's gates, a step at a time."""
    c = _checks.cache_of(LayerNormLSTMCache, cache)
    dtype, (T, B, _), H = c.x.dtype, c.x.shape, c.W_h.shape[0]
    dhs = _checks.upstream("dhs", dhs, dtype, (T, B, H), "[T, B, H]")
    dc = np.zeros_like(c.c0) if dc_T is None else _checks.upstream("dc_T", dc_T, dtype, c.c0.shape, "[B, H]")
    grads = {name: np.zeros_like(getattr(c, name)) for name in ("W_x", "W_h", "gamma_ih", "gamma_hh", "gamma_c")}
    db, dbeta_c, dx = np.zeros(4 * H, dtype), np.zeros(H, dtype), np.empty_like(c.x)
    dh_from_later = np.zeros_like(c.h0)
    for t in reversed(range(T)):
        running = _running(c.lengths, t, B)
        h_prev = c.hs[t - 1] if t > 0 else c.h0
        c_prev = c.cs[t - 1] if t > 0 else c.c0
        i, f, g, o = (c.gates[t, :, k * H : (k + 1) * H] for k in range(4))
        inv_x, inv_h, inv_c = (c.inv_std[t, :, k : k + 1] for k in range(3))
        dh = np.where(running, dhs[t] + dh_from_later, 0)
        tanh_y = np.tanh(c.c_hat[t] * c.gamma_c + c.beta_c)
        dy = dh * o * (1 - tanh_y * tanh_y)
        grads["gamma_c"] += (dy * c.c_hat[t]).sum(axis=0)
        dbeta_c += dy.sum(axis=0)
        dc_carried = dc
        dc = dc + _layer_norm_backward(dy * c.gamma_c, c.c_hat[t], inv_c)
        dz = np.concatenate(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tanh_y * o * (1 - o)], axis=1
        )
        dz[~running[:, 0]] = 0
        dc = np.where(running, dc * f, dc_carried)
        grads["gamma_ih"] += (dz * c.x_hat[t]).sum(axis=0)
        grads["gamma_hh"] += (dz * c.h_hat[t]).sum(axis=0)
        db += dz.sum(axis=0)
        d_recurrent = _layer_norm_backward(dz * c.gamma_hh, c.h_hat[t], inv_h) * running
        d_input = _layer_norm_backward(dz * c.gamma_ih, c.x_hat[t], inv_x) * running
        grads["W_x"] += c.x[t].T @ d_input
        grads["W_h"] += h_prev.T @ d_recurrent
        dx[t] = d_input @ c.W_x.T
        dh_from_later = d_recurrent @ c.W_h.T
    weights = (grads["W_x"], grads["W_h"], db, grads["gamma_ih"], grads["gamma_hh"], grads["gamma_c"], dbeta_c)
    return LayerNormLSTMGrads(*_asked_for((dx, dh_from_later, dc, *weights), need_dx, need_weight_grads, states=2))


def gru_forward(
    x, W_x, W_h, b, b_hn, h0=None, *, lengths=None, inference: bool = False, packed=None, wavefront=None
) -> tuple[np.ndarray, GRUCache | None]:
    """Reference of :func:`fastbptt.gru_forward`."""
    _no_wavefront(wavefront)
    x, W_x, W_h, b, b_hn, h0 = _checks.gru_args(x, W_x, W_h, b, b_hn, h0)
    T, B, _ = x.shape
    lengths = _checks.lengths_array(lengths, T, B)
    inference = _checks.flag("inference", inference)
    H = W_h.shape[0]
    r_, z_, n_ = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    gates = np.empty((T, B, 3 * H), dtype=x.dtype)
    hn = np.empty((T, B, H), dtype=x.dtype)
    hs = np.empty((T, B, H), dtype=x.dtype)
    h = h0
    for t in range(T):
        running = _running(lengths, t, B)
        zx = x[t] @ W_x + b
        zh = h @ W_h
        r = _sigmoid(zx[:, r_] + zh[:, r_])
        z = _sigmoid(zx[:, z_] + zh[:, z_])
        hidden_n = zh[:, n_] + b_hn
        n = np.tanh(zx[:, n_] + r * hidden_n)
        h_new = (1 - z) * n + z * h
        gates[t] = np.where(running, np.concatenate([r, z, n], axis=1), 0)
        hn[t] = np.where(running, hidden_n, 0)
        h = np.where(running, h_new, h)
        hs[t] = np.where(running, h_new, 0)
    if inference:
        return hs, None
    cache = GRUCache(x, W_x, W_h, h0, gates, hn, hs, lengths)
    return cache.hs, cache


def gru_backward(
    cache: GRUCache, dhs, *, need_dx: bool = True, need_weight_grads: bool = True, wavefront=None
) -> GRUGrads:
    """Reference of :func:`fastbptt.gru_backward`.

    With ``dh = dL/dh_t``: ``dz_n = dh (1-z)(1-n²)``, ``dz_z = dh (h_{t-1} - n) z(1-z)``,
    ``dz_r = dz_n hn r(1-r)`` and ``d(hn) = dz_n r``; the input side gets ``[dz_r, dz_z, dz_n]``, the recurrent side
    ``[dz_r, dz_z, d(hn)]``, and ``dL/dh_{t-1} = dh z + [dz_r, dz_z, d(hn)] W_hᵀ``.
    """
    _no_wavefront(wavefront)
    c = _checks.cache_of(GRUCache, cache)
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    T, B, _ = c.x.shape
    H = c.W_h.shape[0]
    r_, z_, n_ = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    dx = np.empty_like(c.x)
    dW_x = np.zeros_like(c.W_x)
    dW_h = np.zeros_like(c.W_h)
    db = np.zeros(3 * H, dtype=c.x.dtype)
    db_hn = np.zeros(H, dtype=c.x.dtype)
    dh_from_later = np.zeros_like(c.h0)
    for t in reversed(range(T)):
        h_prev = c.hs[t - 1] if t > 0 else c.h0
        r, z, n = c.gates[t, :, r_], c.gates[t, :, z_], c.gates[t, :, n_]
        dh = np.where(_running(c.lengths, t, B), dhs[t] + dh_from_later, 0)
        dz_n = dh * (1 - z) * (1 - n * n)
        dz_z = dh * (h_prev - n) * z * (1 - z)
        dz_r = dz_n * c.hn[t] * r * (1 - r)
        d_hn = dz_n * r
        dz_input = np.concatenate([dz_r, dz_z, dz_n], axis=1)
        dz_recurrent = np.concatenate([dz_r, dz_z, d_hn], axis=1)
        dW_x += c.x[t].T @ dz_input
        dW_h += h_prev.T @ dz_recurrent
        db += dz_input.sum(axis=0)
        db_hn += d_hn.sum(axis=0)
        dx[t] = dz_input @ c.W_x.T
        dh_from_later = dh * z + dz_recurrent @ c.W_h.T
    return GRUGrads(*_asked_for((dx, dh_from_later, dW_x, dW_h, db, db_hn), need_dx, need_weight_grads, states=1))


def softmax_cross_entropy(
    hs, W_yh, b_y, targets, *, reduction: str = "sum", ignore_index: int = -100
) -> tuple[float, OutputGrads]:
    """Reference of :func:`fastbptt.softmax_cross_entropy`.

    Per step: ``o_t = h_t W_yh + b_y``, ``log p = o - max(o) - log(sum exp(o - max(o)))``, ``L_t = -log p[y_t]``,
    and ``dL_t/do_t = p - onehot(y_t)`` (``ŷ_t - y_t``); zero for rows whose target is ignore_index.
    """
    hs, W_yh, b_y, targets, reduction = _checks.output_args(hs, W_yh, b_y, targets, reduction, ignore_index)
    T, _, _ = hs.shape
    counted = int(np.count_nonzero(targets != ignore_index))
    if reduction == "sum":
        scale = 1.0
    else:  # "mean" over no counted row: NaN loss and zero gradients, as the fast path
        scale = 1.0 / counted if counted else 0.0
    loss = 0.0
    dhs = np.empty_like(hs)
    dW_yh = np.zeros_like(W_yh)
    db_y = np.zeros_like(b_y)
    for t in range(T):
        rows = np.flatnonzero(targets[t] != ignore_index)
        y = targets[t, rows]
        o = hs[t] @ W_yh + b_y
        shifted = o - o.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss -= float(log_p[rows, y].astype(np.float64).sum())
        do = np.zeros_like(o)
        do[rows] = np.exp(log_p[rows])
        do[rows, y] -= 1
        do *= scale
        dW_yh += hs[t].T @ do
        db_y += do.sum(axis=0)
        dhs[t] = do @ W_yh.T
    if reduction == "mean":
        return (loss / counted if counted else float("nan")), OutputGrads(dhs, dW_yh, db_y)
    return loss, OutputGrads(dhs, dW_yh, db_y)
