"""fastbptt: fast, exact backpropagation through time for recurrent networks on the CPU.

The kernel functions here run the compiled core; :mod:`fastbptt.reference` has the same functions in plain NumPy.
The layers, the sequence model, the optimisers and truncated BPTT build on them (``backend="fast"`` or
``"reference"``).
"""

from __future__ import annotations

from ._core import __version__
from ._core import build_info as _core_build_info
from ._types import CheckpointedLSTMCache, GRUCache, GRUGrads, LSTMCache, LSTMGrads, OutputGrads, RNNCache, RNNGrads
from .array_cache import array_cache_info, empty_array_cache, set_array_cache_limit
from .conversions import gru_weights_from_torch, gru_weights_to_torch, lstm_weights_from_torch, lstm_weights_to_torch
from .functional import (
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
    softmax_cross_entropy,
)
from .layers import GRU, LSTM, RNN
from .memory import workspace_bytes
from .model import SequenceModel
from .optim import SGD, Adam, clip_grad_norm
from .sequences import final_states, reverse_sequences
from .tbptt import TrainResult, Window, tbptt_windows, train_tbptt
from .threads import get_num_threads, set_num_threads


def build_info() -> dict[str, str]:
    """How this copy of fastbptt was built: version, Eigen version and where it came from, instruction set
    requested and compiled in, Eigen's SIMD, compiler, build type and threading."""
    return dict(_core_build_info())


__all__ = [
    "CheckpointedLSTMCache",
    "GRU",
    "GRUCache",
    "GRUGrads",
    "LSTM",
    "RNN",
    "SGD",
    "Adam",
    "LSTMCache",
    "LSTMGrads",
    "OutputGrads",
    "RNNCache",
    "RNNGrads",
    "SequenceModel",
    "TrainResult",
    "Window",
    "__version__",
    "array_cache_info",
    "build_info",
    "clip_grad_norm",
    "empty_array_cache",
    "final_states",
    "get_num_threads",
    "gru_backward",
    "gru_forward",
    "gru_weights_from_torch",
    "gru_weights_to_torch",
    "lstm_backward",
    "lstm_forward",
    "lstm_weights_from_torch",
    "lstm_weights_to_torch",
    "reverse_sequences",
    "rnn_backward",
    "rnn_forward",
    "set_array_cache_limit",
    "set_num_threads",
    "softmax_cross_entropy",
    "tbptt_windows",
    "train_tbptt",
    "workspace_bytes",
]
