"""The number of threads fastbptt's compiled kernels use (all cores by default)."""

from __future__ import annotations

import numpy as np

from .. import _core


def set_num_threads(n: int) -> None:
    """Makes every later kernel call use ``n`` threads (``n >= 1``).

    Results are bit-identical run to run for a given thread count (they may differ in the last bits between
    thread counts). The default is all cores, or ``OMP_NUM_THREADS`` when set. NumPy's own BLAS threads are not
    affected; when both run at once, limit one of them to avoid oversubscribing the cores.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int, got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads the next kernel call will use."""
    return _core.get_num_threads()
