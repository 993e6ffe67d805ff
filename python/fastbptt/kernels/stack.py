"""The one driver of stacked layers and their directions, shared by the NumPy layers and fastbptt.torch.

A stack is ``num_layers`` layers of ``num_directions`` cells; cell ``k = layer * num_directions + direction``.
Layer l > 0 takes the outputs of layer l-1, both directions concatenated along the features; the reverse
direction runs over each sequence reversed within its own length and its outputs are turned back. The driver knows
no cell: it calls ``cell_forward(params, x, state, lengths) -> (hs, final_state, cache)`` and
``cell_backward(params, cache, dhs, dfinal_state) -> (dx, dstate0, parameter gradients)`` on time-major NumPy
arrays, with ``params``, states and gradients in whatever form the caller's cells use.

With the compiled core, the two directions of a layer run side by side at two threads, one thread each
(:func:`fastbptt._core.run_concurrently`): a one-thread time loop never waits for another thread, where one
direction on two threads waits at every step, and the results are the one-thread bits. With more threads than
tasks, each task's time loops split its units on a team of its share of the threads (the bits stay those of one
thread).

The layers of a one-direction stack run so too, as a wavefront: forward (training or inference) each layer on a
thread of its own computes step t while the layer above computes step t-1 from the output it has just written,
handed over step by step (:class:`Wavefront`); backward the top layer runs first and each layer hands its dx down
a block of steps at a time, the layer below trailing by a block. A step of a small layer lasts microseconds, and
splitting it across threads meets them at every step; layers side by side meet only where an output is handed
on. The results are the one-thread bits here too. Layers with a mask between them (dropout in training),
bidirectional stacks (the layer above needs the reverse direction's last step first) and, backward, a gradient on
the final h of a layer below the top (it must be added to the dx from above before that layer reads it) run one
layer after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .. import _core
from .sequences import reverse_sequences


@dataclass
class StackCache:
    """What :func:`backward` needs: one kernel cache per cell, the lengths, and the masks applied between layers."""

    cells: list
    lengths: np.ndarray | None
    batch: int
    #: ``masks[l]`` multiplied the outputs of layer l before layer l+1 read them (dropout), or None
    masks: list = field(default_factory=list)
    #: each layer's output features where the cells run in a wavefront (forward's ``widths``), else None
    widths: list | None = None
    dtype: object = None  #: the dtype the stack computed in


class Wavefront(NamedTuple):
    """What one layer's call in a wavefront gets (``wavefront=`` of the fast backend's forwards and backwards).
    Forward: the output is hs, the input x, steps counted from the first; backward: the output is dx, the input
    dhs, steps counted from the last."""

    output: np.ndarray  #: the call's output, made by the driver: the input of the next layer
    input_ready: object  #: ``_core.StepHandoff`` of the input's steps (None where the input is all there)
    output_ready: object  #: ``_core.StepHandoff`` of the output's steps (None for the last layer of the run)


def by_direction(run: Callable[[int], object], num_directions: int, concurrent: bool) -> list:
    """``[run(0), run(1), ...]`` over the directions of a layer, side by side when ``concurrent`` (the compiled
    core's tasks; see the module's docstring)."""
    tasks = [lambda direction=direction: run(direction) for direction in range(num_directions)]
    if concurrent and len(tasks) > 1:
        return _core.run_concurrently(tasks)
    return [task() for task in tasks]


def forward(
    cell_forward,
    params: list,
    x: np.ndarray,
    states: list,
    lengths: np.ndarray | None,
    *,
    num_layers: int,
    num_directions: int,
    concurrent: bool,
    masks: list | None = None,
    inference: bool = False,
    widths: list | None = None,
):
    """Runs the stack over time-major ``x [T, B, D]`` from ``states[k]`` (None: zeros) of every cell.

    ``masks[l]`` (optional, None for no mask) multiplies layer l's outputs before layer l+1 reads them. With
    ``inference`` the cells keep nothing for a backward (their caches are None). ``widths``: each layer's output
    features, given where ``cell_forward`` takes ``wavefront=`` (``Cell.runs_in_wavefront``): with ``concurrent``,
    at least two threads, one direction, more than one layer and no masks, the layers then run as a wavefront.
    Returns ``(outputs [T, B, num_directions * H], final states by cell, StackCache)``.
    """
    masks = list(masks) if masks is not None else [None] * num_layers
    if widths is not None and _as_wavefront(concurrent, num_layers, num_directions, masks):
        outputs, finals, caches = _wavefront_forward(cell_forward, params, x, states, lengths, widths, inference)
        return outputs, finals, StackCache(caches, lengths, x.shape[1], masks, widths, x.dtype)
    layer_input, caches, finals = x, [], []
    for layer in range(num_layers):
        if layer > 0 and masks[layer - 1] is not None:
            layer_input = layer_input * masks[layer - 1]

        def run(direction, layer=layer, layer_input=layer_input):
            source = reverse_sequences(layer_input, lengths) if direction else layer_input
            k = layer * num_directions + direction
            hs, final, cache = cell_forward(params[k], source, states[k], lengths, inference)
            return (reverse_sequences(hs, lengths) if direction else hs), final, cache

        outputs = []
        for hs, final, cache in by_direction(run, num_directions, concurrent):
            outputs.append(hs)
            caches.append(cache)
            finals.append(final)
        layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)
    return layer_input, finals, StackCache(caches, lengths, x.shape[1], masks, widths, x.dtype)


def _as_wavefront(concurrent: bool, num_layers: int, num_directions: int, masks: list) -> bool:
    """Whether a stack's layers run side by side as a wavefront (see the module's docstring)."""
    return (
        concurrent
        and num_directions == 1
        and num_layers > 1
        and all(mask is None for mask in masks)
        and _core.call_threads() > 1
    )


def _side_by_side(run, count: int) -> list:
    """``[run(0), ..., run(count - 1)]`` as concurrent tasks, each given the handoff of its output (None for the
    last): a task that fails publishes every step of it, so that the next does not wait for ever; the first
    failure is raised once every task has ended. Task k reads what task k-1 writes."""
    handoffs = [_core.StepHandoff() for _ in range(count - 1)] + [None]

    def task(k: int):
        try:
            return run(k, handoffs[k - 1] if k > 0 else None, handoffs[k])
        except BaseException:
            if handoffs[k] is not None:
                handoffs[k].abandon()
            raise

    return _core.run_concurrently([lambda k=k: task(k) for k in range(count)])


def _wavefront_forward(cell_forward, params: list, x: np.ndarray, states: list, lengths, widths: list, inference):
    """:func:`forward` of a one-direction stack without masks, its layers side by side (see the module's
    docstring): ``(the last layer's outputs, final states, caches)``."""
    T, B = x.shape[:2]
    outputs = [np.empty((T, B, width), x.dtype) for width in widths]

    def run(layer: int, below, above):
        source = outputs[layer - 1] if layer > 0 else x
        wavefront = Wavefront(outputs[layer], below, above)
        return cell_forward(params[layer], source, states[layer], lengths, inference, wavefront=wavefront)

    results = _side_by_side(run, len(widths))
    return results[-1][0], [final for _, final, _ in results], [cache for _, _, cache in results]


def _h_part(dfinal):
    """The gradient on a final state's h (the first part of a state of several), or None."""
    return dfinal[0] if isinstance(dfinal, tuple) else dfinal


def _wavefront_backward(cell_backward, params, cache: StackCache, d_outputs, dfinals, need_dx, need_weight_grads):
    """:func:`backward` of a one-direction stack without masks whose forward ran as a wavefront, its layers side by
    side from the top down: layer l reads as its dhs the dx that layer l+1 writes as it runs."""
    layers = len(cache.cells)
    T, B = d_outputs.shape[:2]
    # the dx of layer l (the dhs of layer l-1) for l >= 1; layer 0's is made by its call, when asked for
    dxs = [None] + [np.empty((T, B, width), cache.dtype) for width in cache.widths[:-1]]
    dstates0, grads = [None] * layers, [None] * layers

    def run(task: int, above, below):
        layer = layers - 1 - task
        dhs = d_outputs if layer == layers - 1 else dxs[layer + 1]
        wavefront = Wavefront(dxs[layer], above, below)
        dx, dstates0[layer], grads[layer] = cell_backward(
            params[layer], cache.cells[layer], dhs, dfinals[layer], need_dx or layer > 0, need_weight_grads[layer],
            wavefront=wavefront,
        )  # fmt: skip
        return dx

    dx = _side_by_side(run, layers)[-1]
    return dx, dstates0, grads


def rebuild(cell_cache_from, params: list, x: np.ndarray, states: list, lengths, saved: list, **options) -> StackCache:
    """The StackCache of :func:`forward` from what of it lives outside Python (under torch.compile): the stack's
    input, the states, and each cell's saved arrays (``saved[k]``, see ``Cell.saved_arrays``).
    ``cell_cache_from(params, x, state, lengths, saved) -> cache`` rebuilds a cell's cache; the layers' inputs are
    recomputed as forward computed them, from the caches' outputs. ``options``: those of :func:`forward`."""

    def cell_forward(cell_params_and_saved, source, state, lengths, inference):
        cell_params, arrays = cell_params_and_saved
        cache = cell_cache_from(cell_params, source, state, lengths, arrays)
        return cache.hs, None, cache

    options["concurrent"] = False
    return forward(cell_forward, list(zip(params, saved)), x, states, lengths, **options)[2]


def backward(
    cell_backward,
    params: list,
    cache: StackCache,
    d_outputs: np.ndarray,
    dfinals: list,
    *,
    num_layers: int,
    num_directions: int,
    concurrent: bool,
    need_dx: bool = True,
    need_weight_grads=True,
):
    """Backpropagates ``d_outputs [T, B, num_directions * H]`` and ``dfinals[k]`` (None: no gradient) through the
    stack of :func:`forward`. Returns ``(dx [T, B, D], dstates0 by cell, parameter gradients by cell)``.

    ``need_dx`` False: dx of the stack's input is not computed (None); the layers above the first still pass theirs
    down. ``need_weight_grads``: a bool, or one per cell; a cell without has None for its gradients. After a
    forward given ``widths`` the layers run as a wavefront here too (top layer first, each handing its dx down a
    block of steps at a time), unless a layer below the top has a gradient on its final h, which would have to be
    added to the dx from above before the layer reads it."""
    if isinstance(need_weight_grads, bool):
        need_weight_grads = [need_weight_grads] * (num_layers * num_directions)
    if (
        cache.widths is not None
        and _as_wavefront(concurrent, num_layers, num_directions, cache.masks or [None] * num_layers)
        and all(_h_part(dfinal) is None for dfinal in dfinals[:-1])
    ):
        return _wavefront_backward(cell_backward, params, cache, d_outputs, dfinals, need_dx, need_weight_grads)
    H = d_outputs.shape[2] // num_directions
    cells = num_layers * num_directions
    dstates0, grads = [None] * cells, [None] * cells
    for layer in reversed(range(num_layers)):

        def run(direction, layer=layer, d_outputs=d_outputs):
            k = layer * num_directions + direction
            dhs = d_outputs[:, :, direction * H : (direction + 1) * H]
            # C-contiguous, as a cell's backward_checked takes it (the reversed copy is)
            dhs = reverse_sequences(dhs, cache.lengths) if direction else np.ascontiguousarray(dhs)
            dx, dstates0[k], grads[k] = cell_backward(
                params[k], cache.cells[k], dhs, dfinals[k], need_dx or layer > 0, need_weight_grads[k]
            )
            return reverse_sequences(dx, cache.lengths) if direction and dx is not None else dx

        dxs = by_direction(run, num_directions, concurrent)
        d_input = dxs[0] if len(dxs) == 1 or dxs[0] is None else dxs[0] + dxs[1]
        if layer > 0 and cache.masks[layer - 1] is not None:
            d_input = d_input * cache.masks[layer - 1]
        d_outputs = d_input
    return d_outputs, dstates0, grads
