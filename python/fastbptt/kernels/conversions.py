"""Weight layout conversions between fastbptt and ``torch.nn.LSTM`` / ``torch.nn.GRU`` (NumPy arrays only; torch
is not imported).

torch keeps ``weight_ih [4H, D]``, ``weight_hh [4H, H]`` and two biases, gate row blocks i, f, g, o; fastbptt keeps
the transposes ``W_x [D, 4H]``, ``W_h [H, 4H]`` in the same block order and one bias ``b = bias_ih + bias_hh``.
"""

from __future__ import annotations

import numpy as np

from . import _checks


def lstm_weights_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """``(W_x [D,4H], W_h [H,4H], b [4H])`` from the parameters of one ``torch.nn.LSTM`` layer and direction.

    Pass ``tensor.detach().numpy()`` for each parameter; a missing bias (``bias=False``) counts as zeros.
    """
    weight_hh = _checks.matrix("weight_hh", weight_hh, None)
    dtype = weight_hh.dtype
    H = weight_hh.shape[1]
    _checks.check_shape("weight_hh", weight_hh, (4 * H, H), "[4H, H]")
    weight_ih = _checks.matrix("weight_ih", weight_ih, dtype, like="weight_hh")
    if weight_ih.shape[0] != 4 * H:
        raise ValueError(f"weight_ih: expected shape [4H, D] = ({4 * H}, D), got {weight_ih.shape}")
    b = np.zeros(4 * H, dtype=dtype)
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            bias = _checks.float_array(name, bias, dtype, like="weight_hh")
            _checks.check_shape(name, bias, (4 * H,), "[4H]")
            b += bias
    return np.ascontiguousarray(weight_ih.T), np.ascontiguousarray(weight_hh.T), b


def lstm_weights_to_torch(W_x, W_h, b):
    """``(weight_ih [4H,D], weight_hh [4H,H], bias_ih [4H], bias_hh [4H])`` for ``torch.nn.LSTM``.

    The whole bias goes to ``bias_ih``; ``bias_hh`` is zeros (only their sum matters to the LSTM).
    """
    W_h = _checks.matrix("W_h", W_h, None)
    dtype = W_h.dtype
    H = W_h.shape[0]
    _checks.check_shape("W_h", W_h, (H, 4 * H), "[H, 4H] (torch has only the cell with forget gate)")
    W_x = _checks.matrix("W_x", W_x, dtype, like="W_h")
    if W_x.shape[1] != 4 * H:
        raise ValueError(f"W_x: expected shape [D, 4H] = (D, {4 * H}), got {W_x.shape}")
    b = _checks.float_array("b", b, dtype, like="W_h")
    _checks.check_shape("b", b, (4 * H,), "[4H]")
    return np.ascontiguousarray(W_x.T), np.ascontiguousarray(W_h.T), b.copy(), np.zeros_like(b)


def gru_weights_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """``(W_x [D,3H], W_h [H,3H], b [3H], b_hn [H])`` from the parameters of one ``torch.nn.GRU`` layer and
    direction (row blocks r, z, n).

    ``b`` is ``bias_ih`` plus the r and z blocks of ``bias_hh``; the n block of ``bias_hh`` becomes ``b_hn``. Pass
    ``tensor.detach().numpy()`` for each parameter; a missing bias (``bias=False``) counts as zeros.
    """
    weight_hh = _checks.matrix("weight_hh", weight_hh, None)
    dtype = weight_hh.dtype
    H = weight_hh.shape[1]
    _checks.check_shape("weight_hh", weight_hh, (3 * H, H), "[3H, H]")
    weight_ih = _checks.matrix("weight_ih", weight_ih, dtype, like="weight_hh")
    if weight_ih.shape[0] != 3 * H:
        raise ValueError(f"weight_ih: expected shape [3H, D] = ({3 * H}, D), got {weight_ih.shape}")
    b = np.zeros(3 * H, dtype=dtype)
    b_hn = np.zeros(H, dtype=dtype)
    if bias_ih is not None:
        bias_ih = _checks.float_array("bias_ih", bias_ih, dtype, like="weight_hh")
        _checks.check_shape("bias_ih", bias_ih, (3 * H,), "[3H]")
        b += bias_ih
    if bias_hh is not None:
        bias_hh = _checks.float_array("bias_hh", bias_hh, dtype, like="weight_hh")
        _checks.check_shape("bias_hh", bias_hh, (3 * H,), "[3H]")
        b[: 2 * H] += bias_hh[: 2 * H]
        b_hn += bias_hh[2 * H :]
    return np.ascontiguousarray(weight_ih.T), np.ascontiguousarray(weight_hh.T), b, b_hn


def gru_weights_to_torch(W_x, W_h, b, b_hn):
    """``(weight_ih [3H,D], weight_hh [3H,H], bias_ih [3H], bias_hh [3H])`` for ``torch.nn.GRU``.

    ``bias_ih`` is ``b``; ``bias_hh`` is zero in its r and z blocks and ``b_hn`` in its n block.
    """
    W_h = _checks.matrix("W_h", W_h, None)
    dtype = W_h.dtype
    H = W_h.shape[0]
    _checks.check_shape("W_h", W_h, (H, 3 * H), "[H, 3H]")
    W_x = _checks.matrix("W_x", W_x, dtype, like="W_h")
    if W_x.shape[1] != 3 * H:
        raise ValueError(f"W_x: expected shape [D, 3H] = (D, {3 * H}), got {W_x.shape}")
    b = _checks.float_array("b", b, dtype, like="W_h")
    _checks.check_shape("b", b, (3 * H,), "[3H]")
    b_hn = _checks.float_array("b_hn", b_hn, dtype, like="W_h")
    _checks.check_shape("b_hn", b_hn, (H,), "[H]")
    bias_hh = np.zeros(3 * H, dtype=dtype)
    bias_hh[2 * H :] = b_hn
    return np.ascontiguousarray(W_x.T), np.ascontiguousarray(W_h.T), b.copy(), bias_hh
