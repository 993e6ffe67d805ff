"""The classic recurrent sequence model: token input (one-hot or embedding), a recurrent layer, a softmax output layer,
and the cross-entropy loss summed over time steps."""

from __future__ import annotations

import numpy as np

from ..kernels import _checks, cells
from .layers import Recurrent
from .saving import load_arrays, save_arrays


class SequenceModel:
    """Tokens ``[T, B]`` -> recurrent layer -> ``o_t = h_t W_yh + b_y`` -> softmax, trained with cross-entropy.

    Parameters
    ----------
    vocab_size : int
        V, the number of input tokens.
    hidden_size : int
        H.
    num_classes : int, optional
        K, the number of output classes; ``vocab_size`` when omitted (a character model predicts tokens).
    cell : {"lstm", "rnn", "gru"}
        Or any registered cell (:mod:`fastbptt.kernels.cells`).
    embedding_dim : int, optional
        Input as a learned embedding ``[V, E]`` (initialised ``N(0, 1)`` as PyTorch's); one-hot vectors (the
        classic model) when omitted.
    activation, init : str
        Passed to the layer where its cell takes them: the RNN's ``activation`` ("tanh", "relu", "sigmoid");
        ``init`` one of the cell's schemes ("uniform", "orthogonal", and the RNN's "identity").
    forget_gate, forget_bias
        The LSTM's; ``forget_bias`` must be 0 for a cell without forget gate.
    seed : int or None
        Seeds every initialisation.
    batch_first : bool
        Tokens and targets as ``[B, T]`` instead of ``[T, B]``.
    dtype : float32 (default) or float64
    backend : {"fast", "reference"}

    Attributes
    ----------
    params : dict of ndarray
        ``"embedding"`` (when used), ``"rnn.<name>"`` (the layer's own arrays), ``"W_yh" [H,K]``, ``"b_y" [K]``.
        Optimisers update them in place.
    """

    kind = "SequenceModel"

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        *,
        num_classes: int | None = None,
        cell: str = "lstm",
        embedding_dim: int | None = None,
        activation: str = "tanh",
        init: str = "uniform",
        forget_gate: bool = True,
        forget_bias: float = 0.0,
        seed=None,
        batch_first: bool = False,
        dtype=np.float32,
        backend: str = "fast",
    ):
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_classes = self.vocab_size if num_classes is None else _checks.positive_int("num_classes", num_classes)
        self.cell = _checks.choice("cell", cell, cells.names())
        self.embedding_dim = None if embedding_dim is None else _checks.positive_int("embedding_dim", embedding_dim)
        self.batch_first = bool(batch_first)
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.backend = backend
        layer_seed, embedding_seed, output_seed = np.random.SeedSequence(seed).spawn(3)
        input_size = self.embedding_dim or self.vocab_size
        spec = cells.cell_class(self.cell)
        offered = {"activation": activation, "forget_gate": forget_gate}
        self.rnn = Recurrent(
            spec,
            input_size,
            hidden_size,
            init=init,
            init_options={"forget_bias": forget_bias} if forget_bias else None,
            seed=layer_seed,
            dtype=dtype,
            backend=backend,
            **{name: value for name, value in offered.items() if name in spec.option_defaults},
        )
        self.params: dict[str, np.ndarray] = {}
        if self.embedding_dim is not None:
            embedding = np.random.default_rng(embedding_seed).standard_normal((self.vocab_size, self.embedding_dim))
            self.params["embedding"] = embedding.astype(self.dtype)
        self.params.update({f"rnn.{name}": value for name, value in self.rnn.params.items()})
        bound = 1.0 / np.sqrt(self.hidden_size)  # PyTorch's nn.Linear initialisation
        rng = np.random.default_rng(output_seed)
        self.params["W_yh"] = rng.uniform(-bound, bound, (self.hidden_size, self.num_classes)).astype(self.dtype)
        self.params["b_y"] = rng.uniform(-bound, bound, self.num_classes).astype(self.dtype)

    def _time_major_tokens(self, name: str, tokens) -> np.ndarray:
        array = np.asarray(tokens)
        if not np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            raise TypeError(f"{name}: expected an integer array of token ids, got dtype {array.dtype}")
        layout = "[B, T]" if self.batch_first else "[T, B]"
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"{name}: expected a non-empty 2-D array {layout}, got shape {array.shape}")
        return np.swapaxes(array, 0, 1) if self.batch_first else array

    def _embed(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        tokens = self._time_major_tokens("tokens", tokens)
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(
                f"tokens: ids must lie in 0 .. {self.vocab_size - 1} (vocab_size), got {low if low < 0 else high}"
            )
        if self.embedding_dim is not None:
            return tokens, self.params["embedding"][tokens]
        one_hot = np.zeros((*tokens.shape, self.vocab_size), dtype=self.dtype)
        np.put_along_axis(one_hot, tokens[..., None], 1, axis=-1)
        return tokens, one_hot

    def loss_and_grad(self, tokens, targets, state=None, *, reduction: str = "sum", ignore_index: int = -100):
        """Loss over every step and its gradients with respect to every parameter (full BPTT over the input).

        Parameters
        ----------
        tokens : int ndarray [T, B]
        targets : int ndarray [T, B]
            Classes in ``0 .. K-1``, or ``ignore_index`` for steps without a target.
        state : optional
            Initial state (``h0 [B,H]`` for the RNN, ``(h0, c0)`` for the LSTM); zeros when None. No gradient
            flows into it: that is where truncated BPTT cuts.
        reduction, ignore_index
            As in :func:`fastbptt.softmax_cross_entropy`.

        Returns
        -------
        loss : float
        grads : dict of ndarray
            The same keys as :attr:`params`.
        state : the final state, to carry into the next chunk.
        """
        tokens, x = self._embed(tokens)
        targets = self._time_major_tokens("targets", targets)
        hs, final_state = self.rnn.forward(x, state)
        loss, og = self.rnn.cell.kernels.softmax_cross_entropy(
            hs,
            self.params["W_yh"],
            self.params["b_y"],
            targets,
            reduction=reduction,
            ignore_index=ignore_index,
        )
        self.rnn.zero_grad()
        dx, _ = self.rnn.backward(og.dhs, need_dx=self.embedding_dim is not None)  # one-hot inputs need none
        grads = {f"rnn.{name}": grad.copy() for name, grad in self.rnn.grads.items()}
        grads["W_yh"], grads["b_y"] = og.dW_yh, og.db_y
        if self.embedding_dim is not None:
            d_embedding = np.zeros_like(self.params["embedding"])
            np.add.at(d_embedding, tokens, dx)
            grads["embedding"] = d_embedding
        return loss, {name: grads[name] for name in self.params}, final_state

    def state_at(self, step: int):
        """The recurrent state after ``step`` steps of the last forward pass (0: its initial state)."""
        return self.rnn.state_at(step)

    def predict(self, tokens, state=None):
        """Class probabilities ``[T, B, K]`` (``[B, T, K]`` if batch_first) and the final state."""
        _, x = self._embed(tokens)
        hs, final_state = self.rnn.forward(x, state, inference=True)
        probs = self._probabilities(hs)
        return (np.ascontiguousarray(np.swapaxes(probs, 0, 1)) if self.batch_first else probs), final_state

    def _probabilities(self, hs: np.ndarray) -> np.ndarray:
        """The softmax of the output layer over the last axis of ``hs [..., H]``."""
        logits = self._logits(hs)
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        return probs

    def _logits(self, hs: np.ndarray) -> np.ndarray:
        """The output layer's logits over the last axis of ``hs [..., H]``."""
        return hs @ self.params["W_yh"] + self.params["b_y"]

    def sample(self, length: int, *, prime, temperature: float = 1.0, seed=None, state=None) -> np.ndarray:
        """Generates ``length`` tokens one step at a time, each drawn from the model's softmax at
        ``temperature``, after feeding the ``prime`` tokens (an int or a sequence of ints).

        For a character model, where classes are tokens; returns an int64 array of the generated ids only. The
        prime runs as one sequence; the generated tokens run a step each through a :class:`fastbptt.Stepper`,
        which packs the layer's weights once for all of them.
        """
        length = _checks.positive_int("length", length)
        if self.num_classes != self.vocab_size:
            raise ValueError("sample: needs num_classes == vocab_size (the model's outputs are its next inputs)")
        if not temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        rng = np.random.default_rng(seed)
        prime = np.atleast_1d(np.asarray(prime))
        if prime.ndim != 1 or prime.size == 0:
            raise ValueError(f"prime: expected one token id or a non-empty 1-D sequence, got shape {prime.shape}")
        _, x = self._embed(prime[:, None] if not self.batch_first else prime[None, :])
        hs, state = self.rnn.forward(x, state, inference=True)  # time-major, as _embed makes x
        logits = self._logits(hs[-1, 0])
        stepper = self.rnn.stepper()  # the model's one layer: its state is the cell's
        embedding = self.params.get("embedding")
        one_hot = np.zeros((1, self.vocab_size), dtype=self.dtype)
        generated = np.empty(length, dtype=np.int64)
        for k in range(length):
            token = generated[k] = _draw(rng, _softmax_weights(logits, temperature))
            if embedding is None:
                one_hot.fill(0)
                one_hot[0, token] = 1
                x = one_hot
            else:
                x = embedding[token : token + 1]
            # The model's own arrays, of the layer's dtype and shapes: the stepper's cell runs them unchecked.
            hs, state, _ = stepper.cell.forward_checked(stepper.params, x[None], state, None, True, stepper.packed)
            logits = self._logits(hs[0, 0])
        return generated

    def _config(self) -> dict:
        config = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_classes": self.num_classes,
            "cell": self.cell,
            "embedding_dim": self.embedding_dim,
            **self.rnn.cell.options,
        }
        return config

    def save(self, path) -> None:
        """Writes every parameter and the model's configuration to one ``.npz`` file."""
        save_arrays(path, self.kind, self._config(), self.params)

    def load(self, path) -> None:
        """Reads parameters written by :meth:`save`; raises ValueError, changing nothing, on a mismatch."""
        loaded = load_arrays(path, self.kind, self._config(), self.params)
        for name, value in loaded.items():
            self.params[name][...] = value


def _softmax_weights(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``exp((logits - max) / temperature)`` in float64: the softmax at ``temperature`` up to its sum, which
    :func:`_draw` divides by (one pass fewer than normalising here)."""
    scaled = logits.astype(np.float64)
    scaled -= scaled.max()
    if temperature != 1.0:
        scaled /= temperature
    return np.exp(scaled, out=scaled)


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    """One class drawn with probabilities ``weights / weights.sum()``: what ``rng.choice(len(p), p=p)`` draws for
    those probabilities (its algorithm, one uniform number taken from ``rng`` the same way), without the checks of
    its arguments that cost more than the draw."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))
