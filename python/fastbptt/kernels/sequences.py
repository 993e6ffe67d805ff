"""Helpers for batches of sequences of different lengths (pure NumPy; shared by the fast path and the reference).

A batch ``[T, B, ...]`` with ``lengths [B]`` holds sequence b in steps ``0 .. lengths[b]-1``; the steps after that
are padding. ``lengths=None`` means every sequence runs all T steps.
"""

from __future__ import annotations

import numpy as np

from . import _checks


def final_states(hs, lengths=None) -> np.ndarray:
    """Each sequence's state at its own last step: ``hs[lengths[b] - 1, b]`` (``hs[-1]`` when lengths is None).

    Parameters
    ----------
    hs : ndarray [T, B, H]
        States of every step, as returned by the forward functions.
    lengths : integer array [B], optional

    Returns
    -------
    ndarray [B, H]
        A fresh array.
    """
    hs = np.asarray(hs)
    if hs.ndim != 3:
        raise ValueError(f"hs: expected a 3-D array [T, B, H], got shape {hs.shape}")
    lengths = _checks.lengths_array(lengths, hs.shape[0], hs.shape[1])
    if lengths is None:
        return hs[-1].copy()
    return hs[lengths - 1, np.arange(hs.shape[1])]


def reverse_sequences(x, lengths=None) -> np.ndarray:
    """Each sequence reversed within its own length; the padding stays where it is.

    Step t of sequence b becomes step ``lengths[b] - 1 - t``. The reverse direction of a bidirectional layer
    runs over this; applying the function twice gives back the input.

    Parameters
    ----------
    x : ndarray [T, B, ...]
    lengths : integer array [B], optional

    Returns
    -------
    ndarray [T, B, ...]
        A fresh C-contiguous array.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x: expected an array [T, B, ...], got shape {x.shape}")
    T, B = x.shape[:2]
    lengths = _checks.lengths_array(lengths, T, B)
    if lengths is None:
        return np.ascontiguousarray(x[::-1])
    steps = np.arange(T)[:, None]
    source = np.where(steps < lengths, lengths - 1 - steps, steps)
    return x[source, np.arange(B)]
