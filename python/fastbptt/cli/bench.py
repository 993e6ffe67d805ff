"""``python -m fastbptt bench``: fastbptt against torch.nn and the NumPy reference, side by side in one run.

Every row times forward + backward to all parameters and the input (loss = sum of the outputs; ``--forward-only``:
the forward pass alone, recording what backward needs) for the same
shapes, dtype and thread count, and reports medians of repeated runs (fastbptt, torch.nn and fastbptt.torch timed
in turn within every round, so that the machine's changing load falls on all three alike), the ratios, fastbptt's
GFLOP/s and the fraction of the machine's matrix-product rate measured in the same run (NumPy's BLAS on a
2048 x 2048 product).
FLOPs are counted as 3 * T * 2 * B * (D + H) * G * H (G = 1 for the RNN, 3 for the GRU, 4 for the LSTM) per
layer and direction (layer k > 0 has D = directions * H); a third of that for the forward pass alone. "lstm-2bi" is
a two-layer bidirectional LSTM (the fastbptt.LSTM layer, torch.nn.LSTM and fastbptt.torch.LSTM), "lstm-2" and
"gru-2" two-layer one-direction stacks (their layers run as a wavefront at two threads); "lstm-proj" an
LSTM whose output is projected to H / 2 features (``W_hr``, torch.nn.LSTM's ``proj_size``), counted as
3 * T * 2 * B * ((D + P) * 4H + H * P).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

from ..kernels import functional as fast
from ..kernels import reference
from ..kernels.threads import get_num_threads, set_num_threads

SHAPES = {  # T, B, D, H
    "S": (50, 16, 32, 32),
    "M": (100, 32, 128, 128),
    "L": (100, 64, 256, 256),
    "XL": (50, 128, 512, 512),
    "LONG": (1000, 8, 64, 64),
}
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "lstm-2bi": 4, "lstm-2": 4, "gru-2": 3, "lstm-proj": 4}
# cell -> (num_layers, bidirectional); the others are one layer, one direction
STACKS = {"lstm-2bi": (2, True), "lstm-2": (2, False), "gru-2": (2, False)}
PROJECTED = {"lstm-proj"}  # an LSTM whose output is projected to P = H / 2 features (torch.nn.LSTM's proj_size)


def base_cell(cell: str) -> str:
    """The registered cell a benchmark cell runs ("lstm" for "lstm-2bi")."""
    return cell.split("-")[0]


def features(cell: str, H: int) -> int:
    """The features of a cell's output: H, or the projection's H / 2."""
    return max(1, H // 2) if cell in PROJECTED else H


REFERENCE_FLOP_LIMIT = 3e10  # the NumPy reference is single-threaded here; beyond this it only costs minutes


def median_ms(run, repeats: int) -> tuple[float, list[float]]:
    run()  # warm-up: first-touch allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), times


SETTLE_S = 0.02  # longer than the idle spinning of OpenMP and OpenBLAS worker threads after a call (a few ms)
# A timed sample lasts at least this long: a shorter call is timed as the mean of as many calls in a row, since a
# single call of a millisecond or less is at the mercy of one interrupt or one descheduling of a shared machine.
SAMPLE_S = 0.02


def settle(run, last_ms: float | None) -> int:
    """Brings a library to the state of a training loop before it is timed: untimed calls for SETTLE_S (at least
    one), so that its own threads are awake and the previous library's idle threads, which spin for a while after
    their last call, no longer compete for the cores. For calls over 200 ms that spinning is lost in the noise, and
    an untimed call would double the run: there it is a pause. Returns the calls a sample of SAMPLE_S takes."""
    if last_ms is not None and last_ms > 200:
        time.sleep(SETTLE_S)
        return 1
    start = time.perf_counter()
    run()
    calls = 1
    while (elapsed := time.perf_counter() - start) < SETTLE_S:
        run()
        calls += 1
    return max(1, math.ceil(SAMPLE_S * calls / elapsed))


def medians_interleaved(runs: dict, repeats: int) -> dict:
    """(median ms per call, all samples) of each run, the runs timed in turn within every round, so that a change
    in the machine's load during the measurement falls on all of them alike: their ratios are what this is for.
    A sample is the mean of the calls in a row that last SAMPLE_S (one call for longer ones)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            calls = settle(run, times[name][-1] if times[name] else None)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append(1e3 * (time.perf_counter() - start) / calls)
    return {name: (statistics.median(samples), samples) for name, samples in times.items()}


class BlasLimitError(RuntimeError):
    """NumPy's BLAS runs on more threads than a measurement says it does."""


def blas_limits(threads: int):
    """A context in which NumPy's BLAS runs on ``threads`` threads (threadpoolctl); raises BlasLimitError when the
    limit does not take, so that no "1 thread" figure is measured on every core."""
    from threadpoolctl import threadpool_info, threadpool_limits

    limits = threadpool_limits(limits=threads, user_api="blas")
    blas = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    wrong = [pool for pool in blas if pool.get("num_threads") != threads]
    if not blas or wrong:
        limits.restore_original_limits()
        found = ", ".join(f"{pool.get('internal_api')} at {pool.get('num_threads')}" for pool in blas) or "no BLAS"
        raise BlasLimitError(f"could not limit NumPy's BLAS to {threads} thread(s): threadpoolctl sees {found}")
    return limits


