"""Resident-set growth over many small calls: the long version of the leak tests in tests/test_reliability.py.

    python tools/leak_check.py                 # 100,000 calls of each kind, limit 1 MiB
    python tools/leak_check.py --calls 20000

Three kinds of call, each warmed up first, then repeated ``--calls`` times while the resident set size (RSS, from
/proc/self/statm) is sampled:

- training: RNN (tanh) forward + backward, LSTM forward + backward and softmax_cross_entropy on tiny float64 inputs;
- python-errors: an RNN call with LSTM-shaped weights, refused with ValueError by the Python checks;
- core-errors: lstm_backward on a hand-built cache that the compiled core refuses (ValueError from its own shape
  check, after the binding has allocated the results), plus the RNN call of python-errors;
- binding-errors: the same plus a hand-built cache with a float32 field, refused by the binding with TypeError
  (slow: pybind11 spells out every overload in the message, about 1.4 ms a call).

It prints the RSS before and after and the growth of each, and exits with status 1 when one grows by more than
``--limit-mib``. Linux only. Do not run it under tools/sanitize.sh: ASan's quarantine holds freed memory on purpose.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import lstm_problem  # noqa: E402
from test_reliability import MiB, failing_calls, rss_bytes, small_training_call  # noqa: E402

import fastbptt as fb  # noqa: E402


def python_errors(rng):
    p = lstm_problem(rng, 3, 2, 4, 5)

    def call():
        try:
            fb.rnn_forward(p["x"], p["W_x"], p["W_h"], p["b"])
        except ValueError:
            return
        raise AssertionError("the bad call returned")

    return call


def measure(name: str, call, calls: int, warm_up: int) -> int:
    for _ in range(warm_up):
        call()
    before = rss_bytes()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = time.perf_counter() - t0
    after = rss_bytes()
    growth = after - before
    print(
        f"{name:14s} {calls} calls in {seconds:6.1f} s: RSS {before / MiB:8.2f} -> {after / MiB:8.2f} MiB, "
        f"growth {growth / 1024:+8.1f} KiB"
    )
    return growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--warm-up", type=int, default=5_000)
    parser.add_argument("--limit-mib", type=float, default=1.0)
    args = parser.parse_args()
    rng = np.random.default_rng(20261125)
    growth = {
        "training": measure("training", small_training_call(rng), args.calls, args.warm_up),
        "python-errors": measure("python-errors", python_errors(rng), args.calls, args.warm_up),
        "core-errors": measure("core-errors", failing_calls(rng), args.calls, args.warm_up),
        "binding-errors": measure("binding-errors", failing_calls(rng, type_error=True), args.calls, args.warm_up),
    }
    over = {name: value for name, value in growth.items() if value > args.limit_mib * MiB}
    if over:
        print(f"FAIL: growth above {args.limit_mib} MiB: {sorted(over)}")
        return 1
    print(f"OK: every growth within {args.limit_mib} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
