"""``python -m fastbptt diagnose``: vanishing and exploding gradients, measured and drawn."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from ..kernels.diagnostics import gradient_flow_sweep, rnn_jacobian_norms
from ..kernels.threads import get_num_threads


def time_jacobian_sweeps(T: int = 100, B: int = 16, H: int = 128, seed: int = 0) -> dict[str, float]:
    """Seconds for the exact ``||dh_T/dh_k||_2`` of every ``k`` and sequence (a tanh RNN and an LSTM with
    PyTorch's initialisation, inputs N(0, 1)) and for the LSTM's full ``dC_t/dC_{t-1}`` of every step."""
    from ..kernels.diagnostics import lstm_cell_jacobians, lstm_jacobian_norms
    from ..kernels.functional import lstm_forward, rnn_forward

    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, H))
    _, rnn_cache = rnn_forward(x, rng.uniform(-k, k, (H, H)), rng.uniform(-k, k, (H, H)), np.zeros(H))
    _, _, lstm_cache = lstm_forward(x, rng.uniform(-k, k, (H, 4 * H)), rng.uniform(-k, k, (H, 4 * H)), np.zeros(4 * H))
    sweeps = {
        "tanh RNN ||dh_T/dh_k||_2, all k, with bounds": lambda: rnn_jacobian_norms(rnn_cache),
        "LSTM ||dh_T/dh_k||_2, all k, with bounds": lambda: lstm_jacobian_norms(lstm_cache),
        "LSTM ||dh_T/dh_k||_2, all k, bounds=False": lambda: lstm_jacobian_norms(lstm_cache, bounds=False),
        "LSTM full dC_t/dC_{t-1} and norms, all t": lambda: lstm_cell_jacobians(lstm_cache),
    }
    seconds = {}
    for name, sweep in sweeps.items():
        start = time.perf_counter()
        sweep()
        seconds[name] = time.perf_counter() - start
    return seconds


def run_diagnose(
    *,
    T: int = 100,
    B: int = 16,
    H: int = 64,
    seed: int = 0,
    out_dir="fastbptt-diagnose",
    out: TextIO = sys.stdout,
    timed_shape: tuple[int, int, int] = (100, 16, 128),
) -> list[dict]:
    """Runs :func:`fastbptt.diagnostics.gradient_flow_sweep`, prints the table, times the exact sweeps at
    ``timed_shape`` (T, B, H), saves the figure."""
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
    timed_T, timed_B, timed_H = timed_shape
    threads = get_num_threads()
    print(f"\nexact Jacobian sweeps at T={timed_T}, B={timed_B}, H={timed_H}, {threads} threads:", file=out)
    print("| sweep | seconds |\n|---|---|", file=out)
    for name, seconds in time_jacobian_sweeps(timed_T, timed_B, timed_H, seed).items():
        print(f"| {name} | {seconds:.2f} |", file=out)
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
            axis.semilogy(row["lags"][1:], row["bound"][1:], linestyle=":", color=line.get_color())
        bound = "the classic bound" if model != "LSTM" else "product of the step Jacobians' norms"
        axis.set(title=f"{model} (dotted: {bound})", xlabel="lag t - k")
        axis.set_ylim(1e-30, 1e20)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("mean ||dh_T / dh_k||_2")
    figure.tight_layout()
    path = out_dir / "gradient_flow.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"figure: {path}", file=out)