def matmul_rate(dtype, threads: int, repeats: int) -> float:
    """GFLOP/s of NumPy's BLAS on a 2048 x 2048 product: the machine's matrix-product rate in this run."""
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    with blas_limits(threads):
        ms, _ = median_ms(lambda: a @ b, repeats)
    return 2 * n**3 / ms / 1e6


def flop_count(cell: str, shape, backward: bool = True) -> int:
    T, B, D, H = shape
    if cell in PROJECTED:  # the gates' product from [x, h] (P features), then the projection [B, H] x [H, P]
        P = features(cell, H)
        return (3 if backward else 1) * T * 2 * B * ((D + P) * GATES[cell] * H + H * P)
    layers, bidirectional = STACKS.get(cell, (1, False))
    directions = 2 if bidirectional else 1
    inputs = D + (layers - 1) * directions * H  # summed over layers
    return (3 if backward else 1) * T * 2 * B * directions * (inputs + layers * H) * GATES[cell] * H


def problem(cell: str, shape, dtype):
    T, B, D, H = shape
    G = GATES[cell]
    rng = np.random.default_rng(0)
    bound = 1 / np.sqrt(H)
    directions = 2 if STACKS.get(cell, (1, False))[1] else 1
    P = features(cell, H)
    return {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "W_x": rng.uniform(-bound, bound, (D, G * H)).astype(dtype),
        "W_h": rng.uniform(-bound, bound, (P, G * H)).astype(dtype),
        "b": rng.uniform(-bound, bound, G * H).astype(dtype),
        "b_hn": rng.uniform(-bound, bound, H).astype(dtype),
        "W_hr": rng.uniform(-bound, bound, (H, P)).astype(dtype) if cell in PROJECTED else None,
        "dhs": np.ones((T, B, directions * P), dtype=dtype),
    }


def numpy_runner(module, cell: str, p, backward: bool = True):
    """forward (+ backward) of ``module`` (fastbptt or its reference) on problem ``p``; a stacked cell runs the
    layer class (its own initial weights) on the module's backend."""
    if cell in STACKS:
        from ..training.layers import GRU, LSTM

        layers, bidirectional = STACKS[cell]
        T, B, D = p["x"].shape
        layer = {"lstm": LSTM, "gru": GRU}[base_cell(cell)](
            D,
            p["W_h"].shape[0],
            num_layers=layers,
            bidirectional=bidirectional,
            seed=0,
            dtype=p["x"].dtype,
            backend="reference" if module is reference else "fast",
        )

        def run():
            layer.forward(p["x"])
            if backward:
                layer.backward(p["dhs"])
    elif cell == "gru":

        def run():
            _, cache = module.gru_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["b_hn"])
            if backward:
                module.gru_backward(cache, p["dhs"])
    elif cell in ("lstm", "lstm-proj"):

        def run():
            _, _, cache = module.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], W_hr=p["W_hr"])
            if backward:
                module.lstm_backward(cache, p["dhs"])
    else:

        def run():
            _, cache = module.rnn_forward(p["x"], p["W_x"], p["W_h"], p["b"])
            if backward:
                module.rnn_backward(cache, p["dhs"])

    return run


def torch_runner(torch, module_class, cell: str, p, backward: bool = True, no_grad: bool = False):
    """forward (+ backward) of a torch module (torch.nn or fastbptt.torch) with the problem's weights; the forward
    runs with autograd recording, as in training, unless ``no_grad`` (inference: under torch.no_grad(), an input
    that does not require grad, no backward)."""
    T, B, D = p["x"].shape
    H = p["b"].shape[0] // GATES[cell]
    dtype = torch.float32 if p["x"].dtype == np.float32 else torch.float64
    layers, bidirectional = STACKS.get(cell, (1, False))
    projection = {"proj_size": features(cell, H)} if cell in PROJECTED else {}
    if projection:  # torch.nn says at each call that oneDNN has no projection; the table says what it costs
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    module = module_class(D, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, **projection)
    if cell not in STACKS:  # the problem's weights; a stack keeps torch's initialisation
        with torch.no_grad():
            module.weight_ih_l0.copy_(torch.from_numpy(p["W_x"].T))
            module.weight_hh_l0.copy_(torch.from_numpy(p["W_h"].T))
            module.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
            module.bias_hh_l0.zero_()
            if cell == "gru":
                module.bias_hh_l0[2 * H :].copy_(torch.from_numpy(p["b_hn"]))
            if cell in PROJECTED:
                module.weight_hr_l0.copy_(torch.from_numpy(p["W_hr"].T))
    x = torch.from_numpy(p["x"]).requires_grad_(not no_grad)

    def run():
        for parameter in (x, *module.parameters()):
            parameter.grad = None
        output, _ = module(x)
        if backward:
            output.sum().backward()

    def infer():
        with torch.no_grad():
            module(x)

    return (infer if no_grad else run), module, x


