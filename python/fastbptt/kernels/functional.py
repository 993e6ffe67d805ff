"""The fast path: NumPy in, NumPy out, the compiled core in between.

Every function here has a twin of the same name, arguments and result type in :mod:`fastbptt.reference`.
Shapes use T time steps, B batch, D input features, H hidden units, K classes, G gates (LSTM 4, or 3 without
forget gate, GRU 3). Sequences are time-major ``[T, B, D]``; every kernel takes an optional ``lengths [B]`` for
batches of sequences of different lengths. Arrays may be float32 or float64 (one dtype per call);
non-contiguous inputs are copied once; inputs are never modified; results are fresh arrays. The arrays that
backward reads (the cache's, and the ``hs`` a forward returns) are read-only, so that an in-place edit cannot
change a gradient silently.
"""

from __future__ import annotations

import numpy as np

from .. import _core
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
from .sequences import final_states

NO_LENGTHS = np.empty(0, dtype=np.int64)  # what the core takes for "every sequence runs all T steps"


def _core_lengths(lengths: np.ndarray | None) -> np.ndarray:
    return NO_LENGTHS if lengths is None else lengths


def _wavefront_arguments(wavefront) -> dict:
    """The core's keyword arguments of a forward call in a wavefront of layers (none without one)."""
    if wavefront is None:
        return {}
    return {"hs_out": wavefront.output, "input_ready": wavefront.input_ready, "output_ready": wavefront.output_ready}


