"""Resident-set growth over many small calls: the long version of the leak tests in tests/test_reliability.py.

    python tools/leak_check.py                 # 100,000 calls of each kind, limit 1 MiB
    python tools/leak_check.py --calls 20000

Four kinds of call, each warmed up first, then repeated ``--calls`` times while the resident set size (RSS, from
/proc/self/statm) is sampled:

- training: RNN (tanh) forward + backward, LSTM forward + backward and softmax_cross_entropy on tiny float64 inputs;
- python-errors: an RNN call with LSTM-shaped weights, refused with ValueError by the Python checks (_checks.py);
- core-errors: fastbptt._core.lstm_backward (float64) and lstm_forward (float32) called directly, with arrays the
  binding takes but shapes the C++ core refuses with its own check (ValueError from std::invalid_argument), after
  the binding has allocated the results;
- binding-errors: fastbptt._core.lstm_backward called directly with a 2-D gates array, refused by the binding's
  check of ndim (ValueError) after it has allocated the weight gradients, and with a float32 gates array among
  float64 ones, refused by pybind11's overload resolution (TypeError; slow: pybind11 spells out every overload in
  the message, about 1.4 ms a call).

The canary: every error call checks that the layer its kind is named after refused it (the exception's type and
message, and where it was raised: in _checks.py, or inside the compiled function the call invokes itself, with no
Python frame below it; tests/test_reliability.py's refused_by), and the tool prints what each kind reached before
it measures. A call refused anywhere else stops the run with an AssertionError.

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

from test_reliability import LAYERS, MiB, failing_calls, refusals_of, refused_by, rss_bytes, small_training_call  # noqa: E402

# kind -> (the layer its calls must reach, whether it includes the slow TypeError)
ERROR_KINDS = {"python-errors": ("python", False), "core-errors": ("core", False), "binding-errors": ("binding", True)}


def show_canary(rng) -> None:
    """Prints what each kind reached: the training calls' results, and for each error call what it raised, once
    refused_by has made sure that the kind's layer raised it."""
    print("canary: what each kind reached (the error calls check it again on every call)")
    results = small_training_call(rng)()
    assert all(np.all(np.isfinite(r)) for r in results) and not all(np.all(r == 0) for r in results)
    print(f"  {'training':14s} the kernels returned {len(results)} finite arrays (forward results and gradients)")
    for kind, (layer, slow) in ERROR_KINDS.items():
        for refusal in refusals_of(rng, [layer], slow):
            print(f"  {kind:14s} refused by {LAYERS[layer]}: {refused_by(refusal)}")


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
    show_canary(rng)
    growth = {"training": measure("training", small_training_call(rng), args.calls, args.warm_up)}
    for kind, (layer, slow) in ERROR_KINDS.items():
        growth[kind] = measure(kind, failing_calls(rng, [layer], slow=slow), args.calls, args.warm_up)
    over = {name: value for name, value in growth.items() if value > args.limit_mib * MiB}
    if over:
        print(f"FAIL: growth above {args.limit_mib} MiB: {sorted(over)}")
        return 1
    print(f"OK: every growth within {args.limit_mib} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
