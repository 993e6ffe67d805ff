"""The fast path: NumPy in, NumPy out, the compiled core in between.

Every function here has a twin of the same name, arguments and result type in :mod:`fastbptt.reference`.
Shapes use T time steps, B batch, D input features, H hidden units, K classes, G gates (LSTM 4, or 3 without
forget gate). Sequences are time-major ``[T, B, D]``. Arrays may be float32 or float64 (one dtype per call);
non-contiguous inputs are copied once; inputs are never modified; results are fresh arrays.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from ._types import LSTMCache, LSTMGrads, OutputGrads, RNNCache, RNNGrads


def rnn_forward(x, W_xh, W_hh, b_h, h0=None, *, activation: str = "tanh") -> tuple[np.ndarray, RNNCache]:
    """Runs the plain RNN ``h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h)`` over a batch of sequences.

    Parameters
    ----------
    x : ndarray [T, B, D]
        Inputs, time-major.
    W_xh : ndarray [D, H]
    W_hh : ndarray [H, H]
    b_h : ndarray [H]
    h0 : ndarray [B, H], optional
        State before the first step; zeros when omitted.
    activation : {"tanh", "relu", "sigmoid"}
        The nonlinearity phi.

    Returns
    -------
    hs : ndarray [T, B, H]
        ``h_1 .. h_T``; ``hs[-1]`` is the final state.
    cache : RNNCache
        What :func:`rnn_backward` needs.
    """
    x, W_xh, W_hh, b_h, h0, activation = _checks.rnn_args(x, W_xh, W_hh, b_h, h0, activation)
    hs = _core.rnn_forward(x, W_xh, W_hh, b_h, h0, activation)
    return hs, RNNCache(x, W_xh, W_hh, h0, hs, activation)


def rnn_backward(cache: RNNCache, dhs) -> RNNGrads:
    """Backpropagation through time for :func:`rnn_forward`.

    Parameters
    ----------
    cache : RNNCache
        From :func:`rnn_forward`.
    dhs : ndarray [T, B, H]
        dL/dh_t for every step (zeros where the loss does not use h_t).

    Returns
    -------
    RNNGrads
        ``dx [T,B,D], dh0 [B,H], dW_xh [D,H], dW_hh [H,H], db_h [H]``.
    """
    c = _checks.cache_of(RNNCache, cache)
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    return RNNGrads(*_core.rnn_backward(c.x, c.W_xh, c.W_hh, c.h0, c.hs, dhs, c.activation))


def lstm_forward(
    x, W_x, W_h, b, h0=None, c0=None, *, forget_gate: bool = True
) -> tuple[np.ndarray, np.ndarray, LSTMCache]:
    """Runs the LSTM over a batch of sequences.

    ``z_t = x_t W_x + h_{t-1} W_h + b`` split into gate blocks i, f, g, o (PyTorch's order);
    ``C_t = f_t * C_{t-1} + i_t * g_t`` and ``h_t = o_t * tanh(C_t)`` with sigmoid i, f, o and tanh g.
    With ``forget_gate=False`` it is the original LSTM: blocks i, g, o and ``C_t = C_{t-1} + i_t * g_t``.

    Parameters
    ----------
    x : ndarray [T, B, D]
    W_x : ndarray [D, G*H]
        G = 4 with forget gate, 3 without.
    W_h : ndarray [H, G*H]
    b : ndarray [G*H]
    h0, c0 : ndarray [B, H], optional
        Initial hidden and cell states; zeros when omitted.
    forget_gate : bool
        The modern cell (True) or the original one without forget gate (False).

    Returns
    -------
    hs : ndarray [T, B, H]
        ``h_1 .. h_T``; ``hs[-1]`` is the final hidden state.
    c_T : ndarray [B, H]
        The final cell state.
    cache : LSTMCache
        What :func:`lstm_backward` needs.
    """
    x, W_x, W_h, b, h0, c0, forget_gate = _checks.lstm_args(x, W_x, W_h, b, h0, c0, forget_gate)
    hs, cs, gates = _core.lstm_forward(x, W_x, W_h, b, h0, c0, forget_gate)
    return hs, cs[-1].copy(), LSTMCache(x, W_x, W_h, h0, c0, gates, hs, cs, forget_gate)


def lstm_backward(cache: LSTMCache, dhs, dc_T=None) -> LSTMGrads:
    """Backpropagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    cache : LSTMCache
        From :func:`lstm_forward`.
    dhs : ndarray [T, B, H]
        dL/dh_t for every step.
    dc_T : ndarray [B, H], optional
        dL/dC_T on the final cell state (when it is carried on and used); zeros when omitted.

    Returns
    -------
    LSTMGrads
        ``dx [T,B,D], dh0 [B,H], dc0 [B,H], dW_x [D,G*H], dW_h [H,G*H], db [G*H]``.
    """
    c = _checks.cache_of(LSTMCache, cache)
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    if dc_T is None:
        dc_T = np.zeros_like(c.c0)
    dc_T = _checks.upstream("dc_T", dc_T, c.hs.dtype, c.c0.shape, "[B, H]")
    grads = _core.lstm_backward(c.x, c.W_x, c.W_h, c.h0, c.c0, c.gates, c.hs, c.cs, dhs, dc_T, c.forget_gate)
    return LSTMGrads(*grads)


def softmax_cross_entropy(
    hs, W_yh, b_y, targets, *, reduction: str = "sum", ignore_index: int = -100
) -> tuple[float, OutputGrads]:
    """The spec's output layer and loss: ``o_t = h_t W_yh + b_y``, softmax, cross-entropy.

    ``L = sum_t sum_b -log softmax(o_t)[b, y_tb]``, computed with a log-sum-exp that cannot overflow.

    Parameters
    ----------
    hs : ndarray [T, B, H]
    W_yh : ndarray [H, K]
    b_y : ndarray [K]
    targets : integer ndarray [T, B]
        Class indices in ``0 .. K-1``; entries equal to ``ignore_index`` add no loss and no gradient (for steps
        without a target, e.g. all but the last in a sequence-classification task).
    reduction : {"sum", "mean"}
        "sum" over all steps and sequences (the spec), or "mean" over the counted terms (NaN if none, as PyTorch).
    ignore_index : int
        A value outside ``0 .. K-1`` that marks steps without a target; -100 as in PyTorch.

    Returns
    -------
    loss : float
    grads : OutputGrads
        ``dhs [T,B,H], dW_yh [H,K], db_y [K]``.
    """
    hs, W_yh, b_y, targets, reduction = _checks.output_args(hs, W_yh, b_y, targets, reduction, ignore_index)
    loss, dhs, dW_yh, db_y = _core.softmax_cross_entropy(hs, W_yh, b_y, targets, int(ignore_index), reduction)
    return loss, OutputGrads(dhs, dW_yh, db_y)
