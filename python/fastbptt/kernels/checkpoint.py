"""Checkpointed BPTT for the LSTM: memory that grows with T only by the outputs, at the cost of one more forward.

The forward pass keeps the state (h, C) at the start of every segment of ``segment`` steps instead of the
activations of every step; backward recomputes one segment at a time from its checkpoint, last segment first, and
passes dL/dh and dL/dC on to the segment before. Segments start at multiples of the core's backward block
(:func:`block_steps`), so the weight gradients are accumulated with the very operations of one backward call:
the gradients are bit-identical to the full-store mode, in the fast path.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _core
from . import _checks


def block_steps(B: int, gate_columns: int) -> int:
    """Time steps per block of the core's backward pass (``fastbptt::backward_block_steps`` in C++): at least
    256 rows per block, and a block of dZ of about 2^18 numbers; 1 for any sizes beyond those. The reference takes
    this fact from the core too, so that its segments, and so its caches, are the fast path's. ValueError naming
    the argument for a size beyond int64."""
    B, gate_columns = _checks.int64("B", B), _checks.int64("gate_columns", gate_columns)
    return _core.backward_block_steps(max(1, B), max(1, gate_columns))


def segment_steps(checkpoint, T: int, B: int, gate_columns: int) -> int:
    """Steps per segment for ``checkpoint``: "sqrt" (about sqrt(T)) or a positive int, rounded up to a multiple
    of :func:`block_steps` and at most T rounded up likewise."""
    block = block_steps(B, gate_columns)
    if isinstance(checkpoint, str):
        if checkpoint != "sqrt":
            raise ValueError(f"checkpoint: expected None, 'sqrt' or a number of steps, got {checkpoint!r}")
        wanted = math.isqrt(T)
    else:
        wanted = _checks.positive_int("checkpoint", checkpoint)
    blocks = max(1, -(-min(wanted, T) // block))
    return blocks * block


def segments(T: int, segment: int) -> list[tuple[int, int]]:
    """(start, stop) of every segment, first to last."""
    return [(start, min(start + segment, T)) for start in range(0, T, segment)]


def lstm_forward(core_forward, x, W_x, W_h, b, h0, c0, forget_gate: bool, segment: int):
    """Runs ``core_forward(x, W_x, W_h, b, h0, c0, forget_gate) -> (hs, cs, gates)`` segment by segment, keeping
    the outputs and the segment-start states only. Returns ``(hs, c_T, h_checkpoints, c_checkpoints)``."""
    T, B, _ = x.shape
    H = W_h.shape[0]
    parts = segments(T, segment)
    hs = np.empty((T, B, H), dtype=x.dtype)
    h_checkpoints = np.empty((len(parts), B, H), dtype=x.dtype)
    c_checkpoints = np.empty((len(parts), B, H), dtype=x.dtype)
    h, c = h0, c0
    for k, (start, stop) in enumerate(parts):
        h_checkpoints[k], c_checkpoints[k] = h, c
        hs_part, cs_part, _ = core_forward(x[start:stop], W_x, W_h, b, h, c, forget_gate)
        hs[start:stop] = hs_part
        h, c = hs_part[-1], cs_part[-1].copy()
        del hs_part, cs_part
    return hs, c, h_checkpoints, c_checkpoints


def lstm_backward(core_forward, core_backward_into, cache, dhs, dc_T, need_dx=True, need_weight_grads=True):
    """BPTT over the segments of ``cache`` (a CheckpointedLSTMCache), last first; returns the LSTMGrads fields
    (dx None without ``need_dx``, the weight gradients None without ``need_weight_grads``).

    ``core_backward_into(x, W_x, W_h, h0, c0, gates, hs, cs, dhs, dc_T, forget_gate, dW_x, dW_h, db, need_dx,
    need_weight_grads)`` returns ``(dx, dh0, dc0)`` and adds the segment's weight gradients to the three arrays.
    """
    c = cache
    x = c.x
    dW_x, dW_h, db = np.zeros_like(c.W_x), np.zeros_like(c.W_h), np.zeros_like(c.b)
    dx = np.empty_like(x) if need_dx else None
    dh_carry, dc = None, dc_T
    parts = segments(x.shape[0], c.segment)
    for k in reversed(range(len(parts))):
        start, stop = parts[k]
        h0, c0 = c.h_checkpoints[k], c.c_checkpoints[k]
        hs, cs, gates = core_forward(x[start:stop], c.W_x, c.W_h, c.b, h0, c0, c.forget_gate)
        upstream = dhs[start:stop]
        if dh_carry is not None:  # dL/dh at this segment's last step: its own upstream plus what flows back
            upstream = upstream.copy()
            upstream[-1] += dh_carry
        dx_part, dh_carry, dc = core_backward_into(
            x[start:stop],
            c.W_x,
            c.W_h,
            h0,
            c0,
            gates,
            hs,
            cs,
            upstream,
            dc,
            c.forget_gate,
            dW_x,
            dW_h,
            db,
            need_dx,
            need_weight_grads,
        )
        if need_dx:
            dx[start:stop] = dx_part
    if not need_weight_grads:
        return dx, dh_carry, dc, None, None, None
    return dx, dh_carry, dc, dW_x, dW_h, db
