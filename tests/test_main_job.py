"""The main job, ``python -m fastbptt demo``, and the command line around it."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbptt.cli.demo import load_corpus, remember_first_batch, run_demo


def test_quick_demo_trains_and_reports(tmp_path):
    out = io.StringIO()
    summary = run_demo(quick=True, out_dir=tmp_path, out=out)
    text = out.getvalue()
    losses = summary["char_valid_loss"]
    assert losses[-1] < losses[0] < math.log(len(set(load_corpus()))) + 0.5, "the character model learns"
    assert summary["sample"].startswith("The ") and len(summary["sample"]) > 100
    assert set(summary["long_range"]) >= {"tanh RNN", "IRNN (ReLU, W_hh = I)", "LSTM, PyTorch init"}
    for result in summary["long_range"].values():
        assert 0.0 <= result["accuracy"] <= 1.0
    assert "summary" in text and "nats/char" in text and "held-out accuracy" in text
    assert (tmp_path / "char_lstm.npz").exists()


def test_remember_first_batch_has_one_target_per_sequence():
    tokens, targets = remember_first_batch(np.random.default_rng(0), 100, 8, classes=4)
    assert tokens.shape == targets.shape == (100, 8)
    np.testing.assert_array_equal(targets[-1], tokens[0])
    assert np.all(targets[:-1] == -100) and np.all(tokens[1:] == 4)


def test_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fastbptt", "demo", "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "nats/char" in done.stdout and "total" in done.stdout
    bare = subprocess.run([sys.executable, "-m", "fastbptt"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "demo" in bare.stderr


def test_bench_smoke():
    from fastbptt.cli.bench import run_bench

    out = io.StringIO()
    cells = ["rnn", "lstm", "gru", "lstm-2bi"]
    rows = run_bench(cells, [np.float32], ["S"], [1], repeats=1, with_reference=True, out=out)
    assert len(rows) == 4 and all(row["fastbptt_ms"] > 0 and row["reference_ms"] > 0 for row in rows)
    for cell in cells:
        assert f"| {cell} | float32 | 1 | S |" in out.getvalue()


def test_bench_of_the_step_cells_smoke():
    """The --steps comparison runs (its torch rows where torch is installed) and reports every row."""
    from fastbptt.cli.bench import STEP_CELLS, STEP_SHAPES, run_step_comparison

    out = io.StringIO()
    rows = run_step_comparison([1], repeats=1, out=out)
    samples = [row for row in rows if row["kind"] == "sample"]
    assert [row["cell"] for row in samples] == list(STEP_CELLS) and all(row["ratio"] > 0 for row in samples)
    steps = [row for row in rows if row["kind"] == "step"]
    if "Step cells: not run" not in out.getvalue():
        assert len(steps) == len(STEP_CELLS) * len(STEP_SHAPES)
        assert all(row["fastbptt_ms"] > 0 and row["floor_ms"] > 0 for row in steps)


def test_bench_against_torch_nn_smoke(monkeypatch):
    """The --torch comparison runs (one cell and shape here) and reports its row with the autograd floor."""
    pytest.importorskip("torch")
    from fastbptt.cli import bench

    monkeypatch.setattr(bench, "TORCH_CELLS", ("lstm",))
    monkeypatch.setattr(bench, "TORCH_SHAPES", ("S",))
    out = io.StringIO()
    row, *_ = bench.run_torch_comparison([1], repeats=1, out=out)
    assert row["dropin_train_ms"] > 0 and row["floor_train_ms"] > 0 and row["kernels_train_ms"] > 0
    assert row["overhead_beyond_floor_percent"] < row["overhead_percent"]
    assert "| lstm | 1 | S |" in out.getvalue()


def test_bench_header_names_the_cpus_vector_extension():
    from fastbptt.cli.bench import cpu_description

    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("the SIMD extension is read from /proc/cpuinfo (Linux)")
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    expected = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else "SSE"
    assert cpu_description().split(", ")[-1].removesuffix("+FMA") == expected