def check_agreement(torch) -> None:
    """The benchmark never times a wrong computation: fastbptt, its torch module and torch.nn agree first."""
    import fastbptt.torch as fbt

    for cell in GATES:
        p = problem(cell, (7, 3, 5, 6), np.float64)
        ours, theirs = module_classes(torch, fbt, cell)
        _, module, x = torch_runner(torch, theirs, cell, p)
        expected = module(x)[0].detach().numpy()
        _, dropin, x2 = torch_runner(torch, ours, cell, p)
        dropin.load_state_dict(module.state_dict())
        np.testing.assert_allclose(dropin(x2)[0].detach().numpy(), expected, rtol=1e-10, atol=1e-12)
        if cell not in STACKS:
            np.testing.assert_allclose(module_output(fast, cell, p), expected, rtol=1e-10, atol=1e-12)


def module_classes(torch, fbt, cell: str):
    """(fastbptt.torch class, torch.nn class) of a cell."""
    name = {"rnn": "RNN", "gru": "GRU"}.get(base_cell(cell), "LSTM")
    return getattr(fbt, name), getattr(torch.nn, name)


def module_output(module, cell: str, p) -> np.ndarray:
    """The outputs of a one-layer cell of ``module`` (fastbptt or its reference) on problem ``p``."""
    if cell == "gru":
        return module.gru_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["b_hn"])[0]
    if cell in ("lstm", "lstm-proj"):
        return module.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], W_hr=p["W_hr"])[0]
    return module.rnn_forward(p["x"], p["W_x"], p["W_h"], p["b"])[0]


def cpu_description() -> str:
    """The CPU's model name, family/model numbers and widest SIMD extension (Linux; the model name elsewhere): the
    same model name covers machines whose vector units differ by a factor of two or more."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "?"
    flags = set(fields.get("flags", "").split())
    simd = next(
        (name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "SSE"
    )
    if "fma" in flags:
        simd += "+FMA"
    family = f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return ", ".join(part for part in (fields.get("model name", "?"), family, simd) if part)


def header(torch, out) -> None:
    from .. import build_info

    print(
        f"fastbptt {build_info()['version']} ({build_info()['isa_compiled']}, {build_info()['threading']}), "
        f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
        f"Python {platform.python_version()}",
        file=out,
    )
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores", file=out)
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        details = ", ".join(
            str(value)
            for value in (pool.get("version"), pool.get("architecture"), f"{pool.get('num_threads')} threads")
            if value
        )
        api = pool.get("user_api", "?")
        name = pool.get("internal_api") if pool.get("internal_api") != api else pool.get("prefix")
        print(f"{api}: {name} ({details})", file=out)
    slowed = [name for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(name)]
    if slowed:
        print(
            f"warning: {', '.join(slowed)} set; they slow NumPy's OpenBLAS (the reference and the matrix-product "
            "rate). For fair NumPy figures run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastbptt "
            "bench",
            file=out,
        )


def print_row(values, out) -> None:
    """One row of a Markdown table."""
    print("| " + " | ".join(values) + " |", file=out, flush=True)


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def print_header(labels: list, out) -> None:
    """The header of a Markdown table and the line under it."""
    print_row(labels, out)
    print("|" + "---|" * len(labels), file=out, flush=True)


def measured(row: dict, columns: list) -> list:
    """A row's measured values as text, by ``columns`` of (header, key of the row, digits)."""
    return [fmt(row[key], digits) for _, key, digits in columns]


#: The main table's measured columns: (header, key of the row, digits).
BENCH_COLUMNS = [
    ("fastbptt ms", "fastbptt_ms", 2),
    ("torch ms", "torch_ms", 2),
    ("fb.torch ms", "dropin_ms", 2),
    ("reference ms", "reference_ms", 1),
    ("torch/fb", "torch_over_fb", 2),
    ("ref/fb", "ref_over_fb", 1),
    ("fb GFLOP/s", "gflops", 1),
    ("% of matmul", "percent_of_matmul", 0),
]

#: The --torch table's measured columns.
TORCH_COLUMNS = [
    ("torch.nn train ms", "torch_train_ms", 2),
    ("fb.torch train ms", "dropin_train_ms", 2),
    ("train torch/fb", "train_ratio", 2),
    ("torch.nn no_grad ms", "torch_no_grad_ms", 2),
    ("fb.torch no_grad ms", "dropin_no_grad_ms", 2),
    ("no_grad torch/fb", "no_grad_ratio", 2),
    ("kernels train ms", "kernels_train_ms", 2),
    ("module overhead %", "overhead_percent", 0),
    ("autograd floor ms", "floor_train_ms", 2),
    ("overhead beyond floor %", "overhead_beyond_floor_percent", 0),
]


