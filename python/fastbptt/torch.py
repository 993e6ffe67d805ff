"""Drop-in ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` modules whose forward and backward run fastbptt's kernels.

The modules keep PyTorch's constructor arguments, parameter names and return values, so ``load_state_dict``
works in both directions and existing training code needs no other change. Tensors reach the core as NumPy
views of the same memory; only what the layout requires is copied (the transposed weights, a batch_first or
otherwise non-contiguous input). Stacked layers, both directions, dropout between layers (torch's own) and
``PackedSequence`` input (run as a padded batch with per-sequence lengths) work as in torch.nn. CPU only, float32
or float64. Importing ``fastbptt`` never imports this module.

The step cells ``RNNCell``, ``LSTMCell`` and ``GRUCell`` replace torch.nn's: a cell keeps its weights packed (a
:class:`fastbptt.Stepper`) while they are unchanged, so a Python loop of steps does not pay the packing at every
step; what they cannot run is torch.nn's own call.

Adopting it in a model: ``fastbptt.torch.convert(model)`` makes every ``torch.nn.RNN``, ``LSTM`` and ``GRU`` in
``model``, at any depth and ``model`` itself, run fastbptt, in place: each module changes class and stays the same
object, with its Parameters (an optimizer built before keeps working), hooks and training or eval mode. What
fastbptt cannot run (parameters off the CPU or not float32/float64, a subclass of a torch.nn class) stays as it
is, with a warning naming its path. ``fastbptt.torch.revert(model)`` gives torch.nn's classes
back::

    model = fastbptt.torch.convert(model)  # before or after building the optimizer

Threads: each call of a module, forward and backward, runs the core at torch's count (``torch.get_num_threads()``,
read at that call), unless ``fastbptt.set_num_threads(n)`` chose a count, which wins until
``fastbptt.set_num_threads(None)``; after the call the core's count is what it was. torch's CPU wheel (2.13) ships
its OpenMP runtime under the name fastbptt's core asks for, ``libgomp.so.1``, so with fastbptt built from source a
process holds one runtime (the copy loaded first serves both) and one pool of threads: torch's ops and fastbptt's
calls take turns on the same threads rather than compete for the cores. A fastbptt wheel repaired by auditwheel
brings a libgomp of its own, at no cost measured at 2 threads. Where torch brings a runtime of its own (Intel's
libiomp5 or LLVM's libomp in conda's builds, a libgomp under another name), its threads spin for a while after
each op and slow down the fastbptt call that follows; ``KMP_BLOCKTIME=0`` makes Intel's and LLVM's sleep at once.

Gradients nobody asked for are not computed: backward skips dx when the input does not require grad and a
layer's weight gradients when none of its weights does (frozen layers). Under ``torch.no_grad()``,
``torch.inference_mode()``, or when nothing requires grad, the forward-only kernels run: the same outputs, nothing
kept for a backward.

``torch.compile(model, fullgraph=True)`` compiles models holding these modules without a graph break: under the
compiler a module's forward calls the custom operators ``fastbptt::stack_forward`` and
``fastbptt::stack_backward`` (fake implementations for tracing, an autograd formula; checked by
``torch.library.opcheck``), and the cache the backward reads crosses the graph as tensors. Dynamo refuses to trace
any ``torch.nn.RNN``/``LSTM``/``GRU``, subclasses included, unless ``torch._dynamo.config.allow_rnn`` is set, so
importing this module sets it: torch.nn's own RNN modules are then traced too (PyTorch's experimental support)
instead of breaking the graph; set it back to False after the import for torch's default. Outside the compiler a
call is one autograd Function, which costs less per call than the operators' dispatch.
"""

from __future__ import annotations

import ast
import functools
import math
import numbers
import threading
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from . import _core
from .kernels import _checks, cells, stack, threads
from .kernels.stepper import Stepper

__all__ = [
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "LayerNormLSTM",
    "RNN",
    "RNNCell",
    "Recurrent",
    "convert",
    "revert",
]


_DTYPES = (torch.float32, torch.float64)  # what the core computes in


def _as_numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of ``tensor``'s memory (no copy)."""
    if not tensor.is_cpu:
        raise ValueError(
            f"{name}: fastbptt computes on the CPU; got a tensor on {tensor.device} "
            "(move it with .cpu(), or use torch.nn for GPU tensors)"
        )
    if tensor.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {tensor.dtype}")
    return tensor.numpy(force=True)  # detached; for a CPU tensor of a real dtype a view, not a copy


def _cell_of(name: str, **options) -> cells.Cell:
    """The registered cell ``name`` with ``options`` on the compiled core, made once per (name, options)."""
    # Literals only (the class by its id): torch.compile guards on this lookup and cannot guard on a class in a key.
    cls = cells.cell_class(name)
    key = (name, id(cls), *options.items())  # each caller passes its options in one order
    cell = _CELLS.get(key)
    if cell is None:
        cell = _CELLS[key] = cls("fast", **options)
    return cell


_CELLS: dict = {}
_WEIGHT_NAMES: dict = {}  # (torch parameter names, layers, directions) -> a stack's parameter names, in order


def _array_of(tensor: torch.Tensor, name: str, dtype: np.dtype) -> np.ndarray:
    """``tensor`` as a C-contiguous array of ``dtype`` (a view where it is one), TypeError naming it otherwise."""
    return _checks.float_array(name, _as_numpy(tensor, name), dtype, like="the input")


