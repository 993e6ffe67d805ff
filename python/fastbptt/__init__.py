"""fastbptt: fast, exact backpropagation through time for recurrent networks on the CPU.

The functions here run the compiled core; :mod:`fastbptt.reference` has the same functions in plain NumPy.
"""

from __future__ import annotations

from ._core import __version__
from ._core import build_info as _core_build_info
from ._types import LSTMCache, LSTMGrads, OutputGrads, RNNCache, RNNGrads
from .conversions import lstm_weights_from_torch, lstm_weights_to_torch
from .functional import lstm_backward, lstm_forward, rnn_backward, rnn_forward, softmax_cross_entropy
from .memory import workspace_bytes


def build_info() -> dict[str, str]:
    """How this copy of fastbptt was built: version, Eigen version and where it came from, instruction set
    requested and compiled in, Eigen's SIMD, compiler, build type and threading."""
    return dict(_core_build_info())


__all__ = [
    "LSTMCache",
    "LSTMGrads",
    "OutputGrads",
    "RNNCache",
    "RNNGrads",
    "__version__",
    "build_info",
    "lstm_backward",
    "lstm_forward",
    "lstm_weights_from_torch",
    "lstm_weights_to_torch",
    "rnn_backward",
    "rnn_forward",
    "softmax_cross_entropy",
    "workspace_bytes",
]