def run_bench(
    cells, dtypes, shapes, threads_list, repeats: int, with_reference: bool, backward: bool = True, out=sys.stdout
) -> list:
    try:
        import torch
    except ImportError:
        torch = None
    header(torch, out)
    if torch is not None:
        check_agreement(torch)
        import fastbptt.torch as fbt
    rows = []
    print_header(["cell", "dtype", "threads", "shape", "T,B,D,H", *(c[0] for c in BENCH_COLUMNS)], out)
    saved_threads = get_num_threads()
    try:
        for threads in threads_list:
            set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            rates = {dtype: matmul_rate(dtype, threads, max(3, repeats)) for dtype in dtypes}
            for dtype in dtypes:
                print(
                    f"| matmul 2048 | {np.dtype(dtype).name} | {threads} | | | | | | | | | {rates[dtype]:.1f} | 100 |",
                    file=out,
                    flush=True,
                )
            for cell in cells:
                for dtype in dtypes:
                    for name in shapes:
                        row = measure(
                            cell,
                            dtype,
                            name,
                            threads,
                            repeats,
                            with_reference,
                            torch,
                            fbt if torch is not None else None,
                            rates[dtype],
                            backward,
                        )
                        rows.append(row)
                        print_row(
                            [
                                cell,
                                np.dtype(dtype).name,
                                str(threads),
                                name,
                                ",".join(map(str, SHAPES[name])),
                                *measured(row, BENCH_COLUMNS),
                            ],
                            out,
                        )
    finally:
        set_num_threads(saved_threads)
    return rows


