"""Weight layout conversions between fastbptt and ``torch.nn.LSTM`` / ``torch.nn.GRU`` (NumPy arrays only; torch
is not imported).

torch keeps ``weight_ih [4H, D]``, ``weight_hh [4H, H]`` and two biases, gate row blocks i, f, g, o; fastbptt keeps
the transposes ``W_x [D, 4H]``, ``W_h [H, 4H]`` in the same block order and one bias ``b = bias_ih + bias_hh``.
"""

from __future__ import annotations

import numpy as np

from . import _checks


def _torch_weights(weight_ih, weight_hh, G: int):
    """Validated ``(weight_ih [G*H, D], weight_hh [G*H, H], H)`` of one torch.nn layer and direction."""
    weight_hh = _checks.matrix("weight_hh", weight_hh, None)
    H = weight_hh.shape[1]
    _checks.check_shape("weight_hh", weight_hh, (G * H, H), f"[{G}H, H]")
    weight_ih = _checks.matrix("weight_ih", weight_ih, weight_hh.dtype, like="weight_hh")
    if weight_ih.shape[0] != G * H:
        raise ValueError(f"weight_ih: expected shape [{G}H, D] = ({G * H}, D), got {weight_ih.shape}")
    return weight_ih, weight_hh, H


def _torch_bias(name: str, bias, like: np.ndarray, G: int, H: int) -> np.ndarray:
    bias = _checks.float_array(name, bias, like.dtype, like="weight_hh")
    _checks.check_shape(name, bias, (G * H,), f"[{G}H]")
    return bias


def _fastbptt_weights(W_x, W_h, G: int, hint: str = ""):
    """Validated ``(W_x [D, G*H], W_h [H, G*H], H)`` of fastbptt's layout."""
    W_h = _checks.matrix("W_h", W_h, None)
    H = W_h.shape[0]
    _checks.check_shape("W_h", W_h, (H, G * H), f"[H, {G}H]{hint}")
    W_x = _checks.matrix("W_x", W_x, W_h.dtype, like="W_h")
    if W_x.shape[1] != G * H:
        raise ValueError(f"W_x: expected shape [D, {G}H] = (D, {G * H}), got {W_x.shape}")
    return W_x, W_h, H


def lstm_weights_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """``(W_x [D,4H], W_h [H,4H], b [4H])`` from the parameters of one ``torch.nn.LSTM`` layer and direction.

    Pass ``tensor.detach().numpy()`` for each parameter; a missing bias (``bias=False``) counts as zeros.
    """
    weight_ih, weight_hh, H = _torch_weights(weight_ih, weight_hh, 4)
    b = np.zeros(4 * H, dtype=weight_hh.dtype)
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            b += _torch_bias(name, bias, weight_hh, 4, H)
    return np.ascontiguousarray(weight_ih.T), np.ascontiguousarray(weight_hh.T), b


def lstm_weights_to_torch(W_x, W_h, b):
    """``(weight_ih [4H,D], weight_hh [4H,H], bias_ih [4H], bias_hh [4H])`` for ``torch.nn.LSTM``.

    The whole bias goes to ``bias_ih``; ``bias_hh`` is zeros (only their sum matters to the LSTM).
    """
    W_x, W_h, H = _fastbptt_weights(W_x, W_h, 4, " (torch has only the cell with forget gate)")
    dtype = W_h.dtype
    b = _checks.float_array("b", b, dtype, like="W_h")
    _checks.check_shape("b", b, (4 * H,), "[4H]")
    return np.ascontiguousarray(W_x.T), np.ascontiguousarray(W_h.T), b.copy(), np.zeros_like(b)


def gru_weights_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """``(W_x [D,3H], W_h [H,3H], b [3H], b_hn [H])`` from the parameters of one ``torch.nn.GRU`` layer and
    direction (row blocks r, z, n).

    ``b`` is ``bias_ih`` plus the r and z blocks of ``bias_hh``; the n block of ``bias_hh`` becomes ``b_hn``. Pass
    ``tensor.detach().numpy()`` for each parameter; a missing bias (``bias=False``) counts as zeros.
    """
    weight_ih, weight_hh, H = _torch_weights(weight_ih, weight_hh, 3)
    b = np.zeros(3 * H, dtype=weight_hh.dtype)
    b_hn = np.zeros(H, dtype=weight_hh.dtype)
    if bias_ih is not None:
        b += _torch_bias("bias_ih", bias_ih, weight_hh, 3, H)
    if bias_hh is not None:
        bias_hh = _torch_bias("bias_hh", bias_hh, weight_hh, 3, H)
        b[: 2 * H] += bias_hh[: 2 * H]
        b_hn += bias_hh[2 * H :]
    return np.ascontiguousarray(weight_ih.T), np.ascontiguousarray(weight_hh.T), b, b_hn


def gru_weights_to_torch(W_x, W_h, b, b_hn):
    """``(weight_ih [3H,D], weight_hh [3H,H], bias_ih [3H], bias_hh [3H])`` for ``torch.nn.GRU``.

    ``bias_ih`` is ``b``; ``bias_hh`` is zero in its r and z blocks and ``b_hn`` in its n block.
    """
    W_x, W_h, H = _fastbptt_weights(W_x, W_h, 3)
    dtype = W_h.dtype
    b = _checks.float_array("b", b, dtype, like="W_h")
    _checks.check_shape("b", b, (3 * H,), "[3H]")
    b_hn = _checks.float_array("b_hn", b_hn, dtype, like="W_h")
    _checks.check_shape("b_hn", b_hn, (H,), "[H]")
    bias_hh = np.zeros(3 * H, dtype=dtype)
    bias_hh[2 * H :] = b_hn
    return np.ascontiguousarray(W_x.T), np.ascontiguousarray(W_h.T), b.copy(), bias_hh