def _backward_wavefront_arguments(wavefront) -> dict:
    """The core's keyword arguments of a backward call in a wavefront of layers (none without one)."""
    if wavefront is None:
        return {}
    return {"dx_out": wavefront.output, "input_ready": wavefront.input_ready, "output_ready": wavefront.output_ready}


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
    lengths : integer array [B], optional
        Sequence b runs steps ``0 .. lengths[b]-1`` (each length in ``1 .. T``, any order); its outputs after that
        are zero and its final state is ``hs[lengths[b]-1, b]`` (:func:`final_states`). None: all T steps.
    inference : bool
        True: keep only the current state, for a forward that no backward follows (prediction, sampling, a frozen
        encoder). The outputs have the bits of the training forward's; nothing is kept for backward, so memory
        beyond the outputs does not grow with T, and the cache returned is None.
    packed : optional
        The weights packed once for many calls, by the cell's ``pack`` (:class:`fastbptt.Stepper` keeps them): the
        call and its backward skip packing ``W_xh, W_hh``, with the same bits. They must be the weights given here
        (only their shapes are checked). None: packed in the call.
    wavefront : fastbptt.kernels.stack.Wavefront, optional
        The stack driver's: this call is one layer of a wavefront (its steps wait for those of ``x``, written by
        the layer below as it runs, and publish those of ``hs``, written into the array the wavefront holds). The
        same bits. None: none.

    Returns
    -------
    hs : ndarray [T, B, H]
        ``h_1 .. h_T``; ``hs[-1]`` is the final state (without lengths). Read-only: backward reads it (writable,
        the caller's own, with ``inference``).
    cache : RNNCache or None
        What :func:`rnn_backward` needs (None with ``inference``).
    """
    given = x
    x, W_xh, W_hh, b_h, h0, activation = _checks.rnn_args(x, W_xh, W_hh, b_h, h0, activation)
    lengths = _checks.lengths_array(lengths, *x.shape[:2])
    packed = _checks.packed(packed, x.dtype)
    return rnn_forward_checked(
        x,
        W_xh,
        W_hh,
        b_h,
        h0,
        activation,
        lengths,
        _checks.flag("inference", inference),
        packed,
        _checks.checked_wavefront(wavefront, given, x),
    )


def rnn_forward_checked(x, W_xh, W_hh, b_h, h0, activation, lengths, inference, packed, wavefront=None):
    """:func:`rnn_forward` of arguments checked already (as :func:`fastbptt.kernels._checks.rnn_args` returns them,
    lengths an int64 array or None, packed of x's dtype or None): the callers that check their own, cheaper."""
    if inference:
        hs, _ = _core.rnn_forward_inference(
            x, W_xh, W_hh, b_h, h0, activation, _core_lengths(lengths), packed, **_wavefront_arguments(wavefront)
        )
        return hs, None
    hs = _core.rnn_forward(
        x, W_xh, W_hh, b_h, h0, activation, _core_lengths(lengths), packed, **_wavefront_arguments(wavefront)
    )
    cache = RNNCache(x, W_xh, W_hh, h0, hs, activation, lengths, packed)
    return cache.hs, cache


def rnn_backward(
    cache: RNNCache, dhs, *, need_dx: bool = True, need_weight_grads: bool = True, wavefront=None
) -> RNNGrads:
    """Backpropagation through time for :func:`rnn_forward`.

    Parameters
    ----------
    cache : RNNCache
        From :func:`rnn_forward`.
    dhs : ndarray [T, B, H]
        dL/dh_t for every step (zeros where the loss does not use h_t). With lengths, a gradient on a
        sequence's final state belongs to the step ``lengths[b]-1``; steps past its length are ignored.
    need_dx, need_weight_grads : bool
        False: that gradient is not computed and is None in the result (an input that needs no gradient, frozen
        weights); the others have the bits of the full backward.

    Returns
    -------
    RNNGrads
        ``dx [T,B,D], dh0 [B,H], dW_xh [D,H], dW_hh [H,H], db_h [H]``.
    """
    c = _checks.cache_of(RNNCache, cache)
    given = dhs
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    wavefront = _checks.checked_wavefront(wavefront, given, dhs)
    return rnn_backward_checked(c, dhs, *_needs(need_dx, need_weight_grads), wavefront)


def rnn_backward_checked(
    c: RNNCache, dhs: np.ndarray, need_dx: bool, need_weight_grads: bool, wavefront=None
) -> RNNGrads:
    """:func:`rnn_backward` of arguments checked already (a cache of :func:`rnn_forward`, dhs C-contiguous of its
    dtype and shape)."""
    grads = _core.rnn_backward(
        c.x,
        c.W_xh,
        c.W_hh,
        c.h0,
        c.hs,
        dhs,
        c.activation,
        _core_lengths(c.lengths),
        False,
        need_dx,
        need_weight_grads,
        c.packed,
        **_backward_wavefront_arguments(wavefront),
    )
    return RNNGrads(*grads)


def _needs(need_dx, need_weight_grads) -> tuple[bool, bool]:
    return _checks.flag("need_dx", need_dx), _checks.flag("need_weight_grads", need_weight_grads)


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
    checkpoint : None, "sqrt" or int
        None: keep every step's activations for backward (``T*B*(G+2)*H`` numbers). Otherwise keep only the state
        at the start of segments of about sqrt(T) ("sqrt") or the given number of steps (rounded up to a
        multiple of the core's backward block, :func:`fastbptt.kernels.checkpoint.block_steps`), and let backward
        recompute each segment: one more forward pass, memory beyond the outputs independent of T, and the
        bits of full BPTT. Not with ``lengths``.
    lengths : integer array [B], optional
        As for :func:`rnn_forward`.
    inference : bool
        As for :func:`rnn_forward`: nothing kept for backward (the cell states, gates of every step), the cache
        returned is None. Not with ``checkpoint``.
    packed : optional
        As for :func:`rnn_forward` (``W_x, W_h`` packed, and ``W_hr``). Not with ``checkpoint``.
    W_hr : ndarray [H, P], optional
        A projection of the output (torch.nn.LSTM's ``proj_size``, Sak et al. 2014): ``h_t = (o_t * tanh C_t) W_hr``
        is the state the next step multiplies (``W_h`` is then ``[P, G*H]``, ``h0`` ``[B, P]``) and the output
        (``hs [T, B, P]``); the cell state stays ``[B, H]``. Not with ``checkpoint``.
    wavefront : fastbptt.kernels.stack.Wavefront, optional
        As for :func:`rnn_forward`. Not with ``checkpoint``.

    Returns
    -------
    hs : ndarray [T, B, H]
        ``h_1 .. h_T``; ``hs[-1]`` is the final hidden state (without lengths). Read-only: backward reads it
        (writable with ``checkpoint``, where backward recomputes it, and with ``inference``).
    c_T : ndarray [B, H]
        Each sequence's final cell state.
    cache : LSTMCache, CheckpointedLSTMCache or None
        What :func:`lstm_backward` needs (None with ``inference``).
    """
    given = x
    x, W_x, W_h, b, h0, c0, forget_gate, W_hr = _checks.lstm_args(x, W_x, W_h, b, h0, c0, forget_gate, W_hr)
    lengths = _checks.lengths_array(lengths, *x.shape[:2])
    packed = _checks.packed(packed, x.dtype)
    inference = _checks.inference_flag(inference, checkpoint)
    wavefront = _checks.checked_wavefront(wavefront, given, x)
    if checkpoint is not None:
        _checks.checkpoint_alone(lengths=lengths, packed=packed, W_hr=W_hr, wavefront=wavefront)
        segment = _checkpoint.segment_steps(checkpoint, x.shape[0], x.shape[1], W_h.shape[1])
        hs, c_T, h_points, c_points = _checkpoint.lstm_forward(
            _lstm_core_forward, x, W_x, W_h, b, h0, c0, forget_gate, segment
        )
        return hs, c_T, CheckpointedLSTMCache(x, W_x, W_h, b, h_points, c_points, segment, forget_gate)
    return lstm_forward_checked(x, W_x, W_h, b, h0, c0, forget_gate, lengths, inference, packed, W_hr, wavefront)


def lstm_forward_checked(x, W_x, W_h, b, h0, c0, forget_gate, lengths, inference, packed, W_hr=None, wavefront=None):
    """:func:`lstm_forward` without checkpoints, of arguments checked already (as
    :func:`fastbptt.kernels._checks.lstm_args` returns them, lengths an int64 array or None, packed of x's dtype or
    None): the callers that check their own, cheaper."""
    if inference:
        hs, _, c_T = _core.lstm_forward_inference(
            x, W_x, W_h, b, h0, c0, forget_gate, _core_lengths(lengths), packed, W_hr, **_wavefront_arguments(wavefront)
        )
        return hs, c_T, None
    hs, cs, gates = _core.lstm_forward(
        x, W_x, W_h, b, h0, c0, forget_gate, _core_lengths(lengths), packed, W_hr, **_wavefront_arguments(wavefront)
    )
    cache = LSTMCache(x, W_x, W_h, h0, c0, gates, hs, cs, forget_gate, lengths, packed, W_hr)
    return cache.hs, (cs[-1].copy() if lengths is None else final_states(cs, lengths)), cache


def _lstm_core_forward(x, W_x, W_h, b, h0, c0, forget_gate):
    return _core.lstm_forward(x, W_x, W_h, b, h0, c0, forget_gate, NO_LENGTHS)


def lstm_backward(
    cache: LSTMCache | CheckpointedLSTMCache,
    dhs,
    dc_T=None,
    *,
    need_dx: bool = True,
    need_weight_grads: bool = True,
    wavefront=None,
) -> LSTMGrads:
    """Backpropagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    cache : LSTMCache or CheckpointedLSTMCache
        From :func:`lstm_forward`.
    dhs : ndarray [T, B, H]
        dL/dh_t for every step (with lengths, as for :func:`rnn_backward`); ``[T, B, P]`` with a projection.
    dc_T : ndarray [B, H], optional
        dL/dC_T on each sequence's final cell state (when it is carried on and used); zeros when omitted.
    need_dx, need_weight_grads : bool
        As for :func:`rnn_backward`.

    Returns
    -------
    LSTMGrads or ProjectedLSTMGrads
        ``dx [T,B,D], dh0 [B,H], dc0 [B,H], dW_x [D,G*H], dW_h [H,G*H], db [G*H]``; with a projection
        ``ProjectedLSTMGrads``: ``dh0 [B,P]``, ``dW_h [P,G*H]`` and ``dW_hr [H,P]`` last.
    """
    c = _checks.cache_of((LSTMCache, CheckpointedLSTMCache), cache)
    dtype, shape = c.x.dtype, (*c.x.shape[:2], c.W_h.shape[0])  # [T, B, P]: W_h is [P, G*H]
    given = dhs
    dhs = _checks.upstream("dhs", dhs, dtype, shape, "[T, B, H]")
    wavefront = _checks.checked_wavefront(wavefront, given, dhs)
    if dc_T is None:
        dc_T = np.zeros_like(c.c0)
    dc_T = _checks.upstream("dc_T", dc_T, dtype, c.c0.shape, "[B, H]")
    needs = _needs(need_dx, need_weight_grads)
    if isinstance(c, CheckpointedLSTMCache):
        _checks.checkpoint_alone(wavefront=wavefront)
        return LSTMGrads(*_checkpoint.lstm_backward(_lstm_core_forward, _core.lstm_backward_into, c, dhs, dc_T, *needs))
    return lstm_backward_checked(c, dhs, dc_T, *needs, wavefront)


def lstm_backward_checked(
    c: LSTMCache, dhs: np.ndarray, dc_T: np.ndarray, need_dx: bool, need_weight_grads: bool, wavefront=None
):
    """:func:`lstm_backward` of arguments checked already (a cache of :func:`lstm_forward` without checkpoints;
    dhs and dc_T C-contiguous of its dtype and shapes)."""
    grads = _core.lstm_backward(
        c.x,
        c.W_x,
        c.W_h,
        c.h0,
        c.c0,
        c.gates,
        c.hs,
        c.cs,
        dhs,
        dc_T,
        c.forget_gate,
        _core_lengths(c.lengths),
        False,
        need_dx,
        need_weight_grads,
        c.packed,
        c.W_hr,
        **_backward_wavefront_arguments(wavefront),
    )
    return (LSTMGrads if c.W_hr is None else ProjectedLSTMGrads)(*grads)


def gru_forward(
    x, W_x, W_h, b, b_hn, h0=None, *, lengths=None, inference: bool = False, packed=None, wavefront=None
) -> tuple[np.ndarray, GRUCache | None]:
    """Runs the GRU (PyTorch's cell) over a batch of sequences.

    ``r = sigmoid(x_t W_xr + h_{t-1} W_hr + b_r)``, ``z = sigmoid(x_t W_xz + h_{t-1} W_hz + b_z)``,
    ``n = tanh(x_t W_xn + b_n + r * (h_{t-1} W_hn + b_hn))``, ``h_t = (1 - z) * n + z * h_{t-1}``.

    Parameters
    ----------
    x : ndarray [T, B, D]
    W_x : ndarray [D, 3H]
        Column blocks r, z, n.
    W_h : ndarray [H, 3H]
    b : ndarray [3H]
        ``b_r, b_z`` (torch's ``b_ir + b_hr``, ``b_iz + b_hz``) and ``b_n`` (torch's ``b_in``).
    b_hn : ndarray [H]
        The recurrent bias of n (torch's ``b_hn``), kept apart because r multiplies it.
    h0 : ndarray [B, H], optional
        Initial state; zeros when omitted.
    lengths : integer array [B], optional
        As for :func:`rnn_forward`.
    inference : bool
        As for :func:`rnn_forward`.
    packed : optional
        As for :func:`rnn_forward` (``W_x, W_h`` packed).
    wavefront : fastbptt.kernels.stack.Wavefront, optional
        As for :func:`rnn_forward`.

    Returns
    -------
    hs : ndarray [T, B, H]
        ``h_1 .. h_T``; ``hs[-1]`` is the final state (without lengths). Read-only: backward reads it (writable with
        ``inference``).
    cache : GRUCache or None
        What :func:`gru_backward` needs (None with ``inference``).
    """
    given = x
    x, W_x, W_h, b, b_hn, h0 = _checks.gru_args(x, W_x, W_h, b, b_hn, h0)
    lengths = _checks.lengths_array(lengths, *x.shape[:2])
    packed = _checks.packed(packed, x.dtype)
    inference = _checks.flag("inference", inference)
    return gru_forward_checked(
        x, W_x, W_h, b, b_hn, h0, lengths, inference, packed, _checks.checked_wavefront(wavefront, given, x)
    )


def gru_forward_checked(x, W_x, W_h, b, b_hn, h0, lengths, inference, packed, wavefront=None):
    """:func:`gru_forward` of arguments checked already (as :func:`fastbptt.kernels._checks.gru_args` returns them,
    lengths an int64 array or None, packed of x's dtype or None): the callers that check their own, cheaper."""
    if inference:
        hs, _ = _core.gru_forward_inference(
            x, W_x, W_h, b, b_hn, h0, _core_lengths(lengths), packed, **_wavefront_arguments(wavefront)
        )
        return hs, None
    hs, gates, hn = _core.gru_forward(
        x, W_x, W_h, b, b_hn, h0, _core_lengths(lengths), packed, **_wavefront_arguments(wavefront)
    )
    cache = GRUCache(x, W_x, W_h, h0, gates, hn, hs, lengths, packed)
    return cache.hs, cache


def gru_backward(
    cache: GRUCache, dhs, *, need_dx: bool = True, need_weight_grads: bool = True, wavefront=None
) -> GRUGrads:
    """Backpropagation through time for :func:`gru_forward`.

    Parameters
    ----------
    cache : GRUCache
        From :func:`gru_forward`.
    dhs : ndarray [T, B, H]
        dL/dh_t for every step (with lengths, as for :func:`rnn_backward`).
    need_dx, need_weight_grads : bool
        As for :func:`rnn_backward`.

    Returns
    -------
    GRUGrads
        ``dx [T,B,D], dh0 [B,H], dW_x [D,3H], dW_h [H,3H], db [3H], db_hn [H]``.
    """
    c = _checks.cache_of(GRUCache, cache)
    given = dhs
    dhs = _checks.upstream("dhs", dhs, c.hs.dtype, c.hs.shape, "[T, B, H]")
    wavefront = _checks.checked_wavefront(wavefront, given, dhs)
    return gru_backward_checked(c, dhs, *_needs(need_dx, need_weight_grads), wavefront)


def gru_backward_checked(
    c: GRUCache, dhs: np.ndarray, need_dx: bool, need_weight_grads: bool, wavefront=None
) -> GRUGrads:
    """:func:`gru_backward` of arguments checked already (a cache of :func:`gru_forward`, dhs C-contiguous of its
    dtype and shape)."""
    grads = _core.gru_backward(
        c.x,
        c.W_x,
        c.W_h,
        c.h0,
        c.gates,
        c.hn,
        c.hs,
        dhs,
        _core_lengths(c.lengths),
        False,
        need_dx,
        need_weight_grads,
        c.packed,
        **_backward_wavefront_arguments(wavefront),
    )
    return GRUGrads(*grads)


def layer_norm_lstm_forward(
    x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0=None, c0=None, *, lengths=None, inference: bool = False
) -> tuple[np.ndarray, np.ndarray, LayerNormLSTMCache | None]:
    """Runs the layer-normalised LSTM (Ba, Kiros & Hinton 2016, haste's LayerNormLSTM) over a batch of sequences.

    With ``LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)`` over a row's features (biased variance):
    ``z_t = LN(x_t W_x) * gamma_ih + LN(h_{t-1} W_h) * gamma_hh + b`` (all 4H pre-activations, blocks i, f, g, o),
    ``C_t = sigmoid(z_f) * C_{t-1} + sigmoid(z_i) * tanh(z_g)``,
    ``h_t = sigmoid(z_o) * tanh(LN(C_t) * gamma_c + beta_c)`` (over H).

    Parameters
    ----------
    x : ndarray [T, B, D]
    W_x : ndarray [D, 4H]
    W_h : ndarray [H, 4H]
    b, gamma_ih, gamma_hh : ndarray [4H]
    gamma_c, beta_c : ndarray [H]
    h0, c0 : ndarray [B, H], optional
        Zeros when omitted.
    lengths, inference :
        As for :func:`rnn_forward`.

    Returns
    -------
    hs : ndarray [T, B, H]
        Read-only (backward reads it), writable with ``inference``.
    c_T : ndarray [B, H]
    cache : LayerNormLSTMCache or None
    """
    x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0 = _checks.layer_norm_lstm_args(
        x, W_x, W_h, b, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0
    )
    lengths = _checks.lengths_array(lengths, *x.shape[:2])
    vectors = (gamma_ih, gamma_hh, gamma_c, beta_c)
    if _checks.flag("inference", inference):
        hs, _, c_T = _core.layer_norm_lstm_forward(x, W_x, W_h, b, *vectors, h0, c0, _core_lengths(lengths), True)
        return hs, c_T, None
    hs, cs, *kept = _core.layer_norm_lstm_forward(x, W_x, W_h, b, *vectors, h0, c0, _core_lengths(lengths), False)
    gates, x_hat, h_hat, c_hat, inv_std = kept
    cache = LayerNormLSTMCache(x, W_x, W_h, *vectors, h0, c0, gates, x_hat, h_hat, cs, c_hat, hs, inv_std, lengths)
    return cache.hs, final_states(cs, lengths), cache


def layer_norm_lstm_backward(
    cache: LayerNormLSTMCache, dhs, dc_T=None, *, need_dx: bool = True, need_weight_grads: bool = True
) -> LayerNormLSTMGrads:
    """Backpropagation through time for :func:`layer_norm_lstm_forward`.

    Returns
    -------
    LayerNormLSTMGrads
        ``dx, dh0, dc0, dW_x, dW_h, db, dgamma_ih, dgamma_hh, dgamma_c, dbeta_c`` (``dhs``, ``dc_T``, ``need_dx``,
        ``need_weight_grads`` as for :func:`lstm_backward`).
    """
    c = _checks.cache_of(LayerNormLSTMCache, cache)
    dhs = _checks.upstream("dhs", dhs, c.x.dtype, (*c.x.shape[:2], c.W_h.shape[0]), "[T, B, H]")
    dc_T = _checks.upstream("dc_T", np.zeros_like(c.c0) if dc_T is None else dc_T, c.x.dtype, c.c0.shape, "[B, H]")
    grads = _core.layer_norm_lstm_backward(
        c.x,
        c.W_x,
        c.W_h,
        c.gamma_ih,
        c.gamma_hh,
        c.gamma_c,
        c.beta_c,
        c.h0,
        c.c0,
        c.gates,
        c.x_hat,
        c.h_hat,
        c.cs,
        c.c_hat,
        c.hs,
        c.inv_std,
        dhs,
        dc_T,
        _core_lengths(c.lengths),
        False,
        *_needs(need_dx, need_weight_grads),
    )
    return LayerNormLSTMGrads(*grads)


def softmax_cross_entropy(
    hs, W_yh, b_y, targets, *, reduction: str = "sum", ignore_index: int = -100
) -> tuple[float, OutputGrads]:
    """The output layer and loss: ``o_t = h_t W_yh + b_y``, softmax, cross-entropy.

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
        "sum" over all steps and sequences, or "mean" over the counted terms (NaN if none, as PyTorch).
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
