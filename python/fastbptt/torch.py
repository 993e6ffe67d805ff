"""Drop-in ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` modules whose forward and backward run fastbptt's kernels.

The modules keep PyTorch's constructor arguments, parameter names and return values, so ``load_state_dict``
works in both directions and existing training code needs no other change. Tensors reach the core as NumPy
views of the same memory; only what the layout requires is copied (the transposed weights, a batch_first or
otherwise non-contiguous input). Stacked layers, both directions, dropout between layers (torch's own) and
``PackedSequence`` input (run as a padded batch with per-sequence lengths) work as in torch.nn. CPU only, float32
or float64. Importing ``fastbptt`` never imports this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _core, cells, stack
from . import functional as _kernels

__all__ = ["GRU", "LSTM", "RNN"]


def _as_numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of ``tensor``'s memory (no copy)."""
    if tensor.device.type != "cpu":
        raise ValueError(
            f"{name}: fastbptt computes on the CPU; got a tensor on {tensor.device} "
            "(move it with .cpu(), or use torch.nn for GPU tensors)"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {tensor.dtype}")
    return tensor.detach().numpy()


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


class _Stack:
    """What one call of a module runs: the cell, the stack's shape, the lengths and the dropout masks."""

    def __init__(self, module: _FastRecurrent, lengths, masks):
        self.cell = module._cell_kind()
        self.num_layers, self.num_directions = module.num_layers, module.num_directions
        self.has_bias = module.bias
        self.lengths, self.masks = lengths, masks
        self.cells = self.num_layers * self.num_directions
        self.state_parts = self.cell.state_parts

    def options(self) -> dict:
        return {"num_layers": self.num_layers, "num_directions": self.num_directions, "concurrent": True}

    def params(self, flat_params) -> list:
        """Each cell's kernel parameters from torch's four tensors per cell (views where the layout allows)."""
        params = []
        for k in range(self.cells):
            four = flat_params[4 * k : 4 * k + 4]
            arrays = [None if t is None else _as_numpy(t, "parameter") for t in four]
            params.append(self.cell.from_torch(*arrays))
        return params

    def cell_states(self, parts) -> list:
        """Per-cell states from ``state_parts`` arrays [cells, B, H]."""
        if self.state_parts == 1:
            return [parts[0][k] for k in range(self.cells)]
        return [tuple(part[k] for part in parts) for k in range(self.cells)]


class _StackFunction(torch.autograd.Function):
    """The whole stack of a module as one autograd node: forward and backward run fastbptt.stack's driver, so the
    directions of a layer run side by side and give the one-thread bits, as in the NumPy layers."""

    @staticmethod
    def forward(ctx, run: _Stack, x, *tensors):
        states = tensors[: run.state_parts]
        flat_params = tensors[run.state_parts :]
        xn = _as_numpy(x, "input")
        parts = [_as_numpy(state, name) for state, name in zip(states, ("h_0", "c_0"))]
        params = run.params(flat_params)
        outputs, finals, cache = stack.forward(
            run.cell.forward, params, xn, run.cell_states(parts), run.lengths, masks=run.masks, **run.options()
        )
        ctx.run, ctx.params, ctx.cache = run, params, cache
        ctx.save_for_backward(x, *states, *(t for t in flat_params if t is not None))
        final_parts = [np.stack([f if run.state_parts == 1 else f[i] for f in finals]) for i in range(run.state_parts)]
        return (_output(outputs), *(torch.from_numpy(part) for part in final_parts))

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, *d_finals):
        _check_saved_inputs(ctx)
        run = ctx.run
        d_outputs = _as_numpy(d_output, "grad of output")  # the cells copy it where they add a final-state gradient
        d_parts = [_as_numpy(d, "grad of final state") for d in d_finals]
        dx, dstates0, grads = stack.backward(
            run.cell.backward, ctx.params, ctx.cache, d_outputs, run.cell_states(d_parts), **run.options()
        )
        d_states = [np.stack([d if run.state_parts == 1 else d[i] for d in dstates0]) for i in range(run.state_parts)]
        d_params = [grad for cell_grads in grads for grad in run.cell.to_torch_grads(cell_grads, run.has_bias)]
        results = [dx, *d_states, *d_params]
        needs = ctx.needs_input_grad[1:]
        return (None, *(_to_torch(r) if need else None for r, need in zip(results, needs)))


def _check_saved_inputs(ctx) -> None:
    """Raises torch's "modified by an inplace operation" RuntimeError when an input that backward reads through
    the cache (the sequence, the initial states, the weights) was edited in place since forward, as torch.nn does."""
    ctx.saved_tensors  # noqa: B018 - unpacking is what checks the version counters


