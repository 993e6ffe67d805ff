"""How much memory one training call (forward + backward) of a cell allocates, as a formula."""

from __future__ import annotations

import numpy as np

from .. import _core
from . import _checks, cells
from .checkpoint import block_steps


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
        Or any registered cell (:mod:`fastbptt.kernels.cells`).
    T, B, D, H : int
        Time steps, batch, input features, hidden units (each >= 1 and within int64, as every size of the core, and
        so are the columns of backward's ``dZ``, e.g. 4H for the LSTM; ValueError naming the size otherwise). The
        result is a Python int, exact past 2^63 bytes.
    dtype : float32 or float64
    forget_gate : bool
        For a cell with that option (the LSTM): the modern cell (4 gates) or the original one (3 gates).
    checkpoint : None, "sqrt" or int
        For a cell with a checkpointed mode (the LSTM): as for :func:`fastbptt.lstm_forward`.
    """
    spec_class = cells.cell_class(_checks.choice("cell", cell, cells.names()))
    T, B, D, H = (_checks.size(name, value) for name, value in (("T", T), ("B", B), ("D", D), ("H", H)))
    itemsize = _checks.float_dtype("dtype", dtype).itemsize
    if checkpoint is not None and not spec_class.checkpointing:
        raise ValueError(f"checkpoint: only the LSTM has a checkpointed mode, got cell={cell!r}")
    _checks.flag("forget_gate", forget_gate)
    options = {"forget_gate": forget_gate} if "forget_gate" in spec_class.option_defaults else {}
    spec = spec_class("reference", **options)
    dz_columns = spec.dz_columns(H)
    if dz_columns > _checks.INT64_MAX:  # a side of backward's dZ: an int64 in the core, as every size
        raise ValueError(f"H: the {dz_columns // H} * H columns of the {cell}'s dZ must fit in int64, got H = {H}")
    block_rows = min(T, block_steps(B, dz_columns)) * B
    scalars = spec.training_scalars(T, B, D, H, block_rows, checkpoint)
    return (scalars + _packed_weights(spec, D, H, np.dtype(dtype))) * itemsize


def _packed_weights(spec: cells.Cell, D: int, H: int, dtype: np.dtype) -> int:
    """Scalars of the weights the core packs for one forward and one backward, as the core sizes them."""
    try:
        return sum(_core.packed_weights_scalars(*shape, dtype) for shape in spec.packed_weights(D, H))
    except (OverflowError, TypeError):  # beyond the core's 64-bit sizes, where no call can run
        raise ValueError(
            f"H: with D = {D} and H = {H} the packed weights are more than the core's 64-bit sizes count"
        ) from None
