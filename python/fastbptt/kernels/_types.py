"""Result and cache types shared by the fast path and the reference, so either can consume the other's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``, whose memory's owner is made read-only as well.

    NumPy lets a view's WRITEABLE flag be set back to True only while its base is writeable, so an edit through
    the view is refused, and so is ``view.flags.writeable = True``.
    """
    array.setflags(write=False)
    return array.view()  # a view of a read-only array is read-only


class _ComputedArraysReadOnly:
    """Makes the arrays that a forward computed (the fields named in ``computed``) read-only when a cache is built.

    Backward reads them, and the forward functions return some of them (``hs``): an edit of a returned array
    between forward and backward would change the gradients silently, so it is refused instead. The inputs a
    cache refers to stay the caller's arrays, writeable as they were.
    """

    computed: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for name in self.computed:
            object.__setattr__(self, name, read_only(getattr(self, name)))


class RNNGrads(NamedTuple):
    """Gradients of the loss with respect to the RNN's inputs and parameters (shapes as the inputs); dx and the
    weights' are None when the backward was asked not to compute them (``need_dx``, ``need_weight_grads``)."""

    dx: np.ndarray | None  #: [T, B, D]
    dh0: np.ndarray  #: [B, H]
    dW_xh: np.ndarray | None  #: [D, H]
    dW_hh: np.ndarray | None  #: [H, H]
    db_h: np.ndarray | None  #: [H]


class LSTMGrads(NamedTuple):
    """Gradients of the loss with respect to the LSTM's inputs, initial states and parameters (None as for
    :class:`RNNGrads`)."""

    dx: np.ndarray | None  #: [T, B, D]
    dh0: np.ndarray  #: [B, H]
    dc0: np.ndarray  #: [B, H]
    dW_x: np.ndarray | None  #: [D, G*H]
    dW_h: np.ndarray | None  #: [H, G*H]
    db: np.ndarray | None  #: [G*H]


class ProjectedLSTMGrads(NamedTuple):
    """:class:`LSTMGrads` of an LSTM with a projection ``W_hr [H, P]``, and its gradient."""

    dx: np.ndarray | None  #: [T, B, D]
    dh0: np.ndarray  #: [B, P]
    dc0: np.ndarray  #: [B, H]
    dW_x: np.ndarray | None  #: [D, G*H]
    dW_h: np.ndarray | None  #: [P, G*H]
    db: np.ndarray | None  #: [G*H]
    dW_hr: np.ndarray | None  #: [H, P]


class GRUGrads(NamedTuple):
    """Gradients of the loss with respect to the GRU's inputs, initial state and parameters (None as for
    :class:`RNNGrads`)."""

    dx: np.ndarray | None  #: [T, B, D]
    dh0: np.ndarray  #: [B, H]
    dW_x: np.ndarray | None  #: [D, 3H]
    dW_h: np.ndarray | None  #: [H, 3H]
    db: np.ndarray | None  #: [3H]
    db_hn: np.ndarray | None  #: [H]


class OutputGrads(NamedTuple):
    """Gradients of the softmax / cross-entropy loss with respect to the hidden states and the output layer."""

    dhs: np.ndarray  #: [T, B, H]
    dW_yh: np.ndarray  #: [H, K]
    db_y: np.ndarray  #: [K]


@dataclass(frozen=True)
class RNNCache(_ComputedArraysReadOnly):
    """What ``rnn_backward`` needs from ``rnn_forward``.

    It holds references to the (validated) inputs, not copies: do not modify them between forward and backward.
    The arrays the forward computed are read-only (see :func:`read_only`).
    """

    computed: ClassVar[tuple[str, ...]] = ("hs",)

    x: np.ndarray  #: [T, B, D]
    W_xh: np.ndarray  #: [D, H]
    W_hh: np.ndarray  #: [H, H]
    h0: np.ndarray  #: [B, H]
    hs: np.ndarray  #: [T, B, H], h_1 .. h_T (zero past each sequence's length)
    activation: str
    lengths: np.ndarray | None = None  #: [B] int64, or None when every sequence runs all T steps
    packed: object = None  #: the weights packed once (a :class:`fastbptt.Stepper`'s), for backward; None: packed there


@dataclass(frozen=True)
class LSTMCache(_ComputedArraysReadOnly):
    """What ``lstm_backward`` needs from ``lstm_forward``; inputs are held by reference, as in :class:`RNNCache`.
    With a projection ``W_hr [H, P]``, ``W_h`` is ``[P, G*H]`` and ``h0``, ``hs`` have P features."""

    computed: ClassVar[tuple[str, ...]] = ("gates", "hs", "cs")

    x: np.ndarray  #: [T, B, D]
    W_x: np.ndarray  #: [D, G*H]
    W_h: np.ndarray  #: [H, G*H]
    h0: np.ndarray  #: [B, H]
    c0: np.ndarray  #: [B, H]
    gates: np.ndarray  #: [T, B, G*H], activated gates i, f, g, o (i, g, o without forget gate)
    hs: np.ndarray  #: [T, B, H], h_1 .. h_T (zero past each sequence's length, as cs and gates)
    cs: np.ndarray  #: [T, B, H], C_1 .. C_T
    forget_gate: bool
    lengths: np.ndarray | None = None  #: [B] int64, or None when every sequence runs all T steps
    packed: object = None  #: as for :class:`RNNCache`
    W_hr: np.ndarray | None = None  #: [H, P], the projection (hs is then [T, B, P]); None: none


