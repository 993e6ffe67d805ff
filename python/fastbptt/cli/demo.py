"""The main job, ``python -m fastbptt demo``: a character-level recurrent model trained end to end, on data that
ships or is made on the spot.

1. A character-level LSTM language model trained with truncated BPTT on ``data/corpus.txt``: loss per epoch on
   training and held-out text, then a sample of generated text.
2. A long-range dependency: remember the first of T >= 100 symbols (the rest is a blank) and name it at the end.
   With the same number of updates: tanh RNNs, an identity-initialised ReLU RNN (IRNN) and LSTMs, each with
   PyTorch's default uniform initialisation or with the first remedy for vanishing gradients (orthogonal
   or identity recurrent weights, a forget-gate bias), and which of them learn it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

import numpy as np

from ..training.model import SequenceModel
from ..training.optim import Adam, clip_grad_norm
from ..training.tbptt import train_tbptt

try:
    from tqdm.auto import tqdm
except ImportError:  # progress bars are a nicety, not a requirement
    tqdm = None


def _progress(iterable, **kwargs):
    # disable=None: bars only on a terminal, so logs and CI output stay clean.
    return iterable if tqdm is None else tqdm(iterable, disable=None, leave=False, **kwargs)


@dataclass
class CharResult:
    vocab_size: int
    train_chars: int
    train_loss: list = field(default_factory=list)  #: nats per character, per epoch
    valid_loss: list = field(default_factory=list)
    sample: str = ""
    seconds: float = 0.0


@dataclass
class LongRangeResult:
    name: str
    losses: list  #: training loss of every update (nats)
    accuracy: float  #: on held-out sequences
    seconds: float


def load_corpus() -> str:
    """The text of ``fastbptt/cli/data/corpus.txt`` (made by ``tools/make_corpus.py``)."""
    return resources.files("fastbptt.cli").joinpath("data", "corpus.txt").read_text(encoding="utf-8")


def _streams(ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts one token stream into ``batch`` contiguous streams side by side: tokens and next-token targets
    ``[L, batch]``, so truncated BPTT carries each stream's state from one window to the next."""
    length = (len(ids) - 1) // batch
    tokens = ids[: length * batch].reshape(batch, length).T
    targets = ids[1 : length * batch + 1].reshape(batch, length).T
    return np.ascontiguousarray(tokens), np.ascontiguousarray(targets)


def _mean_cross_entropy(model: SequenceModel, tokens: np.ndarray, targets: np.ndarray) -> float:
    probs, _ = model.predict(tokens)
    picked = np.take_along_axis(probs, targets[..., None], axis=-1)
    return float(-np.mean(np.log(np.maximum(picked, 1e-30))))


def train_character_model(
    *,
    epochs: int,
    hidden: int,
    seed: int,
    window: int = 50,
    batch: int = 16,
    lr: float = 3e-3,
    out: TextIO = sys.stdout,
) -> tuple[CharResult, SequenceModel]:
    """Trains a one-hot LSTM language model on the packaged corpus with truncated BPTT (k1 = k2 = ``window``)."""
    text = load_corpus()
    alphabet = sorted(set(text))
    index = {ch: k for k, ch in enumerate(alphabet)}
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    tokens, targets = _streams(ids[:split], batch)
    valid_tokens, valid_targets = _streams(ids[split:], 4)
    model = SequenceModel(len(alphabet), hidden, cell="lstm", forget_bias=1.0, seed=seed)
    optimizer = Adam(model.params, lr=lr)
    result = CharResult(vocab_size=len(alphabet), train_chars=split)
    print(
        f"[1] character LSTM: {len(text)} characters, {len(alphabet)} symbols, H={hidden}, {batch} streams, "
        f"truncated BPTT over windows of {window} steps, Adam lr={lr}, clip 5",
        file=out,
    )
    start = time.perf_counter()
    for epoch in _progress(range(1, epochs + 1), desc="char LSTM", unit="epoch"):
        # Mean over characters: the summed loss divided by a constant, which Adam does not feel and which
        # keeps the clipping threshold independent of the window size.
        run = train_tbptt(model, tokens, targets, optimizer, k1=window, max_norm=5.0, reduction="mean")
        result.train_loss.append(float(np.mean(run.losses)))
        result.valid_loss.append(_mean_cross_entropy(model, valid_tokens, valid_targets))
        print(
            f"    epoch {epoch:3d}  train {result.train_loss[-1]:.3f} nats/char "
            f"({result.train_loss[-1] / math.log(2):.2f} bits)  held-out {result.valid_loss[-1]:.3f} nats/char",
            file=out,
        )
    result.seconds = time.perf_counter() - start
    generated = model.sample(240, prime=[index[ch] for ch in "The "], temperature=0.7, seed=seed)
    result.sample = "The " + "".join(alphabet[k] for k in generated)
    print(f"    sample (temperature 0.7): {result.sample!r}", file=out)
    return result, model


def remember_first_batch(rng: np.random.Generator, length: int, batch: int, classes: int = 4):
    """Sequences whose first token is one of ``classes`` symbols and whose other tokens are a blank (token
    ``classes``); the only target is the first symbol, at the last step (ignore_index elsewhere)."""
    tokens = np.full((length, batch), classes, dtype=np.int64)
    first = rng.integers(0, classes, size=batch)
    tokens[0] = first
    targets = np.full((length, batch), -100, dtype=np.int64)
    targets[-1] = first
    return tokens, targets


