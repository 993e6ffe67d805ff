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

from . import _core
from . import functional as _kernels
from .conversions import gru_weights_from_torch
from .sequences import final_states

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


def _combined_bias(bias_ih, bias_hh, rows: int, dtype) -> np.ndarray:
    """fastbptt's one bias is the sum of torch's two (zeros when the module has bias=False)."""
    if bias_ih is None:
        return np.zeros(rows, dtype=dtype)
    return _as_numpy(bias_ih, "bias_ih") + _as_numpy(bias_hh, "bias_hh")


def _to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


def _output(hs: np.ndarray) -> torch.Tensor:
    """The module's output: a copy of the states ``hs``, which the cache keeps (read-only) for backward.

    Handing out the cache's own memory would let an in-place edit of the output (``out.mul_(2)``, an in-place
    activation or residual sum after the layer) change the weight gradients silently; torch.nn's output is its
    own memory too, and such edits are harmless there.
    """
    return torch.from_numpy(_core.copy_array(hs))


def _check_saved_inputs(ctx) -> None:
    """Raises torch's "modified by an inplace operation" RuntimeError when an input that backward reads through
    the cache (the sequence, the initial states, the weights) was edited in place since forward, as torch.nn does."""
    ctx.saved_tensors  # noqa: B018 - unpacking is what checks the version counters


def _upstream_with_final_state(d_output: torch.Tensor, d_h_n: torch.Tensor, lengths) -> np.ndarray:
    """dL/dh_t for every step: h_n is also the output of each sequence's last step, so its gradient adds there."""
    dhs = np.array(_as_numpy(d_output, "grad of output"))  # a writable copy; torch's may be broadcast
    d_h_n = _as_numpy(d_h_n, "grad of h_n")
    if lengths is None:
        dhs[-1] += d_h_n
    else:
        dhs[lengths - 1, np.arange(dhs.shape[1])] += d_h_n
    return dhs


def _masked(grads, needs):
    return tuple(g if need else None for g, need in zip(grads, needs))


def _weight_grads(dW_x, dW_h, db, has_bias):
    """Gradients of weight_ih, weight_hh, bias_ih, bias_hh for cells whose one bias is the sum of torch's two."""
    # Two arrays, not one shared by both biases: in-place updates of one .grad (clipping) must not touch the other.
    biases = [_to_torch(db), _to_torch(db.copy())] if has_bias else [None, None]
    return [_to_torch(dW_x).T, _to_torch(dW_h).T, *biases]


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, lengths):
        xn = _as_numpy(x, "input")
        b = _combined_bias(bias_ih, bias_hh, weight_hh.shape[0], xn.dtype)
        hs, cache = _kernels.rnn_forward(
            xn,
            _as_numpy(weight_ih, "weight_ih").T,
            _as_numpy(weight_hh, "weight_hh").T,
            b,
            _as_numpy(h0, "h0"),
            activation=nonlinearity,
            lengths=lengths,
        )
        ctx.cache, ctx.has_bias = cache, bias_ih is not None
        ctx.save_for_backward(x, h0, weight_ih, weight_hh)
        return _output(hs), _to_torch(final_states(hs, lengths))

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n):
        _check_saved_inputs(ctx)
        c = ctx.cache
        g = _kernels.rnn_backward(c, _upstream_with_final_state(d_output, d_h_n, c.lengths))
        grads = [_to_torch(g.dx), _to_torch(g.dh0), *_weight_grads(g.dW_xh, g.dW_hh, g.db_h, ctx.has_bias)]
        return (*_masked(grads, ctx.needs_input_grad), None, None)


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, lengths):
        xn = _as_numpy(x, "input")
        b = _combined_bias(bias_ih, bias_hh, weight_hh.shape[0], xn.dtype)
        hs, c_T, cache = _kernels.lstm_forward(
            xn,
            _as_numpy(weight_ih, "weight_ih").T,
            _as_numpy(weight_hh, "weight_hh").T,
            b,
            _as_numpy(h0, "h0"),
            _as_numpy(c0, "c0"),
            lengths=lengths,
        )
        ctx.cache, ctx.has_bias = cache, bias_ih is not None
        ctx.save_for_backward(x, h0, c0, weight_ih, weight_hh)
        return _output(hs), _to_torch(final_states(hs, lengths)), _to_torch(c_T)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n, d_c_n):
        _check_saved_inputs(ctx)
        c = ctx.cache
        g = _kernels.lstm_backward(
            c, _upstream_with_final_state(d_output, d_h_n, c.lengths), _as_numpy(d_c_n, "grad of c_n")
        )
        grads = [
            _to_torch(g.dx),
            _to_torch(g.dh0),
            _to_torch(g.dc0),
            *_weight_grads(g.dW_x, g.dW_h, g.db, ctx.has_bias),
        ]
        return (*_masked(grads, ctx.needs_input_grad), None)


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths):
        xn = _as_numpy(x, "input")
        W_x, W_h, b, b_hn = gru_weights_from_torch(
            _as_numpy(weight_ih, "weight_ih"),
            _as_numpy(weight_hh, "weight_hh"),
            None if bias_ih is None else _as_numpy(bias_ih, "bias_ih"),
            None if bias_hh is None else _as_numpy(bias_hh, "bias_hh"),
        )
        hs, cache = _kernels.gru_forward(xn, W_x, W_h, b, b_hn, _as_numpy(h0, "h0"), lengths=lengths)
        ctx.cache, ctx.has_bias = cache, bias_ih is not None
        ctx.save_for_backward(x, h0, weight_ih, weight_hh)
        return _output(hs), _to_torch(final_states(hs, lengths))

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n):
        _check_saved_inputs(ctx)
        c = ctx.cache
        g = _kernels.gru_backward(c, _upstream_with_final_state(d_output, d_h_n, c.lengths))
        H = g.db_hn.shape[0]
        if ctx.has_bias:
            biases = [_to_torch(g.db), _to_torch(np.concatenate([g.db[: 2 * H], g.db_hn]))]
        else:
            biases = [None, None]
        grads = [_to_torch(g.dx), _to_torch(g.dh0), _to_torch(g.dW_x).T, _to_torch(g.dW_h).T, *biases]
        return (*_masked(grads, ctx.needs_input_grad), None)