@dataclass(frozen=True)
class CheckpointedLSTMCache(_ComputedArraysReadOnly):
    """What ``lstm_backward`` needs from ``lstm_forward(..., checkpoint=...)``: the inputs and the states (h, C) at
    the start of every segment, not the activations of every step; backward recomputes each segment's forward
    from its checkpoint (last segment first) and gives the bits of full BPTT."""

    computed: ClassVar[tuple[str, ...]] = ("h_checkpoints", "c_checkpoints")

    x: np.ndarray  #: [T, B, D]
    W_x: np.ndarray  #: [D, G*H]
    W_h: np.ndarray  #: [H, G*H]
    b: np.ndarray  #: [G*H]
    h_checkpoints: np.ndarray  #: [segments, B, H], h before each segment's first step (h0 first)
    c_checkpoints: np.ndarray  #: [segments, B, H], likewise C
    segment: int  #: steps per segment (the last one may be shorter)
    forget_gate: bool

    @property
    def h0(self) -> np.ndarray:
        return self.h_checkpoints[0]

    @property
    def c0(self) -> np.ndarray:
        return self.c_checkpoints[0]


@dataclass(frozen=True)
class GRUCache(_ComputedArraysReadOnly):
    """What ``gru_backward`` needs from ``gru_forward``; inputs are held by reference, as in :class:`RNNCache`."""

    computed: ClassVar[tuple[str, ...]] = ("gates", "hn", "hs")

    x: np.ndarray  #: [T, B, D]
    W_x: np.ndarray  #: [D, 3H]
    W_h: np.ndarray  #: [H, 3H]
    h0: np.ndarray  #: [B, H]
    gates: np.ndarray  #: [T, B, 3H], activated gates r, z, n (zero past each sequence's length, as hn and hs)
    hn: np.ndarray  #: [T, B, H], h_{t-1} W_hn + b_hn of every step
    hs: np.ndarray  #: [T, B, H], h_1 .. h_T
    lengths: np.ndarray | None = None  #: [B] int64, or None when every sequence runs all T steps
    packed: object = None  #: as for :class:`RNNCache`


class LayerNormLSTMGrads(NamedTuple):
    """Gradients of the loss with respect to the layer-normalised LSTM's inputs, initial states and parameters (None
    as for :class:`RNNGrads`)."""

    dx: np.ndarray | None  #: [T, B, D]
    dh0: np.ndarray  #: [B, H]
    dc0: np.ndarray  #: [B, H]
    dW_x: np.ndarray | None  #: [D, 4H]
    dW_h: np.ndarray | None  #: [H, 4H]
    db: np.ndarray | None  #: [4H]
    dgamma_ih: np.ndarray | None  #: [4H]
    dgamma_hh: np.ndarray | None  #: [4H]
    dgamma_c: np.ndarray | None  #: [H]
    dbeta_c: np.ndarray | None  #: [H]


@dataclass(frozen=True)
class LayerNormLSTMCache(_ComputedArraysReadOnly):
    """What ``layer_norm_lstm_backward`` needs from ``layer_norm_lstm_forward``; inputs held by reference, as in
    :class:`RNNCache`."""

    computed: ClassVar[tuple[str, ...]] = ("gates", "x_hat", "h_hat", "cs", "c_hat", "hs", "inv_std")

    x: np.ndarray  #: [T, B, D]
    W_x: np.ndarray  #: [D, 4H]
    W_h: np.ndarray  #: [H, 4H]
    gamma_ih: np.ndarray  #: [4H]
    gamma_hh: np.ndarray  #: [4H]
    gamma_c: np.ndarray  #: [H]
    beta_c: np.ndarray  #: [H]
    h0: np.ndarray  #: [B, H]
    c0: np.ndarray  #: [B, H]
    gates: np.ndarray  #: [T, B, 4H], activated gates i, f, g, o
    x_hat: np.ndarray  #: [T, B, 4H], LN(x_t W_x) before gamma_ih
    h_hat: np.ndarray  #: [T, B, 4H], LN(h_{t-1} W_h) before gamma_hh
    cs: np.ndarray  #: [T, B, H], C_1 .. C_T
    c_hat: np.ndarray  #: [T, B, H], LN(C_t) before gamma_c
    hs: np.ndarray  #: [T, B, H], h_1 .. h_T
    inv_std: np.ndarray  #: [T, B, 3], 1 / sqrt(var + 1e-5) of the three normalisations
    lengths: np.ndarray | None = None  #: [B] int64, or None
