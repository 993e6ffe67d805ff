"""Two builds of fastbptt timed against each other: before and after a change, in one run.

Each build is a Python interpreter with its own fastbptt installed (a venv). The script runs
``python -m fastbptt bench --json`` with the same options in each, one cell and thread count at a time, taking
turns between the builds for ``--rounds`` rounds, so that a change in the machine's load falls on both alike. A row
reports the median over the rounds of each build's fastbptt time and their ratio (above 1: the second build is
faster), and torch's time in each build's runs: the same torch, so a difference between those two columns is the
machine's load, not the change. Example:

    python bench/compare_builds.py /tmp/before/bin/python .venv/bin/python --rounds 3 --cells rnn,lstm,gru \
        --threads 1,2 -- --shapes S,M,L,LONG --no-reference --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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
        )
        return json.loads(path.read_text())


def where(python: str) -> str:
    code = "import fastbptt as fb; print(fb.__file__, '|', fb.build_info()['isa_compiled'])"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]  # an editable install may print its rebuild first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the Python of the first build (before)")
    parser.add_argument("second", help="the Python of the second build (after)")
    parser.add_argument("--rounds", type=int, default=3, help="bench runs per build, cell and thread count")
    parser.add_argument("--cells", default="rnn,lstm,gru,lstm-2bi", help="comma list, one bench run each")
    parser.add_argument("--threads", default="1,2", help="comma list, one bench run each")
    parser.epilog = "Options after -- go to fastbptt bench."
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, bench_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    times: dict[tuple, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for threads in args.threads.split(","):
            for cell in args.cells.split(","):
                for label, python in (("first", args.first), ("second", args.second)):
                    for row in run_bench(python, ["--cells", cell, "--threads", threads, *bench_args]):
                        if "fastbptt_ms" not in row:
                            continue
                        slot = times.setdefault(tuple(row[k] for k in KEY), {})
                        slot.setdefault(label, []).append(row["fastbptt_ms"])
                        slot.setdefault(label + " torch", []).append(row["torch_ms"] or float("nan"))
    print(f"first: {where(args.first)}\nsecond: {where(args.second)}")
    print(f"cells {args.cells}, threads {args.threads}, bench options: {' '.join(bench_args)}; {args.rounds} rounds\n")
    labels = ["first ms", "second ms", "first/second", "torch ms (first's runs)", "torch ms (second's runs)"]
    print("| " + " | ".join([*KEY, *labels]) + " |")
    print("|" + "---|" * (len(KEY) + len(labels)))
    for key, slot in sorted(times.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])):
        first, second = statistics.median(slot["first"]), statistics.median(slot["second"])
        torch_first, torch_second = statistics.median(slot["first torch"]), statistics.median(slot["second torch"])
        values = [f"{first:.2f}", f"{second:.2f}", f"{first / second:.3f}", f"{torch_first:.2f}", f"{torch_second:.2f}"]
        print("| " + " | ".join([*map(str, key), *values]) + " |")


if __name__ == "__main__":
    main()
