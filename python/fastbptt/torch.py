"""Drop-in ``torch.nn.RNN`` / ``torch.nn.LSTM`` modules whose forward and backward run fastbptt's kernels.

The modules keep PyTorch's constructor arguments, parameter names and return values, so ``load_state_dict``
works in both directions and existing training code needs no other change. Tensors reach the core as NumPy
views of the same memory; only what the layout requires is copied (the transposed weights, a batch_first or
otherwise non-contiguous input). CPU only, float32 or float64. Importing ``fastbptt`` never imports this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import functional as _kernels

__all__ = ["LSTM", "RNN"]


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


def _combined_bias(bias_ih, bias_hh, rows: int, dtype) -> np.ndarray:
    """fastbptt's one bias is the sum of torch's two (zeros when the module has bias=False)."""
    if bias_ih is None:
        return np.zeros(rows, dtype=dtype)
    return _as_numpy(bias_ih, "bias_ih") + _as_numpy(bias_hh, "bias_hh")


def _to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


def _upstream_with_final_state(d_output: torch.Tensor, d_h_n: torch.Tensor) -> np.ndarray:
    """dL/dh_t for every step: h_n is also the last output, so its gradient adds to the last step's."""
    dhs = np.array(_as_numpy(d_output, "grad of output"))  # a writable copy; torch's may be broadcast
    dhs[-1] += _as_numpy(d_h_n, "grad of h_n")
    return dhs


def _weight_grads(needs, dx, d_states, dW_x, dW_h, db, has_bias):
    """Gradients in the order of the Function's inputs: x, states..., weight_ih, weight_hh, bias_ih, bias_hh."""
    grads = [_to_torch(dx), *(_to_torch(d) for d in d_states), _to_torch(dW_x).T, _to_torch(dW_h).T]
    # Two arrays, not one shared by both biases: in-place updates of one .grad (clipping) must not touch the other.
    grads += [_to_torch(db), _to_torch(db.copy())] if has_bias else [None, None]
    return tuple(g if need else None for g, need in zip(grads, needs))


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        xn = _as_numpy(x, "input")
        b = _combined_bias(bias_ih, bias_hh, weight_hh.shape[0], xn.dtype)
        hs, cache = _kernels.rnn_forward(
            xn,
            _as_numpy(weight_ih, "weight_ih").T,
            _as_numpy(weight_hh, "weight_hh").T,
            b,
            _as_numpy(h0, "h0"),
            activation=nonlinearity,
        )
        ctx.cache, ctx.has_bias = cache, bias_ih is not None
        return _to_torch(hs), _to_torch(hs[-1].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n):
        g = _kernels.rnn_backward(ctx.cache, _upstream_with_final_state(d_output, d_h_n))
        return (
            *_weight_grads(ctx.needs_input_grad[:6], g.dx, [g.dh0], g.dW_xh, g.dW_hh, g.db_h, ctx.has_bias),
            None,
        )


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
        xn = _as_numpy(x, "input")
        b = _combined_bias(bias_ih, bias_hh, weight_hh.shape[0], xn.dtype)
        hs, c_T, cache = _kernels.lstm_forward(
            xn,
            _as_numpy(weight_ih, "weight_ih").T,
            _as_numpy(weight_hh, "weight_hh").T,
            b,
            _as_numpy(h0, "h0"),
            _as_numpy(c0, "c0"),
        )
        ctx.cache, ctx.has_bias = cache, bias_ih is not None
        return _to_torch(hs), _to_torch(hs[-1].copy()), _to_torch(c_T)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n, d_c_n):
        g = _kernels.lstm_backward(
            ctx.cache, _upstream_with_final_state(d_output, d_h_n), _as_numpy(d_c_n, "grad of c_n")
        )
        return _weight_grads(ctx.needs_input_grad, g.dx, [g.dh0, g.dc0], g.dW_x, g.dW_h, g.db, ctx.has_bias)


class _FastRecurrent(nn.Module):
    """Constructor checks, parameters and input plumbing shared by RNN and LSTM (one layer, one direction)."""

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
        given = {
            "num_layers": (num_layers, 1),
            "dropout": (dropout, 0.0),
            "bidirectional": (bidirectional, False),
        }
        not_yet = {name: value for name, (value, default) in given.items() if value != default}
        not_yet.update(unsupported)
        if not_yet:
            raise NotImplementedError(
                f"{type(self).__name__}: fastbptt does not support {not_yet} yet "
                "(one layer, one direction, no dropout); use torch.nn for them"
            )
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device: fastbptt computes on the CPU, got {device}")
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = 1, bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = 0.0, False
        factory = {"dtype": dtype}
        rows = self.gates * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh_l0 = nn.Parameter(torch.empty(rows, hidden_size, **factory))
        if self.bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh_l0 = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: every parameter ``U(-1/sqrt(H), 1/sqrt(H))``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def _prepare(self, input, hx_parts):
        """Time-major, batched input and [B, H] states; returns them and how to put outputs back."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise NotImplementedError("PackedSequence input is not supported by fastbptt yet; pass a padded tensor")
        if input.dim() not in (2, 3):
            raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        B = x.shape[1]
        states = []
        for name, state in hx_parts:
            if state is None:
                states.append(torch.zeros(B, self.hidden_size, dtype=x.dtype, device=x.device))
                continue
            expected = (1, B, self.hidden_size) if batched else (1, self.hidden_size)
            if tuple(state.shape) != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(state.shape)}")
            states.append(state.reshape(B, self.hidden_size))
        return x, states, batched

    def _restore(self, output, finals, batched):
        if batched:
            output = output.transpose(0, 1) if self.batch_first else output
            return output, [f.unsqueeze(0) for f in finals]
        return output.squeeze(1), list(finals)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, batch_first={self.batch_first}"


class RNN(_FastRecurrent):
    """``torch.nn.RNN`` (one layer, one direction) computed by fastbptt: ``nonlinearity`` "tanh" or "relu"."""

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

    def forward(self, input, hx=None):
        """Returns ``(output, h_n)`` as ``torch.nn.RNN`` does."""
        x, (h0,), batched = self._prepare(input, [("hx", hx)])
        output, h_n = _RNNFunction.apply(
            x, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0, self.nonlinearity
        )
        output, (h_n,) = self._restore(output, [h_n], batched)
        return output, h_n

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTM(_FastRecurrent):
    """``torch.nn.LSTM`` (one layer, one direction, no projection) computed by fastbptt."""

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

    def forward(self, input, hx=None):
        """Returns ``(output, (h_n, c_n))`` as ``torch.nn.LSTM`` does."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError("hx: expected a pair (h_0, c_0) for the LSTM")
        h0, c0 = (None, None) if hx is None else hx
        x, (h0, c0), batched = self._prepare(input, [("h_0", h0), ("c_0", c0)])
        output, h_n, c_n = _LSTMFunction.apply(
            x, h0, c0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0
        )
        output, (h_n, c_n) = self._restore(output, [h_n, c_n], batched)
        return output, (h_n, c_n)