class _FastRecurrent(nn.Module):
    """Constructor checks, parameters and input plumbing shared by RNN, LSTM and GRU."""

    gates = 1

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
        **unsupported,
    ):
        super().__init__()
        if unsupported:
            raise NotImplementedError(
                f"{type(self).__name__}: fastbptt does not support {unsupported} yet; use torch.nn for it"
            )
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device: fastbptt computes on the CPU, got {device}")
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = num_layers, bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        factory = {"dtype": dtype}
        rows = self.gates * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.num_directions * hidden_size
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                setattr(self, "weight_ih" + suffix, nn.Parameter(torch.empty(rows, layer_input, **factory)))
                setattr(self, "weight_hh" + suffix, nn.Parameter(torch.empty(rows, hidden_size, **factory)))
                if self.bias:
                    setattr(self, "bias_ih" + suffix, nn.Parameter(torch.empty(rows, **factory)))
                    setattr(self, "bias_hh" + suffix, nn.Parameter(torch.empty(rows, **factory)))
                else:
                    self.register_parameter("bias_ih" + suffix, None)
                    self.register_parameter("bias_hh" + suffix, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: every parameter ``U(-1/sqrt(H), 1/sqrt(H))``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def _cell_weights(self, layer: int, direction: int) -> list:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return [getattr(self, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _cell_kind(self):
        """The cell (:mod:`fastbptt.cells`) on the compiled core's kernels."""
        raise NotImplementedError

    def _dropout_masks(self, T: int, B: int, dtype) -> list | None:
        """torch.nn's dropout between layers as masks (kept units scaled by 1 / (1 - p)), drawn from torch's RNG."""
        if not (self.dropout and self.training and self.num_layers > 1):
            return None
        shape, keep = (T, B, self.num_directions * self.hidden_size), 1.0 - self.dropout
        masks = []
        for _ in range(self.num_layers - 1):
            mask = torch.zeros(shape, dtype=dtype) if keep == 0 else torch.empty(shape, dtype=dtype).bernoulli_(keep)
            masks.append(mask.div_(keep).numpy() if keep else mask.numpy())
        return [*masks, None]

    def _run(self, input, hx_parts: list):
        """The whole stack over ``input`` (padded tensor or PackedSequence) from the states ``hx_parts`` (a list of
        tensors [layers * directions, (B,) H], or Nones); returns (output in the input's form, final states)."""
        packed = isinstance(input, nn.utils.rnn.PackedSequence)
        if packed:
            x, lengths_tensor = nn.utils.rnn.pad_packed_sequence(input)
            lengths = lengths_tensor.numpy().astype(np.int64)
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        B, cells = x.shape[1], self.num_layers * self.num_directions
        states = []
        for name, state in hx_parts:
            if state is None:
                states.append(torch.zeros(cells, B, self.hidden_size, dtype=x.dtype, device=x.device))
                continue
            expected = (cells, B, self.hidden_size) if batched else (cells, self.hidden_size)
            if tuple(state.shape) != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(state.shape)}")
            states.append(state.reshape(cells, B, self.hidden_size))
        weights = [
            w
            for layer in range(self.num_layers)
            for d in range(self.num_directions)
            for w in self._cell_weights(layer, d)
        ]
        run = _Stack(self, lengths, self._dropout_masks(x.shape[0], B, x.dtype))
        layer_input, *final_states = _StackFunction.apply(run, x.contiguous(), *states, *weights)
        if packed:
            output = nn.utils.rnn.pack_padded_sequence(layer_input, lengths_tensor, enforce_sorted=False)
            return output, final_states
        if not batched:
            return layer_input.squeeze(1), [f.squeeze(1) for f in final_states]
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), final_states

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        text += f", bias={self.bias}, batch_first={self.batch_first}"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        return text


class RNN(_FastRecurrent):
    """``torch.nn.RNN`` computed by fastbptt: ``nonlinearity`` "tanh" or "relu", stacked, bidirectional,
    padded or packed input."""

    gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)

    def _cell_kind(self):
        return cells.RNNCell(_kernels, self.nonlinearity)

    def forward(self, input, hx=None):
        """Returns ``(output, h_n)`` as ``torch.nn.RNN`` does."""
        output, (h_n,) = self._run(input, [("hx", hx)])
        return output, h_n

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTM(_FastRecurrent):
    """``torch.nn.LSTM`` (no projection) computed by fastbptt: stacked, bidirectional, padded or packed input."""

    gates = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        extra = {"proj_size": proj_size} if proj_size else {}
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            **extra,
        )
        self.proj_size = 0

    def _cell_kind(self):
        return cells.LSTMCell(_kernels)

    def forward(self, input, hx=None):
        """Returns ``(output, (h_n, c_n))`` as ``torch.nn.LSTM`` does."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError("hx: expected a pair (h_0, c_0) for the LSTM")
        h0, c0 = (None, None) if hx is None else hx
        output, (h_n, c_n) = self._run(input, [("h_0", h0), ("c_0", c0)])
        return output, (h_n, c_n)


class GRU(_FastRecurrent):
    """``torch.nn.GRU`` computed by fastbptt: stacked, bidirectional, padded or packed input."""

    gates = 3

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
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)

    def _cell_kind(self):
        return cells.GRUCell(_kernels)

    def forward(self, input, hx=None):
        """Returns ``(output, h_n)`` as ``torch.nn.GRU`` does."""
        output, (h_n,) = self._run(input, [("hx", hx)])
        return output, h_n
