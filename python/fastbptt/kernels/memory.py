"""How much memory one training call (forward + backward) of a cell allocates, as a formula."""

from __future__ import annotations

import numpy as np

from .. import _core
from . import _checks
from .checkpoint import block_steps, segment_steps

CELLS = ("rnn", "lstm", "gru")


def workspace_bytes(
    cell: str, T: int, B: int, D: int, H: int, dtype=np.float32, *, forget_gate: bool = True, checkpoint=None
) -> int:
    """Bytes that one forward + backward of ``cell`` allocates beyond its inputs.

    Counted: what forward keeps for backward (RNN: ``hs [T,B,H]``; LSTM: ``gates [T,B,G*H]``, ``hs`` and ``cs``
    ``[T,B,H]``, i.e. ``T*B*(G*H + 2H)``; GRU: ``gates [T,B,3H]``, ``hn`` and ``hs [T,B,H]``; a checkpointed LSTM:
    ``hs``, the segment-start states and one segment's activations), the backward scratch (one block of time steps
    of ``dZ`` and of the previous states, see :func:`fastbptt.kernels.checkpoint.block_steps`, and a few ``[B,H]``
    buffers), default zero states, the gradients returned (``dx [T,B,D]``, ``dh0``, ``dc0``, ``dW_x``, ``dW_h``,
    ``db``), and the copies of the weights packed for the time loop (``W_x``, ``W_h`` in forward, ``W_hᵀ`` in
    backward). The backward's block scratch stays with the calling thread for its next call (up to 16 MiB), so
    calls after the first allocate that much less. Not counted: Eigen's matrix-product packing buffers, which are
    bounded by its cache-blocking sizes and do not grow with T.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    T, B, D, H : int
        Time steps, batch, input features, hidden units (each >= 1).
    dtype : float32 or float64
    forget_gate : bool
        For ``cell="lstm"``: the modern cell (4 gates) or the original one (3 gates).
    checkpoint : None, "sqrt" or int
        For ``cell="lstm"``: as for :func:`fastbptt.lstm_forward`.
    """
    cell = _checks.choice("cell", cell, CELLS)
    T, B, D, H = (_checks.positive_int(name, value) for name, value in (("T", T), ("B", B), ("D", D), ("H", H)))
    itemsize = _checks.float_dtype("dtype", dtype).itemsize
    if checkpoint is not None and cell != "lstm":
        raise ValueError(f"checkpoint: only the LSTM has a checkpointed mode, got cell={cell!r}")
    _checks.flag("forget_gate", forget_gate)
    GH = {"rnn": H, "lstm": (4 if forget_gate else 3) * H, "gru": 3 * H}[cell]
    dZ_columns = GH + H if cell == "gru" else GH
    block_rows = min(T, block_steps(B, dZ_columns)) * B
    scratch = block_rows * (dZ_columns + H)  # dZ and the previous states of one block
    if cell == "rnn":
        saved = T * B * H  # hs
        states = B * H  # default h0
        grads = T * B * D + B * H + D * H + H * H + H
    elif cell == "gru":
        saved = T * B * (GH + 2 * H)  # gates, hn, hs
        scratch += B * H  # the direct part of dh
        states = B * H  # default h0
        grads = T * B * D + B * H + D * GH + H * GH + GH + H
    else:
        if checkpoint is None:
            saved = T * B * (GH + 2 * H)  # gates, hs, cs
        else:
            segment = segment_steps(checkpoint, T, B, GH)
            # hs, the (h, C) checkpoints, and one segment's gates, hs, cs, upstream copy and dx
            saved = T * B * H + 2 * -(-T // segment) * B * H + segment * B * (GH + 3 * H + D)
        scratch += B * H  # dh
        states = 4 * B * H  # default h0, c0, dc_T and the returned copy of c_T
        grads = T * B * D + 2 * B * H + D * GH + H * GH + GH
    packed = _packed_weights(cell, D, H, GH // H, np.dtype(dtype))
    return (saved + scratch + states + grads + packed) * itemsize


def _packed_weights(cell: str, D: int, H: int, G: int, dtype: np.dtype) -> int:
    """Scalars of the weights the core packs for one forward and one backward, as the core sizes them: the forward
    packs [W_x; W_h] stacked (the GRU W_x and W_h apart), the backward W_hᵀ."""

    def packed(rows: int, columns: int, groups: int) -> int:
        try:
            return _core.packed_weights_scalars(rows, columns, groups, dtype)
        except (OverflowError, TypeError):  # beyond the core's 64-bit sizes, where no call can run
            raise ValueError(
                f"H: with D = {D} and H = {H} the packed weights are more than the core's 64-bit sizes count"
            ) from None

    if cell == "gru":
        forward = packed(D, G * H, 1) + packed(H, G * H, G)
    else:
        forward = packed(D + H, G * H, G)
    return forward + packed(G * H, H, 1)
