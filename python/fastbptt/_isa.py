"""Which build of the compiled kernels this process runs.

The kernels are compiled once per instruction set (``baseline`` x86-64, ``avx2`` with FMA, ``avx512`` F/DQ/VL/BW
with FMA; one build elsewhere), each a module ``fastbptt._core_<name>``. At import the widest build that was
compiled and that this CPU runs is loaded as ``fastbptt._core``; the environment variable ``FASTBPTT_ISA`` (one of
those names) forces a build, and an error names a build the CPU cannot run or that was not compiled. The builds
are private: only this module imports them, after asking ``fastbptt._cpu`` (compiled for the baseline) what the
CPU runs; a build imported on a CPU without its instruction set may stop the process with an illegal instruction.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

#: every build's name, widest first
NAMES = ("avx512", "avx2", "baseline")
ENVIRONMENT_VARIABLE = "FASTBPTT_ISA"


def compiled() -> tuple[str, ...]:
    """The builds this installation holds, widest first."""
    return tuple(name for name in NAMES if importlib.util.find_spec(f"{__package__}._core_{name}") is not None)


def runnable() -> tuple[str, ...]:
    """The builds this CPU runs (whether compiled or not), widest first."""
    from ._cpu import instruction_sets

    runs = set(instruction_sets())
    return tuple(name for name in NAMES if name in runs)


def choose(requested: str | None, compiled: tuple[str, ...], runnable: tuple[str, ...]) -> str:
    """The build to load: ``requested`` (FASTBPTT_ISA; None or empty for the default) when it is compiled and
    runnable, else the widest build that is both. ValueError for an unknown name, RuntimeError when a request
    cannot be met."""
    if requested:
        if requested not in NAMES:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}={requested!r}: expected one of {', '.join(NAMES)}")
        if requested not in compiled:
            raise RuntimeError(
                f"{ENVIRONMENT_VARIABLE}={requested}: this installation of fastbptt has no {requested} build "
                f"(it has: {', '.join(compiled) or 'none'})"
            )
        if requested not in runnable:
            raise RuntimeError(
                f"{ENVIRONMENT_VARIABLE}={requested}: this CPU does not run the {requested} instruction set "
                f"(it runs: {', '.join(runnable)}); unset {ENVIRONMENT_VARIABLE} or choose one of those"
            )
        return requested
    for name in compiled:
        if name in runnable:
            return name
    raise RuntimeError(f"fastbptt: no build of the kernels runs on this CPU (compiled: {', '.join(compiled)})")


def load() -> ModuleType:
    """Imports and returns the build :func:`choose` picks for this process."""
    name = choose(os.environ.get(ENVIRONMENT_VARIABLE), compiled(), runnable())
    return importlib.import_module(f"{__package__}._core_{name}")


def in_use(core: ModuleType) -> str:
    """The name of the build ``core`` (the loaded ``fastbptt._core``) is."""
    return core.__name__.rsplit("._core_", 1)[1]