def measure(cell, dtype, name, threads, repeats, with_reference, torch, fbt, matmul_gflops, backward) -> dict:
    shape = SHAPES[name]
    T, B, D, H = shape
    flops = flop_count(cell, shape, backward)
    p = problem(cell, shape, dtype)
    row = {
        "cell": cell,
        "dtype": np.dtype(dtype).name,
        "threads": threads,
        "shape": name,
        "TBDH": shape,
        "flops": flops,
        "matmul_gflops": matmul_gflops,
        "backward": backward,
    }
    runs = {"fastbptt": numpy_runner(fast, cell, p, backward)}
    if torch is not None:
        dropin_class, torch_class = module_classes(torch, fbt, cell)
        runs["torch"] = torch_runner(torch, torch_class, cell, p, backward)[0]
        runs["dropin"] = torch_runner(torch, dropin_class, cell, p, backward)[0]
    row["torch_ms"] = row["dropin_ms"] = row["reference_ms"] = None
    for name, (median, samples) in medians_interleaved(runs, repeats).items():
        row[name + "_ms"], row[name + "_times"] = median, samples
    if with_reference and threads == 1 and flops <= REFERENCE_FLOP_LIMIT:
        with blas_limits(threads):
            row["reference_ms"], row["reference_times"] = median_ms(
                numpy_runner(reference, cell, p, backward), max(1, repeats // 2)
            )
    fb_ms = row["fastbptt_ms"]
    row["torch_over_fb"] = None if row["torch_ms"] is None else row["torch_ms"] / fb_ms
    row["ref_over_fb"] = None if row["reference_ms"] is None else row["reference_ms"] / fb_ms
    row["gflops"] = flops / fb_ms / 1e6
    row["percent_of_matmul"] = 100 * row["gflops"] / matmul_gflops
    return row


TORCH_CELLS = ("lstm", "gru", "lstm-2", "gru-2")
TORCH_SHAPES = ("S", "M", "L", "LONG")


def error_inputs_refused_as_torch_nn(torch, fbt) -> tuple[int, list]:
    """PyTorch's own list of bad RNN/GRU/LSTM arguments (``torch.testing._internal.common_modules``, which needs
    expecttest) run against fastbptt.torch: (how many there are, those not refused with torch.nn's exception type
    and message)."""
    import re

    from torch.testing._internal import common_modules as common

    total, failures = 0, []
    for info in common.module_db:
        if info.module_cls not in (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM) or info.module_error_inputs_func is None:
            continue
        ours = getattr(fbt, info.module_cls.__name__)
        for error_input in info.module_error_inputs_func(
            info, device="cpu", dtype=torch.float32, requires_grad=False, training=True
        ):
            total += 1
            sample = error_input.module_error_input
            try:
                module = ours(*sample.constructor_input.args, **sample.constructor_input.kwargs)
                if error_input.error_on == common.ModuleErrorEnum.CONSTRUCTION_ERROR:
                    failures.append((info.module_cls.__name__, sample, "constructed"))
                    continue
                module(*sample.forward_input.args, **sample.forward_input.kwargs)
                failures.append((info.module_cls.__name__, sample, "accepted"))
            except Exception as error:  # noqa: BLE001 - compared with what torch.nn raises
                if not isinstance(error, error_input.error_type) or not re.search(error_input.error_regex, str(error)):
                    failures.append((info.module_cls.__name__, sample, f"{type(error).__name__}: {error}"))
    return total, failures


def run_torch_comparison(threads_list, repeats: int, out=sys.stdout) -> list:
    """fastbptt.torch against torch.nn, float32, in training (forward + backward) and under torch.no_grad(), with
    the kernels alone beside them (what fastbptt.torch's module path adds to them is its overhead)."""
    import torch

    import fastbptt.torch as fbt

    header(torch, out)
    check_agreement(torch)
    print_header(["cell", "threads", "shape", *(c[0] for c in TORCH_COLUMNS)], out)
    rows, saved = [], (get_num_threads(), torch.get_num_threads())
    try:
        for threads in threads_list:
            set_num_threads(threads)
            torch.set_num_threads(threads)
            for cell in TORCH_CELLS:
                for name in TORCH_SHAPES:
                    p = problem(cell, SHAPES[name], np.float32)
                    dropin, theirs = module_classes(torch, fbt, cell)
                    dropin_train, dropin_module, x = torch_runner(torch, dropin, cell, p)
                    empty = empty_sequence_module(torch, dropin_module)

                    def floor_train(empty=empty, x=x):
                        for tensor in (x, *empty.parameters()):
                            tensor.grad = None
                        empty(x)[0].sum().backward()

                    runs = {
                        "torch_train": torch_runner(torch, theirs, cell, p)[0],
                        "dropin_train": dropin_train,
                        "floor_train": floor_train,
                        "torch_no_grad": torch_runner(torch, theirs, cell, p, backward=False, no_grad=True)[0],
                        "dropin_no_grad": torch_runner(torch, dropin, cell, p, backward=False, no_grad=True)[0],
                        "kernels_train": numpy_runner(fast, cell, p),
                    }
                    row = {"cell": cell, "threads": threads, "shape": name, "dtype": "float32"}
                    for key, (median, samples) in medians_interleaved(runs, repeats).items():
                        row[key + "_ms"], row[key + "_times"] = median, samples
                    row["train_ratio"] = row["torch_train_ms"] / row["dropin_train_ms"]
                    row["no_grad_ratio"] = row["torch_no_grad_ms"] / row["dropin_no_grad_ms"]
                    row["overhead_percent"] = 100 * (row["dropin_train_ms"] / row["kernels_train_ms"] - 1)
                    beyond = row["dropin_train_ms"] - row["floor_train_ms"]
                    row["overhead_beyond_floor_percent"] = 100 * (beyond / row["kernels_train_ms"] - 1)
                    rows.append(row)
                    values = [cell, str(threads), name, *measured(row, TORCH_COLUMNS)]
                    print_row(values, out)
    finally:
        set_num_threads(saved[0])
        torch.set_num_threads(saved[1])
    try:
        total, failures = error_inputs_refused_as_torch_nn(torch, fbt)
    except ImportError as error:
        print(f"\nPyTorch's error inputs: not run ({error}; pip install expecttest)", file=out)
    else:
        refused = total - len(failures)
        print(f"\nPyTorch's error inputs refused as torch.nn refuses them: {refused} of {total}", file=out)
        rows.append({"error_inputs": total, "error_inputs_refused": refused})
    return rows


STEP_CELLS = ("lstm", "gru", "rnn")
STEP_SHAPES = ((1, 64), (1, 256), (16, 64), (16, 256))  # B, H (D = H)
STEP_COUNT = 100  # steps of the Python loop of one measurement
SAMPLE_TOKENS, SAMPLE_HIDDEN, SAMPLE_VOCAB = 1000, 128, 65


def step_loop_runner(torch, cell_module, B: int, H: int):
    """Forward and backward through a Python loop of STEP_COUNT calls of a step cell (loss: the sum of every h)."""
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(STEP_COUNT, B, H, generator=generator)

    def run():
        state, loss = None, 0.0
        for t in range(STEP_COUNT):
            state = cell_module(xs[t], state)
            loss = loss + (state[0] if isinstance(state, tuple) else state).sum()
        loss.backward()

    return run


def empty_sequence_module(torch, module):
    """A module that computes nothing in place of ``module``: one torch.autograd.Function over the input and
    ``module``'s parameters whose forward returns fresh tensors of the outputs' shapes and whose backward returns
    fresh ones of the gradients' (left unwritten: writing them is the kernels' work). A training step through it
    (forward, ``output.sum().backward()``) costs what any module written as a Python autograd.Function pays besides
    its arithmetic: the floor of fastbptt.torch's overhead over its kernels."""

    class EmptySequence(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *parameters):
            ctx.save_for_backward(x, *parameters)
            output = x.new_empty((*x.shape[:2], module.num_directions * module.hidden_size))
            final = x.new_empty((module.num_layers * module.num_directions, x.shape[1], module.hidden_size))
            return output, final, torch.empty_like(final)

        @staticmethod
        def backward(ctx, d_output, *d_finals):
            return tuple(torch.empty_like(saved) for saved in ctx.saved_tensors)

    class Empty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module  # its parameters: the same count of gradients to accumulate

        def forward(self, x):
            output, *finals = EmptySequence.apply(x, *self.inner.parameters())
            return output, tuple(finals)

    return Empty()


def empty_step_cell(torch, state_parts: int):
    """A step cell that computes nothing: each call one torch.autograd.Function node whose forward returns fresh
    tensors of the state's shape and whose backward returns zeros. Its loop costs what any step cell written as a
    Python autograd.Function pays per step besides its arithmetic (fastbptt.torch's included): torch.nn's time over
    it bounds the ratio such a cell can reach."""

    class EmptyStep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, anchor, x, *states):
            return tuple(torch.empty_like(x) for _ in states)

        @staticmethod
        def backward(ctx, *d_finals):
            zeros = torch.zeros_like(d_finals[0])  # of x's shape too (D = H)
            return (torch.zeros(1), zeros, *([zeros] * len(d_finals)))

    class EmptyCell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # as a cell's weights: the outputs require grad

        def forward(self, x, state=None):
            states = [x.new_zeros(x.shape)] * state_parts if state is None else (state if state_parts > 1 else [state])
            finals = EmptyStep.apply(self.anchor, x, *states)
            return finals if state_parts > 1 else finals[0]

    return EmptyCell()


