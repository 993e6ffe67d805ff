"""Refactors keep the bits: every kernel's outputs and gradients hash to what was recorded for this build.

The digests depend on the instruction set, the compiler and Eigen (they decide the order of every sum), so they are
recorded per build (``build_key``); a build without a record skips with the command that records one:

    python tests/test_recorded_bits.py          # adds this build's digests to tests/data/recorded_bits.json

Record on the commit before a change that must keep the bits, and the suite asserts them after it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import diagnostics

RECORD = Path(__file__).resolve().parent / "data" / "recorded_bits.json"
THREADS = (1, 2)
# (T, B, D, H): one small case, and one whose backward runs several blocks of steps and whose team splits units.
SHAPES = {"small": (9, 5, 11, 19), "blocks": (150, 16, 24, 64)}


def build_key() -> str:
    info = fb.build_info()
    return f"{info['isa_compiled']} | {info['compiler']} | Eigen {info['eigen_version']}"


def _digest(arrays) -> str:
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()[:32]


def _problem(shape, dtype, seed):
    T, B, D, H = shape
    rng = np.random.default_rng(seed)

    def uniform(*sides, scale=None):
        scale = 1 / np.sqrt(H) if scale is None else scale
        return rng.uniform(-scale, scale, sides).astype(dtype)

    return {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "dhs": rng.standard_normal((T, B, H)).astype(dtype),
        "dc_T": rng.standard_normal((B, H)).astype(dtype),
        "h0": uniform(B, H, scale=0.5),
        "c0": uniform(B, H, scale=0.5),
        "lengths": np.maximum(1, (T * rng.uniform(0.2, 1.0, B)).astype(np.int64)),
        "uniform": uniform,
        "rng": rng,
    }


def _kernel_cases(shape, dtype):
    """name -> function returning the arrays whose bits are recorded."""
    T, B, D, H = shape
    cases = {}

    for activation in ("tanh", "relu", "sigmoid"):
        for with_lengths in (False, True):

            def rnn(activation=activation, with_lengths=with_lengths):
                p = _problem(shape, dtype, 1)
                u = p["uniform"]
                lengths = p["lengths"] if with_lengths else None
                hs, cache = fb.rnn_forward(
                    p["x"], u(D, H), u(H, H), u(H), p["h0"], activation=activation, lengths=lengths
                )
                norms = diagnostics.hidden_gradient_norms(cache, p["dhs"]).per_sequence
                return [hs, *fb.rnn_backward(cache, p["dhs"]), norms]

            cases[f"rnn-{activation}" + ("-lengths" if with_lengths else "")] = rnn

    for forget_gate in (True, False):
        for mode in ("full", "lengths", "checkpoint"):
            if mode == "checkpoint" and T < 100:
                continue

            def lstm(forget_gate=forget_gate, mode=mode):
                p = _problem(shape, dtype, 2)
                u, G = p["uniform"], 4 if forget_gate else 3
                options = {"lengths": p["lengths"]} if mode == "lengths" else {}
                if mode == "checkpoint":
                    options = {"checkpoint": 64}
                args = (p["x"], u(D, G * H), u(H, G * H), u(G * H), p["h0"], p["c0"])
                hs, c_T, cache = fb.lstm_forward(*args, forget_gate=forget_gate, **options)
                grads = fb.lstm_backward(cache, p["dhs"], p["dc_T"])
                return [hs, c_T, *grads]

            cases[f"lstm{'' if forget_gate else '-no-forget-gate'}-{mode}"] = lstm

    for with_lengths in (False, True):

        def gru(with_lengths=with_lengths):
            p = _problem(shape, dtype, 3)
            u = p["uniform"]
            lengths = p["lengths"] if with_lengths else None
            hs, cache = fb.gru_forward(p["x"], u(D, 3 * H), u(H, 3 * H), u(3 * H), u(H), p["h0"], lengths=lengths)
            return [hs, *fb.gru_backward(cache, p["dhs"])]

        cases["gru" + ("-lengths" if with_lengths else "")] = gru

    def loss():
        p = _problem(shape, dtype, 4)
        targets = p["rng"].integers(0, 7, (T, B))
        value, grads = fb.softmax_cross_entropy(p["dhs"], p["uniform"](H, 7), p["uniform"](7), targets)
        return [np.array(value), *grads]

    cases["softmax-cross-entropy"] = loss

    for kind in ("RNN", "LSTM", "GRU"):

        def stack(kind=kind):
            p = _problem(shape, dtype, 5)
            layer = getattr(fb, kind)(D, H, num_layers=2, bidirectional=True, dtype=dtype, seed=6)
            outputs, _ = layer.forward(p["x"], lengths=p["lengths"])
            dx, dstate = layer.backward(p["rng"].standard_normal(outputs.shape).astype(dtype))
            states = dstate if isinstance(dstate, tuple) else (dstate,)
            return [outputs, dx, *states, *(layer.grads[name] for name in sorted(layer.grads))]

        cases[f"layer-{kind}-2-bidirectional"] = stack

    def lstm_diagnostics():
        p = _problem(shape, dtype, 7)
        u = p["uniform"]
        _, _, cache = fb.lstm_forward(p["x"], u(D, 4 * H), u(H, 4 * H), u(4 * H), p["h0"], p["c0"])
        norms = diagnostics.lstm_jacobian_norms(cache)
        return [
            norms.norms,
            norms.data_bound,
            diagnostics.hidden_gradient_norms(cache, p["dhs"], p["dc_T"]).per_sequence,
        ]

    cases["lstm-jacobian-norms"] = lstm_diagnostics
    return cases


def all_cases():
    """(case id, function) for every shape, dtype, kernel and thread count."""
    for shape_name, shape in SHAPES.items():
        for dtype in (np.float32, np.float64):
            for name, run in _kernel_cases(shape, dtype).items():
                for threads in THREADS:
                    yield f"{name}/{shape_name}/{np.dtype(dtype).name}/{threads}-threads", run, threads


def run_case(run, threads: int) -> str:
    saved = fb.get_num_threads()
    fb.set_num_threads(threads)
    try:
        return _digest(run())
    finally:
        fb.set_num_threads(saved)


def recorded() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


CASES = list(all_cases())


@pytest.mark.parametrize(("case", "run", "threads"), CASES, ids=[case for case, _, _ in CASES])
def test_bits_as_recorded(case, run, threads):
    record = recorded().get(build_key())
    if record is None:
        pytest.skip(f"no bits recorded for this build ({build_key()}): python tests/test_recorded_bits.py")
    assert case in record, f"{case}: not recorded for this build: python tests/test_recorded_bits.py"
    assert run_case(run, threads) == record[case], f"{case}: the bits differ from the recorded ones"


if __name__ == "__main__":
    everything = recorded()
    everything[build_key()] = {case: run_case(run, threads) for case, run, threads in CASES}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(CASES)} digests for {build_key()} in {RECORD}", file=sys.stderr)
