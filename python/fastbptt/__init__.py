"""fastbptt: fast, exact backpropagation through time for recurrent networks on the CPU.

The kernel functions here run the compiled core; :mod:`fastbptt.reference` has the same functions in plain NumPy.
The layers, the sequence model, the optimisers and truncated BPTT build on them (``backend="fast"`` or
``"reference"``).

The package in layers, each importing only those before it:

- ``fastbptt.kernels``: the kernels' API (``functional``; ``reference``, the same in NumPy), their argument checks,
  result types, sequence helpers, checkpointing, memory accounting and diagnostics, the cell specifications
  (``cells``) and the one driver of stacked layers and directions (``stack``);
- ``fastbptt.training``: layers that hold their parameters, the sequence model, optimisers, truncated BPTT;
- ``fastbptt.torch``: torch.nn modules that run the kernels (imported only when asked for);
- ``fastbptt.cli``: ``python -m fastbptt`` (demo, bench, diagnose).
"""

from __future__ import annotations

import sys

from . import _core, _isa
from ._core import __version__
from ._core import build_info as _core_build_info
from .kernels import diagnostics, reference
from .kernels._types import (
    CheckpointedLSTMCache,
    GRUCache,
    GRUGrads,
    LayerNormLSTMCache,
    LayerNormLSTMGrads,
    LSTMCache,
    LSTMGrads,
    OutputGrads,
    ProjectedLSTMGrads,
    RNNCache,
    RNNGrads,
)
from .kernels.array_cache import array_cache_info, empty_array_cache, set_array_cache_limit
from .kernels.conversions import (
    gru_weights_from_torch,
    gru_weights_to_torch,
    lstm_weights_from_torch,
    lstm_weights_to_torch,
)
from .kernels.functional import (
    gru_backward,
    gru_forward,
    layer_norm_lstm_backward,
    layer_norm_lstm_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
    softmax_cross_entropy,
)
from .kernels.memory import workspace_bytes
from .kernels.sequences import final_states, reverse_sequences
from .kernels.stepper import Stepper
from .kernels.threads import get_num_threads, set_num_threads
from .training.layers import GRU, LSTM, RNN, LayerNormLSTM, Recurrent
from .training.model import SequenceModel
from .training.optim import SGD, Adam, clip_grad_norm
from .training.tbptt import TrainResult, Window, tbptt_windows, train_tbptt

# The public module names fastbptt.reference and fastbptt.diagnostics are the kernels' own modules.
sys.modules[__name__ + ".reference"] = reference
sys.modules[__name__ + ".diagnostics"] = diagnostics


def build_info() -> dict[str, str]:
    """How this copy of fastbptt was built: version, Eigen version and where it came from, instruction set
    requested and compiled in, Eigen's SIMD, compiler, build type and threading; ``isa_in_use``, the build of the
    kernels this process loaded (``FASTBPTT_ISA`` or the widest the CPU runs), and ``isas_compiled``, those that
    were built (widest first)."""
    return {**_core_build_info(), "isa_in_use": _isa.in_use(_core), "isas_compiled": " ".join(_isa.compiled())}


__all__ = [
    "CheckpointedLSTMCache",
    "GRU",
    "GRUCache",
    "GRUGrads",
    "LSTM",
    "LayerNormLSTM",
    "LayerNormLSTMCache",
    "LayerNormLSTMGrads",
    "RNN",
    "Recurrent",
    "SGD",
    "Adam",
    "LSTMCache",
    "LSTMGrads",
    "OutputGrads",
    "ProjectedLSTMGrads",
    "RNNCache",
    "RNNGrads",
    "SequenceModel",
    "Stepper",
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
    "layer_norm_lstm_backward",
    "layer_norm_lstm_forward",
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