def _reverse(x: torch.Tensor, lengths) -> torch.Tensor:
    """Each sequence of time-major x reversed within its length (a differentiable gather)."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    steps = np.arange(T)[:, None]
    source = torch.from_numpy(np.where(steps < lengths, lengths - 1 - steps, steps))
    return x[source, torch.arange(B)]


class _FastRecurrent(nn.Module):
    """Constructor checks, parameters and input plumbing shared by RNN, LSTM and GRU."""

    gates = 1
    state_parts = 1

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

    def _cell(self, x, state: list, weights: list, lengths):
        """(output, *final state) of one layer and direction."""
        raise NotImplementedError

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
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                source = _reverse(layer_input, lengths) if direction else layer_input
                output, *final = self._cell(
                    source.contiguous(), [s[k] for s in states], self._cell_weights(layer, direction), lengths
                )
                outputs.append(_reverse(output, lengths) if direction else output)
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer + 1 < self.num_layers:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        final_states = [torch.stack([f[part] for f in finals]) for part in range(self.state_parts)]
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

    def _cell(self, x, state, weights, lengths):
        return _RNNFunction.apply(x, state[0], *weights, self.nonlinearity, lengths)

    def forward(self, input, hx=None):
        """Returns ``(output, h_n)`` as ``torch.nn.RNN`` does."""
        output, (h_n,) = self._run(input, [("hx", hx)])
        return output, h_n

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTM(_FastRecurrent):
    """``torch.nn.LSTM`` (no projection) computed by fastbptt: stacked, bidirectional, padded or packed input."""

    gates = 4
    state_parts = 2

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

    def _cell(self, x, state, weights, lengths):
        return _LSTMFunction.apply(x, state[0], state[1], *weights, lengths)

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

    def _cell(self, x, state, weights, lengths):
        return _GRUFunction.apply(x, state[0], *weights, lengths)

    def forward(self, input, hx=None):
        """Returns ``(output, h_n)`` as ``torch.nn.GRU`` does."""
        output, (h_n,) = self._run(input, [("hx", hx)])
        return output, h_n
