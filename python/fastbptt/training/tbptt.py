"""Truncated backpropagation through time over one long stream (Williams & Peng's BPTT(k2; k1)).

Every ``k1`` new steps the model is updated from the loss on those steps, backpropagated ``k2 >= k1`` steps into
the past; the recurrent state is carried forward across updates, but no gradient crosses the start of a window.
With ``k1 = k2 = k`` this is the common chunk-and-detach loop (min-char-rnn, Keras stateful RNNs): chunks of
``k`` steps, the final state of one chunk the initial state of the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..kernels import _checks
from .optim import clip_grad_norm


class Window(NamedTuple):
    """One update of truncated BPTT."""

    start: int  #: first new step (its loss counts)
    stop: int  #: one past the last new step
    backprop_start: int  #: where the backward pass stops (``max(0, start - (k2 - k1))``)
    loss: float  #: loss on steps ``start .. stop-1``
    grads: dict  #: gradients of that loss, truncated at ``backprop_start``
    state: object  #: the recurrent state after step ``stop - 1``


class TrainResult(NamedTuple):
    losses: list  #: the loss of each window
    grad_norms: list  #: the global gradient norm of each window before clipping (None without clipping)
    state: object  #: the state after the last step, to continue the stream


def _window_sizes(k1, k2) -> tuple[int, int]:
    k1 = _checks.positive_int("k1", k1)
    k2 = k1 if k2 is None else _checks.positive_int("k2", k2)
    if k2 < k1:
        raise ValueError(f"k2: must be >= k1 (backpropagate at least over the new steps), got k1={k1}, k2={k2}")
    return k1, k2


def tbptt_windows(
    model,
    tokens,
    targets,
    *,
    k1: int,
    k2: int | None = None,
    state=None,
    reduction: str = "sum",
    ignore_index: int = -100,
) -> Iterator[Window]:
    """Yields the windows of truncated BPTT over ``tokens [T, B]`` (B parallel streams) lazily.

    Each window is computed with the model's parameters at the time it is drawn, so a caller that updates the
    parameters between windows trains online. ``model`` is a :class:`fastbptt.SequenceModel` (anything with
    ``loss_and_grad``, ``state_at`` and ``batch_first``). Windows never reach back before this call's first step.
    """
    k1, k2 = _window_sizes(k1, k2)
    tokens, targets = np.asarray(tokens), np.asarray(targets)
    if model.batch_first:  # windows cut along time
        tokens, targets = np.swapaxes(tokens, 0, 1), np.swapaxes(targets, 0, 1)
    if tokens.shape != targets.shape or tokens.ndim != 2:
        raise ValueError(
            f"tokens and targets: expected two arrays of one 2-D shape, got {tokens.shape} and {targets.shape}"
        )
    T = tokens.shape[0]
    reach_back = k2 - k1  # steps before a window's new ones that its backward pass also covers
    carried = state  # the state at `backprop_start` of the next window
    for start in range(0, T, k1):
        stop = min(start + k1, T)
        backprop_start = max(0, start - reach_back)
        window_targets = np.array(targets[backprop_start:stop])
        if np.issubdtype(window_targets.dtype, np.integer):  # room for ignore_index whatever the integer type
            window_targets = window_targets.astype(np.int64)
        window_targets[: start - backprop_start] = ignore_index  # steps recomputed only to reach back k2 steps
        window_tokens = tokens[backprop_start:stop]
        if model.batch_first:
            window_tokens, window_targets = window_tokens.swapaxes(0, 1), window_targets.swapaxes(0, 1)
        loss, grads, final = model.loss_and_grad(
            window_tokens, window_targets, carried, reduction=reduction, ignore_index=ignore_index
        )
        if stop < T:
            carried = model.state_at(max(0, stop - reach_back) - backprop_start)
        yield Window(start, stop, backprop_start, loss, grads, final)


def train_tbptt(
    model,
    tokens,
    targets,
    optimizer,
    *,
    k1: int,
    k2: int | None = None,
    max_norm: float | None = None,
    state=None,
    reduction: str = "sum",
    ignore_index: int = -100,
) -> TrainResult:
    """Trains ``model`` over one pass of the stream with truncated BPTT: for each window, clip the gradients to
    ``max_norm`` (when given) and take one ``optimizer`` step. Returns the per-window losses, the gradient norms
    and the final state (to continue the stream in the next call)."""
    losses, norms, final = [], [], state
    for window in tbptt_windows(
        model, tokens, targets, k1=k1, k2=k2, state=state, reduction=reduction, ignore_index=ignore_index
    ):
        norms.append(None if max_norm is None else clip_grad_norm(window.grads, max_norm))
        optimizer.step(window.grads)
        losses.append(window.loss)
        final = window.state
    return TrainResult(losses, norms, final)
