"""What the stack driver, the NumPy layers and fastbptt.torch know of a cell, in one place per cell.

A cell object runs one cell (one layer and direction) forward and backward with the kernels of a backend
(:mod:`fastbptt.kernels.functional` or :mod:`fastbptt.reference`), on a dict of its parameters by base name, and maps
torch.nn's four tensors (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) to those parameters and the
parameters' gradients back. States are an array ``[B, H]`` for a cell of one state part (h) and a pair of them for
two (h, C); None means zeros (forward) or no gradient (backward).
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .conversions import gru_weights_from_torch
from .sequences import final_states


def with_final_state_gradient(dhs: np.ndarray, dh_T, hs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """``dhs`` with ``dh_T`` added at each sequence's last step (h there is both an output and the final state)."""
    if dh_T is None:
        return dhs
    checked = _checks.upstream("dhs", dhs, hs.dtype, hs.shape, "[T, B, H]")
    dhs = checked.copy() if np.may_share_memory(checked, dhs) else checked  # the caller's array stays as it was
    dh_T = _checks.upstream("dh_T", dh_T, hs.dtype, hs.shape[1:], "[B, H]")
    if lengths is None:
        dhs[-1] += dh_T
    else:
        dhs[lengths - 1, np.arange(hs.shape[1])] += dh_T
    return dhs


class _SummedBiasCell:
    """torch.nn's mapping for a cell with parameters (W_x, W_h, b) whose one bias is the sum of torch's two."""

    base_names: tuple[str, str, str]

    def from_torch(self, weight_ih, weight_hh, bias_ih, bias_hh):
        W_x, W_h, b = self.base_names
        summed = np.zeros(weight_hh.shape[0], weight_hh.dtype) if bias_ih is None else bias_ih + bias_hh
        return {W_x: weight_ih.T, W_h: weight_hh.T, b: summed}

    def to_torch_grads(self, grads, has_bias):
        dW_x, dW_h, db = (grads[name] for name in self.base_names)
        # Two arrays, not one shared by both biases: in-place updates of one .grad (clipping) must not touch the other.
        return [dW_x.T, dW_h.T, *((db, db.copy()) if has_bias else (None, None))]


class RNNCell(_SummedBiasCell):
    """``h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h)``."""

    state_parts = 1
    base_names = ("W_xh", "W_hh", "b_h")

    def __init__(self, kernels, activation: str = "tanh"):
        self.kernels, self.activation = kernels, activation

    def forward(self, p, x, h0, lengths):
        hs, cache = self.kernels.rnn_forward(
            x, p["W_xh"], p["W_hh"], p["b_h"], h0, activation=self.activation, lengths=lengths
        )
        return hs, final_states(hs, lengths), cache

    def backward(self, p, cache, dhs, dh_T):
        grads = self.kernels.rnn_backward(cache, with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths))
        return grads.dx, grads.dh0, {"W_xh": grads.dW_xh, "W_hh": grads.dW_hh, "b_h": grads.db_h}

    @staticmethod
    def state_at(cache, step):
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()


class LSTMCell(_SummedBiasCell):
    """The LSTM, gate blocks i, f, g, o (i, g, o without forget gate); states ``(h, C)``."""

    state_parts = 2
    base_names = ("W_x", "W_h", "b")

    def __init__(self, kernels, forget_gate: bool = True):
        self.kernels, self.forget_gate = kernels, forget_gate

    def forward(self, p, x, state, lengths):
        h0, c0 = (None, None) if state is None else state
        hs, c_T, cache = self.kernels.lstm_forward(
            x, p["W_x"], p["W_h"], p["b"], h0, c0, forget_gate=self.forget_gate, lengths=lengths
        )
        return hs, (final_states(hs, lengths), c_T), cache

    def backward(self, p, cache, dhs, dstate):
        dh_T, dc_T = (None, None) if dstate is None else dstate
        dhs = with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        grads = self.kernels.lstm_backward(cache, dhs, dc_T)
        return grads.dx, (grads.dh0, grads.dc0), {"W_x": grads.dW_x, "W_h": grads.dW_h, "b": grads.db}

    @staticmethod
    def state_at(cache, step):
        if step == 0:
            return cache.h0.copy(), cache.c0.copy()
        return cache.hs[step - 1].copy(), cache.cs[step - 1].copy()


class GRUCell:
    """PyTorch's GRU: gate blocks r, z, n, the recurrent bias of n (``b_hn``) inside the reset product."""

    state_parts = 1
    base_names = ("W_x", "W_h", "b", "b_hn")

    def __init__(self, kernels):
        self.kernels = kernels

    def forward(self, p, x, h0, lengths):
        hs, cache = self.kernels.gru_forward(x, p["W_x"], p["W_h"], p["b"], p["b_hn"], h0, lengths=lengths)
        return hs, final_states(hs, lengths), cache

    def backward(self, p, cache, dhs, dh_T):
        grads = self.kernels.gru_backward(cache, with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths))
        return grads.dx, grads.dh0, {"W_x": grads.dW_x, "W_h": grads.dW_h, "b": grads.db, "b_hn": grads.db_hn}

    @staticmethod
    def state_at(cache, step):
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()

    @staticmethod
    def from_torch(weight_ih, weight_hh, bias_ih, bias_hh):
        W_x, W_h, b, b_hn = gru_weights_from_torch(weight_ih, weight_hh, bias_ih, bias_hh)
        return {"W_x": W_x, "W_h": W_h, "b": b, "b_hn": b_hn}

    @staticmethod
    def to_torch_grads(grads, has_bias):
        db, db_hn = grads["b"], grads["b_hn"]
        H = db_hn.shape[0]
        biases = (db, np.concatenate([db[: 2 * H], db_hn])) if has_bias else (None, None)
        return [grads["W_x"].T, grads["W_h"].T, *biases]
