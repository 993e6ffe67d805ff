"""The kernels' builds per instruction set: which one is loaded, FASTBPTT_ISA, and the correctness of every build
this machine runs (each in a process of its own, since a process loads one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastbptt as fb
from fastbptt import _isa

TESTS = Path(__file__).resolve().parent


def test_the_loaded_build_is_the_widest_compiled_one_the_cpu_runs_unless_one_is_forced():
    info = fb.build_info()
    assert info["isas_compiled"].split() == list(_isa.compiled())
    assert info["isa_in_use"] == _isa.choose(os.environ.get("FASTBPTT_ISA"), _isa.compiled(), _isa.runnable())
    assert sys.modules["fastbptt._core"].__name__ == f"fastbptt._core_{info['isa_in_use']}"
    assert "baseline" in _isa.runnable()


def test_choose_takes_the_widest_build_compiled_and_runnable():
    assert _isa.choose(None, ("avx512", "avx2", "baseline"), ("avx2", "baseline")) == "avx2"
    assert _isa.choose("", ("avx2", "baseline"), ("avx512", "avx2", "baseline")) == "avx2"
    assert _isa.choose("baseline", ("avx512", "avx2", "baseline"), ("avx512", "avx2", "baseline")) == "baseline"


def test_choose_names_what_cannot_be_had():
    with pytest.raises(ValueError, match=r"FASTBPTT_ISA='sse9': expected one of avx512, avx2, baseline"):
        _isa.choose("sse9", ("baseline",), ("baseline",))
    with pytest.raises(
        RuntimeError, match=r"FASTBPTT_ISA=avx512: this CPU does not run .* \(it runs: avx2, baseline\)"
    ):
        _isa.choose("avx512", ("avx512", "avx2", "baseline"), ("avx2", "baseline"))
    with pytest.raises(RuntimeError, match=r"FASTBPTT_ISA=avx2: this installation of fastbptt has no avx2 build"):
        _isa.choose("avx2", ("baseline",), ("avx2", "baseline"))
    with pytest.raises(RuntimeError, match=r"no build of the kernels runs on this CPU"):
        _isa.choose(None, ("avx512",), ("baseline",))


def test_an_unknown_or_unrunnable_build_stops_the_import_with_its_name():
    done = subprocess.run(
        [sys.executable, "-c", "import fastbptt"],
        env={**os.environ, "FASTBPTT_ISA": "sse9"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "FASTBPTT_ISA='sse9': expected one of avx512, avx2, baseline" in done.stderr


# Run in a process of each build: every kernel against the float64 reference within the suite's tolerance (the
# float32 builds differ in their rounding), bit for bit the same on a second run, and the checkpointed LSTM backward
# with the bits of the whole one.
CHECK = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import TOL, gru_problem, lstm_problem, rnn_problem, rounded
import fastbptt as fb
from fastbptt import reference as ref

def worst(fast, exact, dtype, kind):
    fast, exact = np.asarray(fast, np.float64), np.asarray(exact)
    scale = max(1.0, float(np.max(np.abs(exact))))
    return float(np.max(np.abs(fast - exact) / (TOL[dtype][kind] * (scale + np.abs(exact)))))

def run(module, cell, p, lengths):
    if cell == "rnn":
        hs, cache = module.rnn_forward(p["x"], p["W_xh"], p["W_hh"], p["b_h"], p["h0"], lengths=lengths)
        return [hs, *module.rnn_backward(cache, p["dhs"])]
    if cell == "gru":
        hs, cache = module.gru_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["b_hn"], p["h0"], lengths=lengths)
        return [hs, *module.gru_backward(cache, p["dhs"])]
    hs, c_T, cache = module.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], lengths=lengths)
    return [hs, c_T, *module.lstm_backward(cache, p["dhs"], p["dc_T"])]

rng = np.random.default_rng(7)
T, B, D, H = 23, 6, 13, 19
problems = {"rnn": rnn_problem(rng, T, B, D, H), "lstm": lstm_problem(rng, T, B, D, H)}
problems["gru"] = gru_problem(rng, T, B, D, H)
lengths = np.array([23, 20, 17, 9, 4, 1])
result = {"isa": fb.build_info()["isa_in_use"], "worst": 0.0, "same_bits": True}
for cell, problem in problems.items():
    for dtype in (np.float64, np.float32):
        low, exact = rounded(problem, dtype)
        expected = run(ref, cell, exact, lengths)
        first, second = run(fb, cell, low, lengths), run(fb, cell, low, lengths)
        for k, (a, b, e) in enumerate(zip(first, second, expected)):
            result["worst"] = max(result["worst"], worst(a, e, dtype, "outputs" if k == 0 else "grads"))
            result["same_bits"] &= a.tobytes() == b.tobytes()
        if cell == "lstm":
            inputs = [low[name] for name in ("x", "W_x", "W_h", "b", "h0", "c0")]
            whole, parts = fb.lstm_forward(*inputs)[2], fb.lstm_forward(*inputs, checkpoint=5)[2]
            for a, b in zip(*(fb.lstm_backward(cache, low["dhs"], low["dc_T"]) for cache in (whole, parts))):
                result["same_bits"] &= a.tobytes() == b.tobytes()
print(json.dumps(result))
"""


@pytest.mark.parametrize("isa", [isa for isa in _isa.NAMES if isa in _isa.compiled() and isa in _isa.runnable()])
def test_every_build_this_cpu_runs_matches_the_reference_and_repeats_its_bits(isa):
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(TESTS)],
        env={**os.environ, "FASTBPTT_ISA": isa},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa
    assert result["worst"] <= 1.0, f"{isa}: an error {result['worst']:.2f} times the suite's tolerance"
    assert result["same_bits"], f"{isa}: a second run or the checkpointed backward gave other bits"
