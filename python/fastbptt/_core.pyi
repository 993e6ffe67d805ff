# Type stub of the compiled module fastbptt._core. Arrays must be C-contiguous and of exactly the overload's dtype
# (float32 or float64 throughout one call); fastbptt.kernels.functional validates and converts before calling.
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_T = TypeVar("_T")

class PackedFloat32: ...
class PackedFloat64: ...

class StepHandoff:
    def published(self) -> int: ...
    def abandon(self) -> None: ...

_Packed = PackedFloat32 | PackedFloat64

__version__: str

def build_info() -> dict[str, str]: ...
def set_num_threads(n: int) -> None: ...
def reset_num_threads() -> None: ...
def get_num_threads() -> int: ...
def call_threads() -> int: ...
def backward_block_steps(batch: int, gate_columns: int) -> int: ...
def packed_weights_scalars(rows: int, columns: int, groups: int, dtype: npt.DTypeLike) -> int: ...
def run_concurrently(tasks: list[Callable[[], _T]]) -> list[_T]: ...
def set_array_cache_limit(bytes: int) -> None: ...
def empty_array_cache() -> None: ...
def array_cache_stats() -> dict[str, int]: ...
def copy_array(source: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]: ...
def transposed_product(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]: ...
def same_bytes(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> bool: ...
def rnn_pack(W_xh: npt.NDArray[np.floating], W_hh: npt.NDArray[np.floating]) -> _Packed: ...
def lstm_pack(
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    forget_gate: bool,
    W_hr: npt.NDArray[np.floating] | None = None,
) -> _Packed: ...
def gru_pack(W_x: npt.NDArray[np.floating], W_h: npt.NDArray[np.floating]) -> _Packed: ...
def rnn_forward(
    x: npt.NDArray[np.floating],
    W_xh: npt.NDArray[np.floating],
    W_hh: npt.NDArray[np.floating],
    b_h: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    activation: str,
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> npt.NDArray[np.floating]: ...
def rnn_forward_inference(
    x: npt.NDArray[np.floating],
    W_xh: npt.NDArray[np.floating],
    W_hh: npt.NDArray[np.floating],
    b_h: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    activation: str,
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def rnn_backward(
    x: npt.NDArray[np.floating],
    W_xh: npt.NDArray[np.floating],
    W_hh: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    hs: npt.NDArray[np.floating],
    dhs: npt.NDArray[np.floating],
    activation: str,
    lengths: npt.NDArray[np.int64],
    hidden_grad_norms: bool = False,
    need_dx: bool = True,
    need_weight_grads: bool = True,
    packed: _Packed | None = None,
    need_dz: bool = False,
    dx_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating] | None, ...]: ...
def lstm_forward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    forget_gate: bool,
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    W_hr: npt.NDArray[np.floating] | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def lstm_forward_inference(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    forget_gate: bool,
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    W_hr: npt.NDArray[np.floating] | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def lstm_backward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    gates: npt.NDArray[np.floating],
    hs: npt.NDArray[np.floating],
    cs: npt.NDArray[np.floating],
    dhs: npt.NDArray[np.floating],
    dc_T: npt.NDArray[np.floating],
    forget_gate: bool,
    lengths: npt.NDArray[np.int64],
    hidden_grad_norms: bool = False,
    need_dx: bool = True,
    need_weight_grads: bool = True,
    packed: _Packed | None = None,
    W_hr: npt.NDArray[np.floating] | None = None,
    need_dz: bool = False,
    dx_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating] | None, ...]: ...
def lstm_backward_into(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    gates: npt.NDArray[np.floating],
    hs: npt.NDArray[np.floating],
    cs: npt.NDArray[np.floating],
    dhs: npt.NDArray[np.floating],
    dc_T: npt.NDArray[np.floating],
    forget_gate: bool,
    dW_x: npt.NDArray[np.floating],
    dW_h: npt.NDArray[np.floating],
    db: npt.NDArray[np.floating],
    need_dx: bool = True,
    need_weight_grads: bool = True,
) -> tuple[npt.NDArray[np.floating] | None, npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def layer_norm_lstm_forward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    gamma_ih: npt.NDArray[np.floating],
    gamma_hh: npt.NDArray[np.floating],
    gamma_c: npt.NDArray[np.floating],
    beta_c: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64],
    inference: bool,
) -> tuple[npt.NDArray[np.floating], ...]: ...
def layer_norm_lstm_backward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    gamma_ih: npt.NDArray[np.floating],
    gamma_hh: npt.NDArray[np.floating],
    gamma_c: npt.NDArray[np.floating],
    beta_c: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    c0: npt.NDArray[np.floating],
    gates: npt.NDArray[np.floating],
    x_hat: npt.NDArray[np.floating],
    h_hat: npt.NDArray[np.floating],
    cs: npt.NDArray[np.floating],
    c_hat: npt.NDArray[np.floating],
    hs: npt.NDArray[np.floating],
    inv_std: npt.NDArray[np.floating],
    dhs: npt.NDArray[np.floating],
    dc_T: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64],
    hidden_grad_norms: bool = False,
    need_dx: bool = True,
    need_weight_grads: bool = True,
) -> tuple[npt.NDArray[np.floating] | None, ...]: ...
def gru_forward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    b_hn: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def gru_forward_inference(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating],
    b_hn: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64],
    packed: _Packed | None = None,
    hs_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def gru_backward(
    x: npt.NDArray[np.floating],
    W_x: npt.NDArray[np.floating],
    W_h: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating],
    gates: npt.NDArray[np.floating],
    hn: npt.NDArray[np.floating],
    hs: npt.NDArray[np.floating],
    dhs: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.int64],
    hidden_grad_norms: bool = False,
    need_dx: bool = True,
    need_weight_grads: bool = True,
    packed: _Packed | None = None,
    need_dz: bool = False,
    dx_out: npt.NDArray[np.floating] | None = None,
    input_ready: StepHandoff | None = None,
    output_ready: StepHandoff | None = None,
) -> tuple[npt.NDArray[np.floating] | None, ...]: ...
def softmax_cross_entropy(
    hs: npt.NDArray[np.floating],
    W_yh: npt.NDArray[np.floating],
    b_y: npt.NDArray[np.floating],
    targets: npt.NDArray[np.int64],
    ignore_index: int,
    reduction: str,
) -> tuple[float, npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.floating]]: ...
def spectral_norms(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def rnn_jacobian_norms(
    phi_prime: npt.NDArray[np.float64], W_hh: npt.NDArray[np.float64], t: int
) -> npt.NDArray[np.float64]: ...
def lstm_jacobian_norms(
    gates: npt.NDArray[np.float64],
    cs: npt.NDArray[np.float64],
    c0: npt.NDArray[np.float64],
    W_h: npt.NDArray[np.float64],
    forget_gate: bool,
    t: int,
    step_norms: bool,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def lstm_cell_jacobians(
    gates: npt.NDArray[np.float64],
    cs: npt.NDArray[np.float64],
    c0: npt.NDArray[np.float64],
    W_h: npt.NDArray[np.float64],
    forget_gate: bool,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