def sample_per_token_call(model, length: int, prime, seed) -> np.ndarray:
    """What ``SequenceModel.sample`` did before it kept a Stepper: each token run through ``model.predict`` (the
    layer's sequence kernels, the weights packed at every call) and drawn with ``rng.choice`` from the softmax it
    returns. The draws are sample's: the same distribution, computed from the logits there (it draws the same
    tokens unless a uniform number falls within rounding of a class's bound)."""
    rng = np.random.default_rng(seed)
    probs, state = model.predict(np.asarray(prime)[:, None])
    last, generated = probs[-1, 0], np.empty(length, dtype=np.int64)
    for k in range(length):
        logits = np.log(np.maximum(last.astype(np.float64), 1e-300))
        p = np.exp(logits - logits.max())
        generated[k] = rng.choice(model.num_classes, p=p / p.sum())
        probs, state = model.predict(np.array([[generated[k]]]), state)
        last = probs[0, 0]
    return generated


def run_step_comparison(threads_list, repeats: int, out=sys.stdout) -> list:
    """Step cells (fastbptt.torch's against torch.nn's, float32, a Python loop of STEP_COUNT steps, forward and
    backward) and ``SequenceModel.sample`` against a sequence call per token."""
    from ..training.model import SequenceModel

    rows, saved = [], get_num_threads()
    try:
        import torch

        import fastbptt.torch as fbt
    except ImportError as error:
        print(f"Step cells: not run ({error})", file=out)
        torch = None
    if torch is not None:
        print(f"Step cells, {STEP_COUNT}-step Python loop, forward + backward, float32 (D = H)\n", file=out)
        print(
            "(floor: a step cell that computes nothing, one Python autograd node per step; torch / floor bounds what"
            " any such cell can reach)\n",
            file=out,
        )
        headers = ["cell", "threads", "B", "H", "torch.nn ms", "fastbptt.torch ms", "floor ms", "torch / fastbptt"]
        print_header([*headers, "torch / floor"], out)
        torch_threads = torch.get_num_threads()
        pairs = {"lstm": (fbt.LSTMCell, torch.nn.LSTMCell), "gru": (fbt.GRUCell, torch.nn.GRUCell)}
        pairs["rnn"] = (fbt.RNNCell, torch.nn.RNNCell)
        try:
            for threads in threads_list:
                set_num_threads(threads)
                torch.set_num_threads(threads)
                for cell in STEP_CELLS:
                    ours_class, theirs_class = pairs[cell]
                    for B, H in STEP_SHAPES:
                        torch.manual_seed(0)
                        theirs = theirs_class(H, H)
                        ours = ours_class(H, H)
                        ours.load_state_dict(theirs.state_dict())
                        runs = {"torch": step_loop_runner(torch, theirs, B, H)}
                        runs["fastbptt"] = step_loop_runner(torch, ours, B, H)
                        empty = empty_step_cell(torch, 2 if cell == "lstm" else 1)
                        runs["floor"] = step_loop_runner(torch, empty, B, H)
                        medians = {name: median for name, (median, _) in medians_interleaved(runs, repeats).items()}
                        row = {"kind": "step", "cell": cell, "threads": threads, "B": B, "H": H}
                        row["torch_ms"], row["fastbptt_ms"], row["floor_ms"] = (medians[k] for k in runs)
                        row["ratio"] = row["torch_ms"] / row["fastbptt_ms"]
                        row["floor_ratio"] = row["torch_ms"] / row["floor_ms"]
                        rows.append(row)
                        columns = ("torch_ms", "fastbptt_ms", "floor_ms", "ratio", "floor_ratio")
                        times = [fmt(row[k], 2) for k in columns]
                        print_row([*(str(v) for v in (cell, threads, B, H)), *times], out)
        finally:
            torch.set_num_threads(torch_threads)
    print(f"\nSequenceModel.sample of {SAMPLE_TOKENS} tokens, H = {SAMPLE_HIDDEN}, float32\n", file=out)
    print_header(["cell", "threads", "a sequence call per token ms", "sample (Stepper) ms", "ratio"], out)
    try:
        for threads in threads_list:
            set_num_threads(threads)
            for cell in STEP_CELLS:
                model = SequenceModel(vocab_size=SAMPLE_VOCAB, hidden_size=SAMPLE_HIDDEN, cell=cell, seed=0)
                stepped = model.sample(SAMPLE_TOKENS, prime=[1, 2, 3], seed=0)
                if not np.array_equal(stepped, sample_per_token_call(model, SAMPLE_TOKENS, [1, 2, 3], 0)):
                    raise AssertionError(f"{cell}: sample and a sequence call per token drew different tokens")
                runs = {
                    "per_call": lambda model=model: sample_per_token_call(model, SAMPLE_TOKENS, [1, 2, 3], 0),
                    "stepper": lambda model=model: model.sample(SAMPLE_TOKENS, prime=[1, 2, 3], seed=0),
                }
                medians = medians_interleaved(runs, repeats)
                row = {"kind": "sample", "cell": cell, "threads": threads, "H": SAMPLE_HIDDEN}
                row["per_call_ms"], row["stepper_ms"] = medians["per_call"][0], medians["stepper"][0]
                row["ratio"] = row["per_call_ms"] / row["stepper_ms"]
                rows.append(row)
                print_row(
                    [cell, str(threads), fmt(row["per_call_ms"]), fmt(row["stepper_ms"]), fmt(row["ratio"], 2)], out
                )
    finally:
        set_num_threads(saved)
    return rows


