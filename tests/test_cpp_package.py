"""The C++ package: install the core with CMake once, build examples/cpp and bench/cpp against it, run them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "cpp"
BENCHMARK_MISSING = "Google Benchmark (CMake package 'benchmark') was not found"
FASTBPTT_MISSING = "fastbptt >= 0.1 (its CMake package) was not found"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def cmake_or_skip() -> str:
    cmake = shutil.which("cmake")
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or compiler is None:
        pytest.skip("needs cmake and a C++ compiler on PATH")
    return cmake


def generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def configure(cmake: str, source: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    # Python_EXECUTABLE lets the build find Eigen in this interpreter's cmeel-eigen when no system Eigen exists.
    command = [cmake, "-S", str(source), "-B", str(build), *generator(), f"-DPython_EXECUTABLE={sys.executable}"]
    return run([*command, *options], build.parent)


@pytest.fixture(scope="module")
def installed_core(tmp_path_factory) -> Path:
    """Install prefix of the core, built and installed once for the tests of this module."""
    cmake = cmake_or_skip()
    if not (ROOT / "CMakeLists.txt").exists() or not (ROOT / "examples" / "cpp").exists():
        pytest.skip("needs the source tree (CMakeLists.txt, examples/cpp) next to the tests")
    work = tmp_path_factory.mktemp("core")
    prefix = work / "prefix"
    command = [
        cmake,
        "-S",
        str(ROOT),
        "-B",
        str(work / "build"),
        *generator(),
        f"-DCMAKE_INSTALL_PREFIX={prefix}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "found none" in done.stderr:
        pytest.skip("no Eigen >= 3.4 for a plain CMake build: pip install cmeel-eigen (the test extra has it)")
    assert done.returncode == 0, done.stderr[-3000:]
    run([cmake, "--build", str(work / "build")], work)
    run([cmake, "--install", str(work / "build")], work)
    assert (prefix / "include" / "fastbptt" / "lstm.hpp").exists()
    assert list(prefix.glob("lib*/cmake/fastbptt/fastbptt-config.cmake"))
    return prefix


def test_installed_package_builds_and_trains_an_example(installed_core, tmp_path):
    cmake = cmake_or_skip()
    configure(cmake, ROOT / "examples" / "cpp", tmp_path / "example", f"-DCMAKE_PREFIX_PATH={installed_core}")
    run([cmake, "--build", str(tmp_path / "example")], tmp_path)
    program = tmp_path / "example" / "train_lstm"
    done = run([str(program)], tmp_path)
    first, last = (float(v) for v in done.stdout.strip().splitlines()[-1].split()[1::2])
    assert last < 0.1 * first, done.stdout


def test_benchmarks_skip_with_a_message_when_their_dependencies_are_missing(tmp_path):
    cmake = cmake_or_skip()
    if not BENCH.exists():
        pytest.skip("needs the source tree (bench/cpp) next to the tests")
    # Disabling the two packages stands for a machine that has neither, whatever this one has.
    done = configure(
        cmake,
        BENCH,
        tmp_path / "bench",
        "-DCMAKE_DISABLE_FIND_PACKAGE_fastbptt=ON",
        "-DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON",
    )
    output = done.stdout + done.stderr
    assert "fastbptt C++ benchmarks skipped" in output
    assert FASTBPTT_MISSING in output and "-DCMAKE_PREFIX_PATH=<prefix>" in output, output
    assert BENCHMARK_MISSING in output and "apt install libbenchmark-dev" in output, output
    run([cmake, "--build", str(tmp_path / "bench")], tmp_path)
    assert not list((tmp_path / "bench").glob("bench_kernels*"))


def test_benchmarks_build_against_the_installed_package_and_report_gflops(installed_core, tmp_path):
    cmake = cmake_or_skip()
    build = tmp_path / "bench"
    done = configure(cmake, BENCH, build, f"-DCMAKE_PREFIX_PATH={installed_core}")
    output = done.stdout + done.stderr
    assert FASTBPTT_MISSING not in output, output
    if BENCHMARK_MISSING in output:
        # The skip itself is part of the contract: configuring succeeded and said how to get the library.
        assert "apt install libbenchmark-dev" in output, output
        pytest.skip("Google Benchmark is not installed (apt install libbenchmark-dev); bench/cpp skipped itself")
    run([cmake, "--build", str(build)], tmp_path)
    # Only S with one thread, and a short minimum time per benchmark: this checks the suite runs, not the speed.
    done = run([str(build / "bench_kernels"), "--benchmark_filter=/S/threads:1", "--benchmark_min_time=0.01"], tmp_path)
    for cell in ("rnn", "lstm", "gru", "rnn_fwd", "lstm_fwd", "gru_fwd"):
        for dtype in ("float", "double"):
            line = re.search(rf"^{cell}/{dtype}/S/threads:1\S* .*$", done.stdout, re.MULTILINE)
            assert line, f"{cell}/{dtype}/S/threads:1 missing:\n{done.stdout}"
            rate = re.search(r"GFLOP=([0-9.]+)([kMG]?)/s", line.group(0))
            assert rate and float(rate.group(1)) > 0, line.group(0)
            assert "threads=1" in line.group(0), line.group(0)
    assert "gemm/" not in done.stdout


def test_isa_module_header_names_what_it_probes():
    """The header comment of cmake/FastbpttIsa.cmake names every instruction set its probes test (each ``-m`` flag
    of their CMAKE_REQUIRED_FLAGS; ``-mavx512dq`` as ``DQ`` in the parentheses after ``AVX-512``) and every
    FASTBPTT_ option its conditions read."""
    text = (ROOT / "cmake" / "FastbpttIsa.cmake").read_text(encoding="utf-8")
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    probes = re.findall(r'set\(CMAKE_REQUIRED_FLAGS "([^"]*)"\)', text)
    assert probes, "no probe found: the test no longer reads the module"
    for flag in " ".join(probes).split():
        name = flag.removeprefix("-m")
        avx512 = re.fullmatch(r"avx512(\w+)", name)
        if avx512:
            assert re.search(rf"AVX-512 \([^)]*\b{avx512[1].upper()}\b", header), f"{flag} not in: {header}"
        else:
            assert re.search(rf"\b{name.upper()}\b", header), f"{flag} not in: {header}"
    for option in set(re.findall(r"\bFASTBPTT_(?!ISA_|HOST_)\w+", " ".join(re.findall(r"\bif\((.*)\)", text)))):
        assert option in header, f"{option} not in: {header}"
