"""``python -m fastbptt diagnose``: the spec's vanishing and exploding gradients, measured and drawn."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from .diagnostics import gradient_flow_sweep, rnn_jacobian_norms


def time_jacobian_sweep(T: int = 100, B: int = 16, H: int = 128, seed: int = 0) -> float:
    """Seconds for the exact ``||dh_T/dh_k||_2`` of every ``k`` and sequence of one tanh RNN of that size."""
    from .functional import rnn_forward

    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    _, cache = rnn_forward(
        rng.standard_normal((T, B, H)), rng.uniform(-k, k, (H, H)), rng.uniform(-k, k, (H, H)), np.zeros(H)
    )
    start = time.perf_counter()
    rnn_jacobian_norms(cache)
    return time.perf_counter() - start


def run_diagnose(
    *, T: int = 100, B: int = 16, H: int = 64, seed: int = 0, out_dir="fastbptt-diagnose", out: TextIO = sys.stdout
) -> list[dict]:
    """Runs :func:`fastbptt.diagnostics.gradient_flow_sweep`, prints the table, saves the figure."""
    rows = gradient_flow_sweep(T, B, H, seed)
    print(
        f"||dh_T/dh_k||_2 averaged over {B} sequences, T={T}, H={H}; W_hh = rho x orthogonal for the RNNs "
        "(gamma_W = rho); bound = (gamma_W gamma_h)^lag",
        file=out,
    )
    lags = sorted({lag for lag in (1, 10, 50, T - 1) if 1 <= lag <= T})
    print(
        "| model | rho | decay per lag | " + " | ".join(f"lag {lag}" for lag in lags) + f" | bound at lag {lags[-1]} |",
        file=out,
    )
    print("|---|---|---|" + "---|" * len(lags) + "---|", file=out)
    for row in rows:
        values = " | ".join(f"{row['mean_norm'][lag]:.3g}" for lag in lags)
        print(
            f"| {row['model']} | {'-' if row['rho'] is None else format(row['rho'], '.2f')} | {row['decay']:.4f} | "
            f"{values} | {row['bound'][lags[-1]]:.3g} |",
            file=out,
        )
    seconds = time_jacobian_sweep(seed=seed)
    print(f"exact Jacobian sweep (all k against t = T) for a tanh RNN, T=100, B=16, H=128: {seconds:.2f} s", file=out)
    _save_figure(Path(out_dir), rows, out)
    return rows


def _save_figure(out_dir: Path, rows: list[dict], out: TextIO) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('(no figure: install matplotlib, e.g. pip install "fastbptt[plots]")', file=out)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for axis, model in zip(axes, ("tanh RNN", "relu RNN", "LSTM")):
        for row in (r for r in rows if r["model"] == model):
            label = "PyTorch initialisation" if row["rho"] is None else f"rho = {row['rho']:.2f}"
            line = axis.semilogy(row["lags"][1:], row["mean_norm"][1:], label=label)[0]
            if model != "LSTM":
                axis.semilogy(row["lags"][1:], row["bound"][1:], linestyle=":", color=line.get_color())
        axis.set(title=model + (" (dotted: the spec's bound)" if model != "LSTM" else ""), xlabel="lag t - k")
        axis.set_ylim(1e-30, 1e20)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("mean ||dh_T / dh_k||_2")
    figure.tight_layout()
    path = out_dir / "gradient_flow.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"figure: {path}", file=out)