LAYER_NORM_SHAPES = ("S", "M", "L")


def layer_norm_runners(torch, shape) -> dict:
    """Training (forward + backward, loss = sum of the outputs) of one float32 layer of shape ``shape``: the plain
    LSTM's and the layer-normalised LSTM's kernels, fastbptt.torch.LayerNormLSTM, and a torch autograd composition
    of the layer-normalised LSTM's equations (torch.nn has no such module)."""
    import fastbptt.torch as fbt

    T, B, D, H = shape
    p = problem("lstm", shape, np.float32)
    ones, zeros = np.ones(4 * H, np.float32), np.zeros(H, np.float32)
    normalised = (p["x"], p["W_x"], p["W_h"], p["b"], ones, ones, ones[:H], zeros)

    def plain():
        _, _, cache = fast.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
        fast.lstm_backward(cache, p["dhs"])

    def layer_norm():
        _, _, cache = fast.layer_norm_lstm_forward(*normalised)
        fast.layer_norm_lstm_backward(cache, p["dhs"])

    module = fbt.LayerNormLSTM(D, H)
    x = torch.from_numpy(p["x"]).requires_grad_(True)
    F = torch.nn.functional

    def composition():
        h, c, outputs = x.new_zeros(B, H), x.new_zeros(B, H), []
        projected = F.layer_norm(x @ module.weight_ih_l0.T, (4 * H,)) * module.gamma_ih_l0
        for t in range(T):
            z = projected[t] + F.layer_norm(h @ module.weight_hh_l0.T, (4 * H,)) * module.gamma_hh_l0
            i, f, g, o = (z + module.bias_l0).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,)) * module.gamma_c_l0 + module.beta_c_l0)
            outputs.append(h)
        torch.stack(outputs).sum().backward()

    def dropin():
        module(x)[0].sum().backward()

    return {"plain": plain, "layer_norm": layer_norm, "dropin": dropin, "composition": composition}