def _to_torch(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(array)


def _output(outputs: np.ndarray) -> torch.Tensor:
    """The module's output as a tensor of its own memory.

    A one-directional last layer's outputs are its cache's ``hs`` (read-only), which backward reads: handing that
    memory out would let an in-place edit of the output (``out.mul_(2)``, an in-place activation or residual sum
    after the layer) change the weight gradients silently, so it is copied (fastbptt._core.copy_array, memory from
    the array cache). torch.nn's output is its own memory too, and such edits are harmless there.
    """
    return torch.from_numpy(outputs if outputs.flags.writeable else _core.copy_array(outputs))


def _suffix(layer: int, direction: int) -> str:
    """torch.nn's suffix of the parameters of a layer and direction."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def _stacked(parts: list) -> np.ndarray:
    """``np.stack(parts)``, a new array [cells, B, H]; for one cell without np.stack's cost."""
    return parts[0][None].copy() if len(parts) == 1 else np.stack(parts)


def _first_order(backward):
    """A backward that computes first-order gradients only: under ``create_graph=True`` (a gradient of a gradient)
    it raises RuntimeError naming fastbptt, rather than giving a gradient whose own gradient would be missing."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables it for create_graph=True
            raise RuntimeError(
                "fastbptt.torch computes first-order gradients only: differentiating them again "
                "(create_graph=True, double backward) is not supported; use torch.nn's modules for that"
            )
        return backward(ctx, *grads)

    return wrapper


class _Stack:
    """What one call of a module runs: the cell, the stack's shape, the lengths and the dropout masks (NumPy)."""

    def __init__(
        self, cell: cells.Cell, num_layers: int, num_directions: int, has_bias: bool, lengths, masks, hidden_size=None
    ):
        self.cell, self.num_layers, self.num_directions, self.has_bias = cell, num_layers, num_directions, has_bias
        self.lengths, self.masks, self.hidden_size = lengths, masks, hidden_size
        self.cells = self.num_layers * self.num_directions
        self.state_parts = self.cell.state_parts

    def options(self) -> dict:
        return {"num_layers": self.num_layers, "num_directions": self.num_directions, "concurrent": True}

    def widths(self) -> list | None:
        """Each layer's output features, for a forward whose layers may run as a wavefront (stack.forward); None
        where the cell cannot or the hidden size was not given (a backward's _Stack)."""
        if self.hidden_size is None or not self.cell.runs_in_wavefront:
            return None
        return [self.cell.output_size(self.hidden_size)] * self.num_layers

    def params(self, flat_params, dtype) -> list:
        """Each cell's kernel parameters from its torch tensors, C-contiguous of ``dtype`` (the input's) as the
        cells' checked kernels take them; TypeError naming a parameter of another dtype."""
        names = self.cell.torch_parameters
        params = []
        for k in range(self.cells):
            tensors = flat_params[len(names) * k : len(names) * (k + 1)]
            arrays = {name: None if t is None else _array_of(t, name, dtype) for name, t in zip(names, tensors)}
            params.append({key: np.ascontiguousarray(a) for key, a in self.cell.from_torch(arrays).items()})
        return params

    def cell_states(self, parts) -> list:
        """Per-cell states from ``state_parts`` arrays [cells, B, H] (a part may be None: none for any cell)."""
        if self.state_parts == 1:
            return [None if parts[0] is None else parts[0][k] for k in range(self.cells)]
        return [tuple(None if part is None else part[k] for part in parts) for k in range(self.cells)]

    def state_arrays(self, states, dtype) -> list:
        """The initial states as C-contiguous arrays of ``dtype`` (None for zeros); torch.nn's checks have
        checked their shapes."""
        return [None if state is None else _array_of(state, name, dtype) for state, name in zip(states, ("h0", "c0"))]


def _run_forward(run: _Stack, x, states, flat_params, inference: bool):
    """The stack's forward on the tensors' memory: (output tensor, final-state tensors, kernel params, cache)."""
    xn = _as_numpy(x, "input")  # first: a wrong dtype is named as the input's
    params = run.params(flat_params, xn.dtype)
    with threads.defaulting_to(torch.get_num_threads()):
        outputs, finals, cache = stack.forward(
            run.cell.forward_checked,
            params,
            xn,
            run.cell_states(run.state_arrays(states, xn.dtype)),
            run.lengths,
            masks=run.masks,
            inference=inference,
            widths=run.widths(),
            **run.options(),
        )
    final_parts = [_stacked([f if run.state_parts == 1 else f[i] for f in finals]) for i in range(run.state_parts)]
    return (_output(outputs), *(torch.from_numpy(part) for part in final_parts)), params, cache


def _run_backward(run: _Stack, params, cache, d_output, d_finals, need_dx: bool, weight_needs) -> list:
    """dx, the initial states' and the parameters' gradients (arrays, None where not asked for) of the stack's
    forward; ``weight_needs``: whether each parameter tensor wants a gradient, in the forward's order."""
    if d_output is None:
        hs = cache.cells[0].hs
        d_outputs = np.zeros((*hs.shape[:2], run.num_directions * hs.shape[2]), hs.dtype)
    else:  # C-contiguous (a sum's gradient is a broadcast view); the cells copy it where they add a final state's
        d_outputs = np.ascontiguousarray(_as_numpy(d_output, "grad of output"))
    # autograd gives each gradient its output's dtype and shape; the cells' checked kernels take them C-contiguous
    d_parts = [None if d is None else np.ascontiguousarray(_as_numpy(d, "grad of final state")) for d in d_finals]
    per_cell = len(run.cell.torch_parameters)
    with threads.defaulting_to(torch.get_num_threads()):
        dx, dstates0, grads = stack.backward(
            run.cell.backward_checked,
            params,
            cache,
            d_outputs,
            run.cell_states(d_parts),
            need_dx=need_dx,
            need_weight_grads=[any(weight_needs[per_cell * k : per_cell * (k + 1)]) for k in range(run.cells)],
            **run.options(),
        )
    d_states = [_stacked([d if run.state_parts == 1 else d[i] for d in dstates0]) for i in range(run.state_parts)]
    d_params = [grad for cell_grads in grads for grad in run.cell.to_torch_grads(cell_grads, run.has_bias)]
    return [dx, *d_states, *d_params]


class _StackFunction(torch.autograd.Function):
    """The whole stack of a module as one autograd node: forward and backward run the stack driver
    (fastbptt.kernels.stack), so the directions of a layer run side by side and give the one-thread bits, as in the
    NumPy layers. Backward computes dx only when the input requires grad, and a cell's weight gradients only when
    one of its weights does (frozen layers)."""

    @staticmethod
    def forward(ctx, run: _Stack, x, *tensors):
        states, flat_params = tensors[: run.state_parts], tensors[run.state_parts :]
        results, ctx.params, ctx.cache = _run_forward(run, x, states, flat_params, inference=False)
        ctx.run = run
        ctx.save_for_backward(x, *(t for t in (*states, *flat_params) if t is not None))
        ctx.set_materialize_grads(False)  # an output the loss does not use has no gradient, not a zero one
        return results

    @staticmethod
    @_first_order
    def backward(ctx, d_output, *d_finals):
        _check_saved_inputs(ctx)
        run = ctx.run
        needs = ctx.needs_input_grad[1:]  # x, the states, every cell's parameters
        results = _run_backward(run, ctx.params, ctx.cache, d_output, d_finals, needs[0], needs[1 + run.state_parts :])
        return (None, *(_to_torch(r) if need else None for r, need in zip(results, needs)))


def _check_saved_inputs(ctx) -> None:
    """Raises torch's "modified by an inplace operation" RuntimeError when an input that backward reads through
    the cache (the sequence, the initial states, the weights) was edited in place since forward, as torch.nn does."""
    ctx.saved_tensors  # noqa: B018 - unpacking is what checks the version counters


# -- torch.compile: the stack as custom operators --------------------------------------------------------------
# Under torch.compile a module's forward calls these operators, which the compiler treats as opaque, with fake
# (shape-only) implementations for tracing and an autograd formula that calls the backward operator. The cache the
# backward reads crosses the graph as tensors (each cell's saved arrays); the rest of it is rebuilt from the inputs.
# Outside torch.compile the autograd Function above runs the same code with less per-call overhead.


def _cell_key(cell: cells.Cell) -> str:
    """The cell and its options as a string, the form in which custom operators take them."""
    return cell.name + "".join(f"|{key}={value!r}" for key, value in sorted(cell.options.items()))


def _cell_from_key(key: str) -> cells.Cell:
    name, *options = key.split("|")
    return _cell_of(name, **{k: ast.literal_eval(v) for k, v in (option.split("=", 1) for option in options)})


def _states_or_none(states: list, parts: int) -> list:
    return list(states) if states else [None] * parts


def _weights_with_biases(cell: cells.Cell, weights: list, has_bias: bool) -> list:
    """The operators' weights (present ones only) with None where ``bias=False`` left a bias out."""
    if has_bias:
        return list(weights)
    present, full = iter(weights), []
    for _ in range(len(weights) // (len(cell.torch_parameters) - len(cell.torch_biases))):
        full += [None if name in cell.torch_biases else next(present) for name in cell.torch_parameters]
    return full


@torch.library.custom_op("fastbptt::stack_forward", mutates_args=())
def _stack_forward(
    x: torch.Tensor,
    states: list[torch.Tensor],
    weights: list[torch.Tensor],
    lengths: torch.Tensor | None,
    masks: list[torch.Tensor],
    cell: str,
    num_layers: int,
    bidirectional: bool,
    has_bias: bool,
    hidden_size: int,
    inference: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(output, final states, the cache's saved arrays: none with ``inference``) of a stack."""
    spec = _cell_from_key(cell)
    lengths_array = None if lengths is None else lengths.numpy()
    run = _Stack(
        spec,
        num_layers,
        2 if bidirectional else 1,
        has_bias,
        lengths_array,
        [m.numpy() for m in masks] or None,
        hidden_size,
    )
    full = _weights_with_biases(spec, weights, has_bias)
    (output, *finals), _, cache = _run_forward(run, x, _states_or_none(states, spec.state_parts), full, inference)
    if inference:
        return output, finals, []
    with warnings.catch_warnings():  # read-only arrays: nothing writes them, the backward operator reads them
        warnings.simplefilter("ignore", UserWarning)
        saved = [torch.from_numpy(a) for cell_cache in cache.cells for a in spec.saved_arrays(cell_cache)]
    return output, finals, saved


@_stack_forward.register_fake
def _(x, states, weights, lengths, masks, cell, num_layers, bidirectional, has_bias, hidden_size, inference):
    spec, directions = _cell_from_key(cell), 2 if bidirectional else 1
    T, B, D = x.shape
    output_size = spec.output_size(hidden_size)
    output = x.new_empty((T, B, directions * output_size))
    finals = [x.new_empty((num_layers * directions, B, size)) for size in spec.state_sizes(hidden_size)]
    saved = []
    if not inference:
        for layer in range(num_layers):
            inputs = D if layer == 0 else directions * output_size
            for _ in range(directions):
                saved += [x.new_empty(shape) for shape in spec.saved_shapes(T, B, inputs, hidden_size)]
    return output, finals, saved


@torch.library.custom_op("fastbptt::stack_backward", mutates_args=())
def _stack_backward(
    x: torch.Tensor,
    states: list[torch.Tensor],
    weights: list[torch.Tensor],
    lengths: torch.Tensor | None,
    masks: list[torch.Tensor],
    saved: list[torch.Tensor],
    d_output: torch.Tensor,
    d_finals: list[torch.Tensor],
    cell: str,
    num_layers: int,
    bidirectional: bool,
    has_bias: bool,
    need_dx: bool,
    weight_needs: list[bool],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(dx, the states' gradients, the weights' gradients) of :func:`_stack_forward`'s stack; an empty tensor for
    what was not asked for (dx without ``need_dx``, a weight whose ``weight_needs`` entry is False)."""
    spec = _cell_from_key(cell)
    directions = 2 if bidirectional else 1
    lengths_array = None if lengths is None else lengths.numpy()
    run = _Stack(spec, num_layers, directions, has_bias, lengths_array, [m.numpy() for m in masks] or None)
    full = _weights_with_biases(spec, weights, has_bias)
    xn = _as_numpy(x, "input")
    params = run.params(full, xn.dtype)
    per_cell = len(spec.saved_shapes(1, 1, 1, 1))
    saved_arrays = [a.numpy() for a in saved]
    cache = stack.rebuild(
        spec.cache_from,
        params,
        xn,
        run.cell_states(run.state_arrays(_states_or_none(states, spec.state_parts), xn.dtype)),
        lengths_array,
        [saved_arrays[per_cell * k : per_cell * (k + 1)] for k in range(run.cells)],
        num_layers=num_layers,
        num_directions=directions,
        masks=run.masks,
    )
    full_needs = _weights_with_biases(spec, weight_needs, has_bias)
    full_needs = [bool(need) for need in full_needs]  # a left-out bias wants nothing
    dx, *rest = _run_backward(run, params, cache, d_output, d_finals, need_dx, full_needs)
    d_states, d_weights = rest[: spec.state_parts], rest[spec.state_parts :]
    present = [grad for grad, weight in zip(d_weights, full) if weight is not None]
    return (
        x.new_empty((0,)) if dx is None else torch.from_numpy(dx),
        [torch.from_numpy(d) for d in d_states] if states else [],
        [x.new_empty((0,)) if grad is None else torch.from_numpy(np.ascontiguousarray(grad)) for grad in present],
    )


@_stack_backward.register_fake
def _(
    x,
    states,
    weights,
    lengths,
    masks,
    saved,
    d_output,
    d_finals,
    cell,
    num_layers,
    bidirectional,
    has_bias,
    need_dx,
    weight_needs,
):
    return (
        torch.empty_like(x) if need_dx else x.new_empty((0,)),
        [torch.empty_like(state) for state in states],
        [torch.empty_like(w) if need else x.new_empty((0,)) for w, need in zip(weights, weight_needs)],
    )


def _stack_forward_context(ctx, inputs, output):
    x, states, weights, lengths, masks, cell, num_layers, bidirectional, has_bias, _, inference = inputs
    ctx.arguments = (cell, num_layers, bidirectional, has_bias)
    ctx.counts = (len(states), len(weights), len(masks), len(output[2]))
    ctx.needs = (x.requires_grad, [w.requires_grad for w in weights], [s.requires_grad for s in states])
    ctx.has_lengths = lengths is not None
    ctx.save_for_backward(x, *states, *weights, *([lengths] if lengths is not None else []), *masks, *output[2])


def _stack_forward_backward(ctx, d_output, d_finals, _d_saved):
    tensors = list(ctx.saved_tensors)
    states_count, weights_count, masks_count, _ = ctx.counts
    x = tensors.pop(0)
    states, tensors = tensors[:states_count], tensors[states_count:]
    weights, tensors = tensors[:weights_count], tensors[weights_count:]
    lengths = tensors.pop(0) if ctx.has_lengths else None
    masks, saved = tensors[:masks_count], tensors[masks_count:]
    need_dx, weight_needs, state_needs = ctx.needs
    dx, d_states, d_weights = torch.ops.fastbptt.stack_backward(
        x, states, weights, lengths, masks, saved, d_output, list(d_finals), *ctx.arguments, need_dx, weight_needs
    )
    # One entry per input, lists as lists: the operator's schema is the structure torch checks the result against.
    return (
        dx if need_dx else None,
        [d if need else None for d, need in zip(d_states, state_needs)],
        [d if need else None for d, need in zip(d_weights, weight_needs)],
        None,
        [None] * masks_count,
        *([None] * 6),
    )


_stack_forward.register_autograd(_stack_forward_backward, setup_context=_stack_forward_context)


class _FastRecurrent:
    """The forward that fastbptt.torch's RNN, LSTM and GRU put in place of torch.nn's: torch.nn's own checks of the
    input and states (so errors are torch.nn's, type and message), then the whole stack as one _StackFunction."""

    def _cell(self) -> cells.Cell:
        """The cell (:mod:`fastbptt.kernels.cells`) on the compiled core's kernels."""
        raise NotImplementedError

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def forward(self, input, hx=None):
        """``(output, h_n)``, or ``(output, (h_n, c_n))`` for a cell of two state parts, as torch.nn's modules.
        Where torch.nn's own forward has an answer fastbptt's kernels do not give (no steps or no sequences, initial
        states of another dtype than the input), the call is torch.nn's: its result or its error."""
        if isinstance(self, nn.RNNBase) and (
            self._torch_nn_answers(input, hx)
            or (not torch.compiler.is_compiling() and _under_functorch(input, hx, *self._weights(self._cell())))
        ):
            return super().forward(input, hx)
        output, finals = self._run(input, hx)
        return output, (finals[0] if len(finals) == 1 else tuple(finals))

    @staticmethod
    def _torch_nn_answers(input, hx) -> bool:
        if isinstance(input, torch.Tensor) and input.dim() in (2, 3) and input.numel() == 0:
            return True
        states = hx if isinstance(hx, (tuple, list)) else (hx,)
        dtype = input.data.dtype if isinstance(input, nn.utils.rnn.PackedSequence) else getattr(input, "dtype", None)
        return any(isinstance(s, torch.Tensor) and s.dtype != dtype for s in states)

    def _weights(self, cell: cells.Cell) -> list:
        """Every cell's torch parameters in the stack's order, None for a bias left out. Read by name at each call,
        as torch.nn's forward refreshes its list of weights: a parametrized weight is computed here."""
        own = self._parameters
        return [own[name] if name in own else getattr(self, name, None) for name in self._weight_names(cell)]

    def _weight_names(self, cell: cells.Cell) -> tuple:
        """The names of :meth:`_weights`, made once per cell and stack shape."""
        key = (cell.torch_parameters, self.num_layers, self.num_directions)
        names = _WEIGHT_NAMES.get(key)
        if names is None:
            names = _WEIGHT_NAMES[key] = tuple(
                name + _suffix(layer, direction)
                for layer in range(self.num_layers)
                for direction in range(self.num_directions)
                for name in cell.torch_parameters
            )
        return names

    def _dropout_masks(self, cell: cells.Cell, T: int, B: int, dtype) -> list | None:
        """torch.nn's dropout between layers as masks (kept units scaled by 1 / (1 - p)), drawn from torch's RNG:
        one per layer but the last, or None without dropout."""
        if not (self.dropout and self.training and self.num_layers > 1):
            return None
        shape, keep = (T, B, self.num_directions * cell.output_size(self.hidden_size)), 1.0 - self.dropout
        masks = []
        for _ in range(self.num_layers - 1):
            mask = torch.zeros(shape, dtype=dtype) if keep == 0 else torch.empty(shape, dtype=dtype).bernoulli_(keep)
            masks.append(mask.div_(keep) if keep else mask)
        return masks

    def _checked_states(self, parts: int, input, hx, batch_sizes, batched: bool) -> list:
        """The initial states (``parts`` of them) as tensors [layers * directions, B, H] after torch.nn's checks of
        ``input`` and ``hx`` (``hx``: None, a tensor, or a pair for a cell of two state parts); Nones for zeros."""
        if hx is None:  # zeros, which the kernels make themselves
            nn.RNNBase.check_input(self, input, batch_sizes)
            return [None] * parts
        else:
            states = list(hx) if parts == 2 else [hx]
            dims = 3 if batched else 2
            if any(state.dim() != dims for state in states):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                if parts == 2:
                    got = "(" + ", ".join(f"{state.dim()}-D" for state in states) + ") tensors"
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {dims}-D but got {got}")
                raise RuntimeError(f"For {kind} input, hx should also be {dims}-D but got {states[0].dim()}-D tensor")
            if not batched:
                states = [state.unsqueeze(1) for state in states]
        self.check_forward_args(input, tuple(states) if parts == 2 else states[0], batch_sizes)
        return states

    def _run(self, input, hx):
        """(output in the input's form, final states as a list of tensors) of the whole stack."""
        cell = self._cell()
        packed = isinstance(input, nn.utils.rnn.PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            states = self._checked_states(cell.state_parts, data, hx, batch_sizes, batched=True)
            # States come in the batch's own order; the padded batch below is in that order too.
            x, lengths_tensor = nn.utils.rnn.pad_packed_sequence(input)
            lengths = lengths_tensor.numpy().astype(np.int64)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(self._input_dims_message.format(input.dim()))
            batched = input.dim() == 3
            if not batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            states = self._checked_states(cell.state_parts, input, hx, None, batched)
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = None
        weights = self._weights(cell)
        x = x.contiguous()
        masks = self._dropout_masks(cell, x.shape[0], x.shape[1], x.dtype)
        wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *states, *weights))
        if torch.compiler.is_compiling():  # torch.compile traces the custom operators, not the NumPy inside
            present = [w for w in weights if w is not None]
            output, final_states, _ = torch.ops.fastbptt.stack_forward(
                x,
                [state for state in states if state is not None],
                present,
                None if lengths is None else torch.from_numpy(lengths),
                masks or [],
                _cell_key(cell),
                self.num_layers,
                self.bidirectional,
                len(present) == len(weights),
                self.hidden_size,
                not wants_grad,
            )
        else:
            arrays = None if masks is None else [mask.numpy() for mask in masks]
            run = _Stack(cell, self.num_layers, self.num_directions, self.bias, lengths, arrays, self.hidden_size)
            if wants_grad:
                output, *final_states = _StackFunction.apply(run, x, *states, *weights)
            else:  # no gradient can be asked for: the forward-only kernels, which keep nothing for a backward
                (output, *final_states), _, _ = _run_forward(run, x, states, weights, inference=True)
        if packed:
            if sorted_indices is not None:  # pack in the input's order of sequences, as torch.nn does
                output = output.index_select(1, sorted_indices)
                lengths_tensor = lengths_tensor.index_select(0, sorted_indices.cpu())
            output = nn.utils.rnn.pack_padded_sequence(output, lengths_tensor, enforce_sorted=True)
            return nn.utils.rnn.PackedSequence(
                output.data, output.batch_sizes, sorted_indices, unsorted_indices
            ), final_states
        if not batched:
            return output.squeeze(1), [f.squeeze(1) for f in final_states]
        return (output.transpose(0, 1) if self.batch_first else output), final_states


class RNN(_FastRecurrent, nn.RNN):
    """``torch.nn.RNN`` (an instance of it) whose forward and backward run fastbptt: ``nonlinearity`` "tanh" or
    "relu", stacked, bidirectional, padded or packed input, CPU float32/float64."""

    _input_dims_message = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"  # torch.nn's words

    def _cell(self):
        return _cell_of("rnn", activation=self.nonlinearity)


class LSTM(_FastRecurrent, nn.LSTM):
    """``torch.nn.LSTM`` (an instance of it) whose forward and backward run fastbptt: stacked, bidirectional, with a
    projection (``proj_size``), padded or packed input, CPU float32/float64."""

    _input_dims_message = "LSTM: Expected input to be 2D or 3D, got {}D instead"

    def _cell(self):
        return _cell_of("lstm", proj_size=self.proj_size)


class GRU(_FastRecurrent, nn.GRU):
    """``torch.nn.GRU`` (an instance of it) whose forward and backward run fastbptt: stacked, bidirectional, padded or
    packed input, CPU float32/float64."""

    _input_dims_message = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def _cell(self):
        return _cell_of("gru")


class Recurrent(_FastRecurrent, nn.Module):
    """A stack of recurrent layers of any registered cell (:mod:`fastbptt.kernels.cells`) as a torch module, with
    torch.nn.RNN's arguments, checks and behaviour: stacked, bidirectional, dropout between layers, padded or packed
    input, CPU float32/float64. ``forward(input, hx=None)`` returns ``(output, h_n)`` for a cell whose state is h
    and ``(output, (h_n, c_n))`` for a cell whose state is (h, C), as torch.nn.RNN and torch.nn.LSTM do.

    The parameters of layer k are the cell's torch parameters (``cell.torch_parameters``, e.g. ``weight_ih_l{k}``)
    with the suffix ``_reverse`` for the reverse direction, initialised as the cell says (torch.nn's
    ``U(-1/sqrt(H), 1/sqrt(H))`` unless it names ones or zeros). ``cell`` is a registered cell's name (or its
    registered class) and ``cell_options`` its options.
    """

    proj_size = 0  # read by torch.nn.RNNBase's checks, which this module runs

    def __init__(
        self,
        cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **cell_options,
    ):
        super().__init__()
        spec = cells.cell_class(cell)
        if cells.cell_class(spec.name) is not spec:
            raise ValueError(f"cell: {spec.__name__} is not registered (fastbptt.kernels.cells.register)")
        _check_module_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device: fastbptt computes on the CPU, got {device}")
        # The cell by name and options (plain values), so that torch.save / torch.load(weights_only=True) see none
        # of fastbptt's classes.
        self.cell_name, self.cell_options = spec.name, dict(spec("fast", **cell_options).options)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, float(dropout), bidirectional
        cell_spec = self._cell()
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.num_directions * cell_spec.output_size(hidden_size)
            shapes = cell_spec.torch_shapes(layer_input, hidden_size)
            for direction in range(self.num_directions):
                suffix = _suffix(layer, direction)
                for name in cell_spec.torch_parameters:
                    if name in cell_spec.torch_biases and not bias:
                        continue
                    parameter = nn.Parameter(torch.empty(shapes[name], device=device, dtype=dtype))
                    self.register_parameter(name + suffix, parameter)
                    self._flat_weights_names.append(name + suffix)
        self.reset_parameters()

    def _cell(self) -> cells.Cell:
        return _cell_of(self.cell_name, **self.cell_options)

    @property
    def _flat_weights(self) -> list:
        return [getattr(self, name) for name in self._flat_weights_names]

    def reset_parameters(self) -> None:
        """Each parameter as the cell says: ones, zeros, or torch.nn's ``U(-1/sqrt(H), 1/sqrt(H))``."""
        initial_values = self._cell().torch_initial_values
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self._flat_weights_names:
            parameter, how = getattr(self, name), initial_values.get(name.rsplit("_l", 1)[0], "uniform")
            if how == "ones":
                nn.init.ones_(parameter)
            elif how == "zeros":
                nn.init.zeros_(parameter)
            else:
                nn.init.uniform_(parameter, -bound, bound)

    def check_forward_args(self, input, hx, batch_sizes) -> None:
        """torch.nn.RNNBase's checks of the input and of every part of the state."""
        nn.RNNBase.check_input(self, input, batch_sizes)
        expected = nn.RNNBase.get_expected_hidden_size(self, input, batch_sizes)
        for part in hx if isinstance(hx, tuple) else (hx,):
            nn.RNNBase.check_hidden_size(self, part, expected)

    def extra_repr(self) -> str:
        text = f"{self.cell_name!r}, {self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        return text + "".join(f", {key}={value!r}" for key, value in self.cell_options.items())


class LayerNormLSTM(Recurrent):
    """The layer-normalised LSTM (Ba, Kiros & Hinton 2016, the form of haste's LayerNormLSTM) as a torch module,
    with torch.nn.LSTM's arguments, checks and return values: ``forward(input, hx=None) -> output, (h_n, c_n)``.

    Per step, with ``LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)`` over the features (biased variance)::

        z = LN(x_t W_ihᵀ) * gamma_ih + LN(h_{t-1} W_hhᵀ) * gamma_hh + bias     (4H pre-activations: i, f, g, o)
        c_t = sigmoid(z_f) * c_{t-1} + sigmoid(z_i) * tanh(z_g)
        h_t = sigmoid(z_o) * tanh(LN(c_t) * gamma_c + beta_c)

    Parameters of layer k (suffix ``_reverse`` for the reverse direction): ``weight_ih_l{k}`` [4H, D],
    ``weight_hh_l{k}`` [4H, H] (torch.nn.LSTM's initialisation), ``bias_l{k}`` [4H] (zeros; absent with
    ``bias=False``), ``gamma_ih_l{k}``, ``gamma_hh_l{k}`` [4H] and ``gamma_c_l{k}`` [H] (ones), ``beta_c_l{k}`` [H]
    (zeros). torch.nn has no such module; on the CPU it runs fastbptt's kernels (CPU float32/float64).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(
            "layer_norm_lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr().split(", ", 1)[1]  # torch.nn's form: the sizes first, no cell name


def _check_module_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional) -> None:
    """torch.nn.RNNBase's checks of its constructor's arguments: its exception types and messages."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")


# -- Step cells: torch.nn.RNNCell, LSTMCell, GRUCell ---------------------------------------------------------------
# A cell is called once per step, usually in a Python loop, so what a sequence call pays once (turning the weights
# into the kernels' layout and packing them) would be paid at every step. A cell keeps a Stepper (the weights copied
# and packed) while its weight tensors are unchanged: the same tensors, of the same version (an in-place update such
# as an optimizer's step bumps it) and memory (``.data =`` or ``.to()`` replace it).


class _WeightsSeen:
    """What a cell's Stepper was made from: each weight tensor, its version and the address of its memory, a
    detached alias of it, which keeps that memory alive, so that no later tensor can take the address while the
    Stepper is kept, and a copy of its bits. An edit through ``.data`` or through NumPy leaves the version as it
    was (torch counts only the edits of the tensor and of its views), so the bits are compared at every call too:
    a kept Stepper never computes with weights the module no longer has."""

    __slots__ = ("weights", "versions", "addresses", "aliases", "bits")

    def __init__(self, weights: list):
        self.weights, self.versions = tuple(weights), _versions(weights)
        self.aliases = [None if w is None else w.detach() for w in weights]
        self.addresses = [None if w is None else w.data_ptr() for w in weights]
        self.bits = [None if w is None else _bits_of(w).copy() for w in weights]

    def same(self, weights: list) -> bool:
        if len(weights) != len(self.weights):
            return False
        for w, seen, version, address in zip(weights, self.weights, self.versions, self.addresses):
            if w is not seen or (w is not None and (w._version != version or w.data_ptr() != address)):
                return False
        return all([bits is None or _core.same_bytes(_bits_of(w), bits) for w, bits in zip(weights, self.bits)])


def _bits_of(weight: torch.Tensor) -> np.ndarray:
    """A weight's values as a C-contiguous array, whose bytes are its bits."""
    return np.ascontiguousarray(weight.detach().numpy())


def _under_functorch(*tensors) -> bool:
    """Whether a tensor (or a state pair) is one of torch.func's transforms' (grad, vmap): their wrappers have no
    memory NumPy can read, and torch.nn's own forward runs under them."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    for t in tensors:
        for part in t if isinstance(t, (tuple, list)) else (t,):
            if isinstance(part, torch.Tensor) and wrapped(part):
                return True
    return False


def _versions(tensors) -> list:
    return [None if t is None else t._version for t in tensors]


class _KeptStep:
    """What a cell module keeps while its weights are unchanged: the Stepper (the weights copied and packed), its
    step kernels, the sizes of the state's parts and, where torch's engine allows, the deferred weight gradients.
    Its forward and backward run one step of the autograd Functions below."""

    __slots__ = ("seen", "stepper", "kernels", "sizes", "has_bias", "deferred", "dtype")

    def __init__(self, cell: cells.Cell, weights: list, has_bias: bool):
        arrays = {name: None if w is None else _as_numpy(w, name) for name, w in zip(cell.torch_parameters, weights)}
        self.seen, self.stepper = _WeightsSeen(weights), Stepper(cell, cell.from_torch(arrays))
        self.kernels = cell.step_kernels(self.stepper.params, self.stepper.packed)
        self.sizes, self.has_bias = cell.state_sizes(self.stepper.hidden_size), has_bias  # of the state's parts
        self.deferred = _DeferredWeightGradients(self, weights) if _ENGINE_QUERIES else None
        self.dtype = weights[0].dtype  # torch's, as the module's checks compare it

    def forward(self, ctx, x, states) -> tuple:
        """A step's forward (the module checked the tensors and made them contiguous); its final state as tensors
        of their own memory: copies, since backward reads the kernels' arrays."""
        batch, dtype = x.shape[0], self.stepper.dtype
        arrays = [np.zeros((batch, n), dtype) if s is None else s.numpy(force=True) for s, n in zip(states, self.sizes)]
        with threads.defaulting_to(torch.get_num_threads()):
            finals, ctx.record = self.kernels.forward(x.numpy(force=True)[None], *arrays)
        ctx.kept = self
        ctx.set_materialize_grads(False)
        return tuple([torch.from_numpy(part.copy()) for part in finals])

    def backward(self, ctx, d_finals, need_dx: bool) -> tuple:
        """(dx [B, D] or None, the gradients of the step's first state, the step's rows for the weight gradients).
        Autograd gives the output gradients the outputs' dtype and device; an expanded one (of a sum) is made
        contiguous."""
        d_arrays = [None if d is None else d.contiguous().numpy(force=True) for d in d_finals]
        with threads.defaulting_to(torch.get_num_threads()):
            dx, d_states, rows = self.kernels.backward(ctx.record, d_arrays, need_dx)
        return (None if dx is None else dx[0]), d_states, rows

    def weight_gradients(self, rows: tuple) -> list:
        """The weights' gradients (torch.nn's layout) from rows (x, h_prev, dz) of one or many steps."""
        cell = self.stepper.cell
        with threads.defaulting_to(torch.get_num_threads()):
            grads = cell.weight_gradients(self.stepper.params, *rows)
        return cell.to_torch_grads(grads, self.has_bias)


_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> _KeptStep

# The weight gradients of a loop of steps are formed once, at the end of a backward pass, from every step's rows
# (input, previous state, dZ): one product per weight instead of one per step, and one gradient per weight for
# autograd to add instead of one per step. The steps hand their rows to a node that all of them take as input
# (_WeightsNode), which autograd runs after them. torch's engine says which pass runs (its graph task) and whether
# that node runs in it; where it does not say (a torch without these queries), each step computes its own.
_ENGINE_QUERIES = hasattr(torch._C, "_current_graph_task_id") and hasattr(torch._C, "_will_engine_execute_node")


class _DeferredWeightGradients:
    """The rows a kept step's calls recorded in backward passes, by graph task, and the token tensor that routes
    the weights' gradients through _WeightsNode."""

    def __init__(self, kept: _KeptStep, weights: list):
        self.kept, self.weights = kept, weights
        # Rows by graph task: passes can nest (a reentrant checkpoint's recomputation runs its own backward inside
        # another's) or run on other threads, and each forms its gradients from its own rows. A pass that fails
        # leaves its rows here until the weights change and this object goes with its _KeptStep.
        self.rows: dict = {}  # graph task -> [(x [B, D], h_prev [B, H], dz [B, columns]), ...]
        self.lock = threading.Lock()
        self.token, self.requiring, self.token_gradient = None, None, None

    def token_for_grad(self):
        """The token steps take as input, made in grad mode with the weights as its inputs, again when which of
        them require grad has changed (its node's edges lead to those that did)."""
        requiring = tuple([w is not None and w.requires_grad for w in self.weights])
        if self.token is None or requiring != self.requiring:
            self.token, self.requiring = _WeightsNode.apply(self, *self.weights), requiring
            self.token_gradient = self.token.new_empty(0)  # what a step's backward hands it: nothing but the edge
        return self.token

    def record(self, rows: tuple) -> None:
        with self.lock:
            self.rows.setdefault(torch._C._current_graph_task_id(), []).append(rows)

    def take(self) -> list:
        """The weights' gradients (torch.nn's layout) from the rows of the running pass, which it removes."""
        with self.lock:
            rows = self.rows.pop(torch._C._current_graph_task_id(), [])
        if not rows:
            return [None] * len(self.weights)
        return self.kept.weight_gradients(tuple(np.concatenate(parts) for parts in zip(*rows)))


class _WeightsNode(torch.autograd.Function):
    """The weights' side of a loop of steps: an empty token whose gradient, once every step of the pass has run,
    is the weights' (see _DeferredWeightGradients)."""

    @staticmethod
    def forward(ctx, deferred: _DeferredWeightGradients, *weights):
        ctx.deferred = deferred
        return weights[0].new_empty(0)

    @staticmethod
    @_first_order
    def backward(ctx, _):
        return (None, *(_to_torch(grad) for grad in ctx.deferred.take()))


def _cell_state(states):
    """A cell's state as the checked kernels take it from its (checked, contiguous) tensors: h [B, H], a pair
    (h, C) (a part None for zeros), or None for zeros."""
    arrays = [None if s is None else s.numpy(force=True) for s in states]
    if len(arrays) == 1:
        return arrays[0]
    return None if arrays[0] is None and arrays[1] is None else tuple(arrays)


def _check_weight_versions(kept: _KeptStep, weights: list, versions: list) -> None:
    """torch's "modified by an inplace operation" RuntimeError when a weight was edited in place since the step's
    forward, as torch.nn's cells raise it."""
    if _versions(weights) == versions:
        return
    for name, weight, version in zip(kept.stepper.cell.torch_parameters, weights, versions):
        if weight is not None and weight._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: {name} is at version {weight._version}; expected version {version} instead"
            )


class _DeferredStepFunction(torch.autograd.Function):
    """One step of a cell whose weight gradients are deferred to the end of the backward pass: its inputs are x,
    the states and the weights' token (_WeightsNode); backward hands the step's rows to the token's node when that
    node runs in the pass. The weights' versions at forward are kept: an in-place edit of one of them before
    backward raises torch's error where backward multiplies by them (for dx and the states' gradients), as for
    torch.nn's cells."""

    @staticmethod
    def forward(ctx, kept: _KeptStep, x, *tensors):
        states = tensors[:-1]
        ctx.token_node = tensors[-1].grad_fn
        ctx.versions = _versions(kept.deferred.weights)
        ctx.save_for_backward(x, *[t for t in states if t is not None])
        return kept.forward(ctx, x, states)

    @staticmethod
    @_first_order
    def backward(ctx, *d_finals):
        _check_saved_inputs(ctx)
        kept = ctx.kept
        deferred = kept.deferred
        needs = ctx.needs_input_grad[1:]  # x, the states, the token
        if any(needs[:-1]):  # the weights multiply dZ only for dx and the states' gradients, as in torch.nn's cells
            _check_weight_versions(kept, deferred.weights, ctx.versions)
        dx, d_states, rows = kept.backward(ctx, d_finals, needs[0])
        records = needs[-1] and torch._C._will_engine_execute_node(ctx.token_node)
        if records:
            deferred.record(rows)
        d_token = deferred.token_gradient if records else None
        return (None, *[_to_torch(r) if need else None for r, need in zip((dx, *d_states), needs)], d_token)


class _CellStepFunction(torch.autograd.Function):
    """One step of a cell as one autograd node, the weights among its inputs (each step forms its own weight
    gradients; _DeferredStepFunction adds them up at the end where torch's engine allows). The outputs are the
    module's own memory (copies of the step's [B, H] states), so an in-place edit of them cannot reach the
    gradients; the inputs and weights are saved, so that an in-place edit of one of them before backward raises
    torch's error, as torch.nn's cells do."""

    @staticmethod
    def forward(ctx, kept: _KeptStep, x, *tensors):
        states = tensors[: len(kept.sizes)]
        ctx.save_for_backward(x, *[t for t in tensors if t is not None])
        return kept.forward(ctx, x, states)

    @staticmethod
    @_first_order
    def backward(ctx, *d_finals):
        _check_saved_inputs(ctx)
        kept = ctx.kept
        parts = len(kept.sizes)
        needs = ctx.needs_input_grad[1:]  # x, the states, the weights
        dx, d_states, rows = kept.backward(ctx, d_finals, needs[0])
        d_weights = kept.weight_gradients(rows) if any(needs[1 + parts :]) else [None] * (len(needs) - 1 - parts)
        results = (dx, *d_states, *d_weights)
        return (None, *[_to_torch(r) if need else None for r, need in zip(results, needs)])


class _FastCell:
    """The forward that fastbptt.torch's RNNCell, LSTMCell and GRUCell put in place of torch.nn's. Where fastbptt
    cannot run a call (under torch.compile or torch.func's transforms, tensors off the CPU or of another dtype than
    float32/float64, an empty batch, dtypes or shapes that disagree, which torch.nn refuses), the call is torch.nn's
    own: its result, or its error. A Python loop calls it at every step: it checks what it must in few operations."""

    _state_parts = 1  # h; the LSTM's (h, C): 2

    def _cell(self) -> cells.Cell:
        raise NotImplementedError

    def _weights(self) -> list:
        """The weight tensors in torch.nn's order (None for a bias left out); a parametrized one is computed here."""
        own = self._parameters
        return [own[name] if name in own else getattr(self, name) for name in _CELL_WEIGHTS]

    def _kept(self, weights: list, dtype) -> _KeptStep | None:
        """The _KeptStep of the current weights and cell: the one kept while they are unchanged, else a new one
        (kept); None when the weights are not CPU tensors of ``dtype``."""
        kept = _KEPT.get(self)
        cell = self._cell()
        if kept is not None and kept.dtype == dtype and kept.stepper.cell is cell and kept.seen.same(weights):
            return kept
        if any(w is not None and (not w.is_cpu or w.dtype != dtype) for w in weights):
            return None
        kept = _KEPT[self] = _KeptStep(cell, weights, self.bias)
        return kept

    def _runs_here(self, input, states) -> bool:
        """Whether fastbptt can run a call with ``input`` and ``states`` (the weights are checked with the
        Stepper); the shapes are torch.nn's cells'."""
        if not isinstance(input, torch.Tensor) or torch.compiler.is_compiling():
            return False
        dtype, shape = input.dtype, input.shape
        if dtype not in _DTYPES or not input.is_cpu or len(shape) not in (1, 2) or shape[-1] != self.input_size:
            return False
        if shape[0] == 0:  # an empty batch: torch.nn's empty result
            return False
        expected = (*shape[:-1], self.hidden_size)
        for s in states:
            if s is not None and not (
                isinstance(s, torch.Tensor) and s.is_cpu and s.dtype == dtype and s.shape == expected
            ):
                return False
        return True

    def forward(self, input, hx=None):
        """h' (RNNCell, GRUCell) or (h', c') (LSTMCell), as torch.nn's cells."""
        parts = self._state_parts
        if hx is None:
            states = (None,) * parts
        elif parts == 1:
            states = (hx,)
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            states = tuple(hx)
        else:
            return super().forward(input, hx)
        if not self._runs_here(input, states):
            return super().forward(input, hx)
        weights = self._weights()
        if _under_functorch(input, *states, *weights):
            return super().forward(input, hx)
        kept = self._kept(weights, input.dtype)
        if kept is None:
            return super().forward(input, hx)
        if input.dim() == 2:
            finals = self._step(kept, input, states, weights)
        else:  # unbatched: a batch of one
            states = [None if s is None else s.unsqueeze(0) for s in states]
            finals = [f.squeeze(0) for f in self._step(kept, input.unsqueeze(0), states, weights)]
        return finals[0] if parts == 1 else tuple(finals)

    def _step(self, kept: _KeptStep, x, states, weights: list):
        """The step's final state parts for a batched call."""
        x = x.contiguous()
        states = [None if s is None else s.contiguous() for s in states]
        if torch.is_grad_enabled():
            weights_want_grad = any([w is not None and w.requires_grad for w in weights])
            if weights_want_grad and kept.deferred is not None:
                return _DeferredStepFunction.apply(kept, x, *states, kept.deferred.token_for_grad())
            if weights_want_grad or x.requires_grad or any([s is not None and s.requires_grad for s in states]):
                return _CellStepFunction.apply(kept, x, *states, *weights)
        stepper = kept.stepper  # nothing kept for a backward
        with threads.defaulting_to(torch.get_num_threads()):
            _, final, _ = stepper.cell.forward_checked(
                stepper.params, x.numpy(force=True)[None], _cell_state(states), None, True, stepper.packed
            )
        return [torch.from_numpy(f) for f in ((final,) if len(kept.sizes) == 1 else final)]


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch.nn's cells' parameters, in its order


class RNNCell(_FastCell, nn.RNNCell):
    """``torch.nn.RNNCell`` (an instance of it) whose forward and backward run fastbptt, its weights packed once
    while they are unchanged: ``nonlinearity`` "tanh" or "relu", batched or unbatched input, CPU float32/float64."""

    def _cell(self):
        return _cell_of("rnn", activation=self.nonlinearity)


class LSTMCell(_FastCell, nn.LSTMCell):
    """``torch.nn.LSTMCell`` (an instance of it) whose forward and backward run fastbptt, its weights packed once
    while they are unchanged: batched or unbatched input, CPU float32/float64."""

    _state_parts = 2

    def _cell(self):
        return _cell_of("lstm")


class GRUCell(_FastCell, nn.GRUCell):
    """``torch.nn.GRUCell`` (an instance of it) whose forward and backward run fastbptt, its weights packed once
    while they are unchanged: batched or unbatched input, CPU float32/float64."""

    def _cell(self):
        return _cell_of("gru")


# -- Adopting fastbptt in a model: convert / revert ----------------------------------------------------------------

_FASTBPTT_CLASS_OF = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
_TORCH_NN_CLASS_OF = {ours: theirs for theirs, ours in _FASTBPTT_CLASS_OF.items()}


def convert(model: nn.Module) -> nn.Module:
    """Makes every ``torch.nn.RNN``, ``LSTM`` and ``GRU`` in ``model`` (``model`` itself included) run fastbptt, in
    place, and returns ``model``.

    Each module changes class to fastbptt.torch's (a subclass of its torch.nn class), as
    ``torch.nn.utils.parametrize`` changes a module's class, so it stays the same object with all it carries: its
    Parameter objects (optimizers built before, tied and shared weights keep working), buffers, hooks of every kind
    and the handles that remove them, its training or eval mode, attributes set on it; a module reached twice in the
    model is one module. No copy is made, because a copy would have other Parameters; for one, convert
    ``copy.deepcopy(model)``. Modules fastbptt cannot run stay torch.nn's, each with a ``UserWarning`` naming its
    path in the model and the reason: parameters on a device other than the CPU or of a dtype other than float32 or
    float64, a subclass of a torch.nn class (its forward may differ; parametrized
    modules are such subclasses), a module compiled in place with ``module.compile()``. fastbptt.torch's modules are
    left as they are. :func:`revert` undoes it.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; its submodules at every depth (``Sequential``, ``ModuleList``, ``ModuleDict`` included) are
        visited.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    refused = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.RNNBase) or isinstance(module, _FastRecurrent):
            continue
        reason = _why_fastbptt_cannot_run(module)
        if reason is None:
            module.__class__ = _FASTBPTT_CLASS_OF[type(module)]
        else:
            refused.append((path, module, reason))
    for path, module, reason in refused:
        warnings.warn(
            f"fastbptt.torch.convert: {_where(path)} ({_class_name(module)}) stays as it is: {reason}",
            UserWarning,
            stacklevel=2,
        )
    return model


def revert(model: nn.Module) -> nn.Module:
    """Gives every fastbptt.torch ``RNN``, ``LSTM`` and ``GRU`` in ``model`` (``model`` itself included) back its
    torch.nn class, in place, and returns ``model``: the undoing of :func:`convert`, with the same Parameter objects,
    hooks and mode. A subclass of a fastbptt.torch class stays as it is, with a ``UserWarning`` naming its path.
    """
    for path, module in model.named_modules():
        if not isinstance(module, _FastRecurrent):
            continue
        if type(module) in _TORCH_NN_CLASS_OF:
            module.__class__ = _TORCH_NN_CLASS_OF[type(module)]
        else:
            warnings.warn(
                f"fastbptt.torch.revert: {_where(path)} ({_class_name(module)}) stays as it is: a subclass of a "
                "fastbptt.torch class, whose torch.nn counterpart revert cannot know",
                UserWarning,
                stacklevel=2,
            )
    return model


def _why_fastbptt_cannot_run(module: nn.RNNBase) -> str | None:
    """Why :func:`convert` leaves ``module`` as it is, or None when fastbptt runs it."""
    if type(module) not in _FASTBPTT_CLASS_OF:
        base = next((cls for cls in _FASTBPTT_CLASS_OF if isinstance(module, cls)), nn.RNNBase)
        return f"a subclass of torch.nn.{base.__name__}, not torch.nn.{base.__name__} itself: its forward may differ"
    if getattr(module, "_compiled_call_impl", None) is not None:  # older torch has no module.compile
        return "compiled in place with module.compile(), which calls torch.nn's forward"
    weights = [w for w in module._flat_weights if isinstance(w, torch.Tensor)]
    devices = sorted({str(w.device) for w in weights if w.device.type != "cpu"})
    if devices:
        return f"parameters on {', '.join(devices)} (fastbptt computes on the CPU)"
    dtypes = sorted({str(w.dtype) for w in weights if w.dtype not in _DTYPES})
    if dtypes:
        return f"parameters of dtype {', '.join(dtypes)} (fastbptt computes in torch.float32 or torch.float64)"
    return None


def _where(path: str) -> str:
    return f"'{path}'" if path else "the model itself"


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"torch.nn.{cls.__name__}" if cls in _FASTBPTT_CLASS_OF else f"{cls.__module__}.{cls.__qualname__}"


# Dynamo refuses to trace any torch.nn.RNN, LSTM or GRU, subclasses included, unless allow_rnn is set; fastbptt's
# modules are such subclasses (isinstance must hold), and under torch.compile they call the custom operators above.
torch._dynamo.config.allow_rnn = True

# Whole-model checkpoints holding these modules load with torch.load's default weights_only=True, as models holding
# torch.nn's modules do.
torch.serialization.add_safe_globals([RNN, LSTM, GRU, Recurrent, LayerNormLSTM, RNNCell, LSTMCell, GRUCell])
