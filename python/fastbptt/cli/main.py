"""Command line: ``python -m fastbptt <command>`` (also the ``fastbptt`` console script)."""

from __future__ import annotations

import argparse
import sys

from .. import _core


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        quick=args.quick,
        epochs=args.epochs,
        hidden=args.hidden,
        length=args.length,
        updates=args.updates,
        seed=args.seed,
        out_dir=args.out_dir,
    )
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from .diagnose import run_diagnose

    run_diagnose(T=args.length, B=args.batch, H=args.hidden, seed=args.seed, out_dir=args.out_dir)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_from_args

    return run_from_args(args)


def seed_and_output_dir(command: argparse.ArgumentParser, default_dir: str, what: str) -> None:
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--output-dir", "--out-dir", dest="out_dir", default=default_dir, help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastbptt", description="Fast, exact BPTT for RNNs and LSTMs on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastbptt {_core.__version__}")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo",
        help="train a character LSTM and compare RNNs on a long-range task",
        description="Trains recurrent models end to end on data that ships with fastbptt.",
    )
    demo.add_argument("--quick", action="store_true", help="a smoke run, well under 30 seconds")
    demo.add_argument("--epochs", type=int, help="epochs of the character model (default 30; 2 with --quick)")
    demo.add_argument("--hidden", type=int, help="hidden units of the character model (default 128)")
    demo.add_argument("--length", type=int, default=100, help="sequence length of the long-range task")
    demo.add_argument("--updates", type=int, help="updates per model in the long-range task (default 1500)")
    seed_and_output_dir(demo, "fastbptt-demo", "where the model and figures go")
    demo.set_defaults(run=_demo)
    diagnose = commands.add_parser(
        "diagnose",
        help="measure how gradients vanish or explode through time",
        description="Exact Jacobian-product norms against lag for RNNs of several spectral radii and an LSTM.",
    )
    diagnose.add_argument("--length", type=int, default=100, help="T")
    diagnose.add_argument("--batch", type=int, default=16, help="B")
    diagnose.add_argument("--hidden", type=int, default=64, help="H")
    seed_and_output_dir(diagnose, "fastbptt-diagnose", "where the figure goes")
    diagnose.set_defaults(run=_diagnose)
    bench = commands.add_parser(
        "bench",
        help="time fastbptt against torch.nn and the NumPy reference",
        description="Times forward + backward side by side; prints one Markdown table.",
    )
    from .bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)