LONG_RANGE_MODELS = [
    # name, SequenceModel options, Adam learning rate (each model's usual setting; IRNNs need small steps)
    ("tanh RNN", {"cell": "rnn", "activation": "tanh"}, 1e-3),
    ("tanh RNN, orthogonal", {"cell": "rnn", "activation": "tanh", "init": "orthogonal"}, 1e-3),
    ("IRNN (ReLU, W_hh = I)", {"cell": "rnn", "activation": "relu", "init": "identity"}, 1e-4),
    ("LSTM, PyTorch init", {"cell": "lstm"}, 3e-3),
    ("LSTM, orthogonal, f bias 1", {"cell": "lstm", "init": "orthogonal", "forget_bias": 1.0}, 3e-3),
]


def long_range_comparison(
    *, length: int, updates: int, hidden: int, seed: int, batch: int = 32, out: TextIO = sys.stdout
) -> list[LongRangeResult]:
    """Trains each of :data:`LONG_RANGE_MODELS` on the remember-the-first-symbol task for ``updates`` steps."""
    classes = 4
    print(
        f"[2] remember the first of {length} symbols: {classes} classes (chance: {math.log(classes):.3f} nats, "
        f"25% accuracy), H={hidden}, {updates} updates of {batch} sequences, Adam, clip 1",
        file=out,
    )
    held_out = remember_first_batch(np.random.default_rng(seed + 1000), length, 512, classes)
    results = []
    for name, options, lr in LONG_RANGE_MODELS:
        rng = np.random.default_rng(seed)
        model = SequenceModel(classes + 1, hidden, num_classes=classes, seed=seed, **options)
        optimizer = Adam(model.params, lr=lr)
        losses, start = [], time.perf_counter()
        for _ in _progress(range(updates), desc=name, unit="update"):
            tokens, targets = remember_first_batch(rng, length, batch, classes)
            loss, grads, _ = model.loss_and_grad(tokens, targets, reduction="mean")
            clip_grad_norm(grads, 1.0)
            optimizer.step(grads)
            losses.append(loss)
        probs, _ = model.predict(held_out[0])
        accuracy = float(np.mean(probs[-1].argmax(axis=-1) == held_out[1][-1]))
        results.append(LongRangeResult(name, losses, accuracy, time.perf_counter() - start))
        tail = float(np.mean(losses[-max(1, updates // 10) :]))
        print(
            f"    {name:27s} final loss {tail:.3f}  held-out accuracy {accuracy:6.1%}  ({results[-1].seconds:.1f} s)",
            file=out,
        )
    return results


def _save_figures(out_dir: Path, char: CharResult, long_range: list[LongRangeResult], out: TextIO) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('    (no figures: install matplotlib, e.g. pip install "fastbptt[plots]", to get them)', file=out)
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(char.train_loss) + 1)
    left.plot(epochs, char.train_loss, marker="o", label="training")
    left.plot(epochs, char.valid_loss, marker="o", label="held-out")
    left.set(title="character LSTM (truncated BPTT)", xlabel="epoch", ylabel="cross-entropy (nats/char)")
    left.legend()
    for result in long_range:
        width = max(1, len(result.losses) // 50)
        smooth = np.convolve(result.losses, np.ones(width) / width, mode="valid")
        right.plot(smooth, label=f"{result.name} ({result.accuracy:.0%})")
    right.axhline(math.log(4), color="gray", linestyle=":", label="chance")
    right.set(title="remember the first symbol", xlabel="update", ylabel="cross-entropy (nats)")
    right.legend(fontsize=8)
    figure.tight_layout()
    path = out_dir / "training_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"    figure: {path}", file=out)


def run_demo(
    *,
    quick: bool = False,
    epochs: int | None = None,
    hidden: int | None = None,
    length: int = 100,
    updates: int | None = None,
    seed: int = 0,
    out_dir: str | Path = "fastbptt-demo",
    out: TextIO = sys.stdout,
) -> dict:
    """Runs both parts, prints a summary table, saves the character model and the figures into ``out_dir``.

    ``quick`` shrinks everything to a smoke run (well under 30 seconds); explicit arguments override it.
    Returns the summary as a dict.
    """
    epochs = epochs or (2 if quick else 30)
    hidden = hidden or (48 if quick else 128)
    updates = updates or (150 if quick else 1500)
    if length < 1 or epochs < 1 or hidden < 1 or updates < 1:
        raise ValueError("epochs, hidden, length and updates must all be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    char, model = train_character_model(epochs=epochs, hidden=hidden, seed=seed, out=out)
    model.save(out_dir / "char_lstm.npz")
    print(f"    model saved: {out_dir / 'char_lstm.npz'}", file=out)
    long_range = long_range_comparison(length=length, updates=updates, hidden=64, seed=seed, out=out)
    _save_figures(out_dir, char, long_range, out)
    total = time.perf_counter() - began

    print("\nsummary", file=out)
    print("| task | model | result | time |", file=out)
    print("|---|---|---|---|", file=out)
    print(
        f"| characters | LSTM H={hidden} | held-out {char.valid_loss[0]:.3f} -> {char.valid_loss[-1]:.3f} "
        f"nats/char ({char.valid_loss[-1] / math.log(2):.2f} bits) | {char.seconds:.1f} s |",
        file=out,
    )
    for result in long_range:
        verdict = "learns it" if result.accuracy > 0.9 else "does not learn it"
        print(
            f"| first of {length} | {result.name} | {result.accuracy:.1%} held-out, {verdict} | "
            f"{result.seconds:.1f} s |",
            file=out,
        )
    print(f"total {total:.1f} s", file=out)
    return {
        "char_train_loss": char.train_loss,
        "char_valid_loss": char.valid_loss,
        "sample": char.sample,
        "long_range": {r.name: {"accuracy": r.accuracy, "final_loss": r.losses[-1]} for r in long_range},
        "seconds": total,
    }