def run_layer_norm_comparison(threads_list, repeats: int, out=sys.stdout) -> list:
    """The layer-normalised LSTM against the plain LSTM (fastbptt's kernels) and a torch composition, training,
    float32."""
    import torch

    print_header(
        ["threads", "shape", "lstm ms", "layer-norm lstm ms", "LN / lstm", "fb.torch LN ms", "torch composition ms",
         "composition / LN"],
        out,
    )  # fmt: skip
    rows, saved = [], (get_num_threads(), torch.get_num_threads())
    try:
        for threads in threads_list:
            set_num_threads(threads)
            torch.set_num_threads(threads)
            for name in LAYER_NORM_SHAPES:
                medians = medians_interleaved(layer_norm_runners(torch, SHAPES[name]), repeats)
                row = {"kind": "layer_norm", "threads": threads, "shape": name}
                row.update({key + "_ms": value[0] for key, value in medians.items()})
                row["layer_norm_over_plain"] = row["layer_norm_ms"] / row["plain_ms"]
                row["composition_over_layer_norm"] = row["composition_ms"] / row["layer_norm_ms"]
                rows.append(row)
                values = [row[k] for k in ("plain_ms", "layer_norm_ms", "layer_norm_over_plain", "dropin_ms")]
                values += [row["composition_ms"], row["composition_over_layer_norm"]]
                print_row([str(threads), name, *(fmt(v, 2) for v in values)], out)
    finally:
        set_num_threads(saved[0])
        torch.set_num_threads(saved[1])
    return rows


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def peak_rss_reset() -> int:
    """Resets this process's peak resident memory to its current value (Linux) and returns that value in bytes.

    ``getrusage``'s maximum is no use in a child process: it starts at the parent's size at fork time."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_bytes("VmRSS")


def peak_rss_since_reset() -> int:
    """Peak resident memory in bytes since :func:`peak_rss_reset` (Linux)."""
    return _status_bytes("VmHWM")


def peak_memory_row(cell: str, shape_name: str, dtype) -> dict:
    """Peak resident memory that one forward + backward adds, against ``workspace_bytes``. Runs in a fresh
    interpreter so that the peak is this call's alone."""
    import subprocess

    code = f"""
import numpy as np, fastbptt as fb
from fastbptt.cli.bench import SHAPES, numpy_runner, peak_rss_reset, peak_rss_since_reset, problem
fb.set_num_threads(1)
p = problem({cell!r}, SHAPES[{shape_name!r}], np.{np.dtype(dtype).name})
run = numpy_runner(fb, {cell!r}, p)
small = problem({cell!r}, (2, 2, 2, 2), np.{np.dtype(dtype).name})
numpy_runner(fb, {cell!r}, small)()  # libraries loaded, allocator warmed up
before = peak_rss_reset()
run()
print(peak_rss_since_reset() - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = int(done.stdout.strip().splitlines()[-1])
    from ..kernels.memory import workspace_bytes

    T, B, D, H = SHAPES[shape_name]
    predicted = workspace_bytes(cell, T, B, D, H, dtype)
    return {
        "cell": cell,
        "shape": shape_name,
        "dtype": np.dtype(dtype).name,
        "measured_bytes": measured,
        "workspace_bytes": predicted,
        "ratio": measured / predicted,
    }


def run_scaling(out=sys.stdout) -> list:
    """Training memory against ``workspace_bytes`` and time against T (LONG with T = 1000 and 10000)."""
    rows = []
    print("| cell | dtype | shape | peak RSS added (MB) | workspace_bytes (MB) | measured / predicted |", file=out)
    print("|---|---|---|---|---|---|", file=out, flush=True)
    for cell in ("rnn", "lstm", "gru"):
        for name in ("M", "L", "XL"):
            row = peak_memory_row(cell, name, np.float32)
            rows.append(row)
            print(
                f"| {cell} | float32 | {name} | {row['measured_bytes'] / 2**20:.1f} | "
                f"{row['workspace_bytes'] / 2**20:.1f} | {row['ratio']:.2f} |",
                file=out,
                flush=True,
            )
    print("\n| cell | dtype | T=1000 ms | T=10000 ms | ratio (linear: 10) |", file=out)
    print("|---|---|---|---|---|", file=out, flush=True)
    saved = get_num_threads()
    set_num_threads(1)
    try:
        for cell in ("rnn", "lstm", "gru"):
            runs = {T: numpy_runner(fast, cell, problem(cell, (T, 8, 64, 64), np.float32)) for T in (1000, 10000)}
            medians = medians_interleaved(runs, 7)
            times = [medians[1000][0], medians[10000][0]]
            rows.append({"cell": cell, "T1000_ms": times[0], "T10000_ms": times[1], "ratio": times[1] / times[0]})
            print(
                f"| {cell} | float32 | {times[0]:.1f} | {times[1]:.1f} | {times[1] / times[0]:.2f} |",
                file=out,
                flush=True,
            )
    finally:
        set_num_threads(saved)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastbptt bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", default="rnn,lstm,gru,lstm-2bi", help=f"comma list of {', '.join(GATES)}")
    parser.add_argument("--dtypes", default="float32,float64", help="comma list of float32, float64")
    parser.add_argument("--shapes", default="S,M,L,XL,LONG", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--threads", default=None, help="comma list of thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    parser.add_argument("--quick", action="store_true", help="shapes S and LONG, 3 repeats, one thread")
    parser.add_argument("--forward-only", action="store_true", help="time the (training) forward pass alone")
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    parser.add_argument(
        "--scaling", action="store_true", help="instead: peak training memory vs workspace_bytes, and time vs T"
    )
    parser.add_argument(
        "--torch",
        action="store_true",
        help="instead: fastbptt.torch vs torch.nn (LSTM and GRU, one layer and two, float32, S/M/L/LONG), training "
        "and no_grad, the "
        "module path's overhead over the kernels, and PyTorch's error inputs",
    )
    parser.add_argument(
        "--layer-norm",
        action="store_true",
        help="instead: the layer-normalised LSTM vs the plain LSTM and a torch composition (training, float32, S/M/L)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="instead: fastbptt.torch's step cells vs torch.nn's over a 100-step Python loop (float32, B = 1, 16, "
        "H = 64, 256), and SequenceModel.sample of 1000 tokens vs a sequence call per token",
    )


def run_from_args(args) -> int:
    cells = [c for c in args.cells.split(",") if c]
    dtypes = [np.dtype(d).type for d in args.dtypes.split(",") if d]
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES] + [c for c in cells if c not in GATES]
    if unknown:
        raise SystemExit(f"fastbptt bench: unknown shape or cell {unknown}")
    threads = [1, os.cpu_count() or 1] if args.threads is None else [int(t) for t in args.threads.split(",")]
    threads = sorted(set(threads))
    repeats = args.repeats
    if args.quick:
        shapes, threads, repeats = ["S", "LONG"], [1], 3
    if args.scaling:
        rows = run_scaling()
    elif args.torch:
        rows = run_torch_comparison(threads, repeats)
    elif args.steps:
        rows = run_step_comparison(threads, repeats)
    elif args.layer_norm:
        rows = run_layer_norm_comparison(threads, repeats)
    else:
        rows = run_bench(cells, dtypes, shapes, threads, repeats, not args.no_reference, not args.forward_only)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1, default=str)
    return 0
