"""The number of threads fastbptt's compiled kernels use (all cores by default)."""

from __future__ import annotations

import numpy as np

from .. import _core

# Whether set_num_threads chose the count: a count chosen there wins over the one a front end defaults to
# (fastbptt.torch's modules default to torch's count).
_chosen_by_user = False
_HAS_OPENMP = "OpenMP" in _core.build_info()["threading"]


def set_num_threads(n: int | None) -> None:
    """Makes every later kernel call use ``n`` threads (``n >= 1``); ``None`` gives the count back to the default.

    Results are bit-identical run to run for a given thread count (they may differ in the last bits between
    thread counts). The default is all cores, or ``OMP_NUM_THREADS`` when set; fastbptt.torch's modules default to
    torch's count (``torch.get_num_threads()``) at each call. A count set here wins over both until
    ``set_num_threads(None)``. NumPy's own BLAS threads are not affected; when both run at once, limit one of them
    to avoid oversubscribing the cores.
    """
    global _chosen_by_user
    if n is None:
        _core.reset_num_threads()
        _chosen_by_user = False
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int or None, got {n!r}")
    _core.set_num_threads(int(n))
    _chosen_by_user = True


def get_num_threads() -> int:
    """The number of threads the next kernel call will use."""
    return _core.get_num_threads()


class defaulting_to:
    """Kernel calls inside the block (``with defaulting_to(n):``) use ``n`` threads, unless :func:`set_num_threads`
    chose a count, which wins.

    On exit the count is the default again (or whatever set_num_threads chose inside the block). The count is the
    process's, not the calling thread's: Python threads that run kernels at once share it. A class rather than a
    generator-based context manager: the step cells of fastbptt.torch enter it at every step.
    """

    __slots__ = ("_n", "_sets")

    def __init__(self, n: int):
        self._n = n

    def __enter__(self) -> None:
        # without OpenMP every call runs on one thread anyway
        self._sets = _HAS_OPENMP and not _chosen_by_user
        if self._sets:
            _core.set_num_threads(self._n)

    def __exit__(self, *exc_info) -> None:
        if self._sets and not _chosen_by_user:
            _core.reset_num_threads()
