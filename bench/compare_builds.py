"""Two builds of fastbptt timed against each other: before and after a change, in one run.

Each build is a Python interpreter with its own fastbptt installed (a venv). The script runs
``python -m fastbptt bench --json`` with the same options in each, taking turns for ``--rounds`` rounds, so that a
change in the machine's load falls on both alike; a row reports the median over the rounds of each run's
fastbptt time, and the ratio (above 1: the second build is faster). The torch column is the same torch in both
runs, a yardstick for the load of each half. Example:

    python bench/compare_builds.py /tmp/before/bin/python .venv/bin/python --rounds 3 -- \\
        --cells rnn,lstm,gru --shapes S,M,L,LONG --no-reference --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

KEY = ("cell", "dtype", "threads", "shape")


def run_bench(python: str, bench_args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rows.json"
        subprocess.run(
            [python, "-m", "fastbptt", "bench", *bench_args, "--json", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=directory,  # not a checkout, so that each interpreter imports its own installed fastbptt
            env=os.environ,
        )
        return json.loads(path.read_text())


def version_line(python: str) -> str:
    code = "import fastbptt as fb; print(fb.__file__, '|', fb.build_info()['isa_compiled'])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the Python of the first build (before)")
    parser.add_argument("second", help="the Python of the second build (after)")
    parser.add_argument("--rounds", type=int, default=3, help="bench runs per build, taking turns")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the options of fastbptt bench")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    times: dict[tuple, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for label, python in (("first", args.first), ("second", args.second)):
            for row in run_bench(python, bench_args):
                if "fastbptt_ms" not in row:
                    continue
                slot = times.setdefault(tuple(row[k] for k in KEY), {})
                slot.setdefault(label, []).append(row["fastbptt_ms"])
                slot.setdefault(label + "_torch", []).append(row["torch_ms"] or float("nan"))
    print(f"first: {version_line(args.first)}\nsecond: {version_line(args.second)}")
    print(f"bench options: {' '.join(bench_args)}; {args.rounds} rounds, medians\n")
    print("| cell | dtype | threads | shape | first ms | second ms | first/second | torch ms (first's runs) |")
    print("|---|---|---|---|---|---|---|---|")
    for key, slot in times.items():
        first, second = statistics.median(slot["first"]), statistics.median(slot["second"])
        torch_ms = statistics.median(slot["first_torch"])
        print(f"| {' | '.join(map(str, key))} | {first:.2f} | {second:.2f} | {first / second:.3f} | {torch_ms:.2f} |")


if __name__ == "__main__":
    main()
