"""The cache that lets a kernel call reuse the memory of the last call's large output arrays."""

from __future__ import annotations

import os

import numpy as np

from .. import _core


def set_array_cache_limit(nbytes: int) -> None:
    """Keeps at most ``nbytes`` of the memory of dead output arrays for the next kernel calls; 0 turns the cache off.

    The kernels' output arrays of 1 MiB and more (caches, gradients) take their memory from this cache. When such
    an array dies, its block waits there for the next request it fits, instead of going back to the operating
    system, which would have to fault in and zero fresh pages on the next call: a training loop, which asks for
    the same sizes on every step, then runs on warm memory. The least recently freed blocks go first when the
    limit is reached. The default is 256 MiB or a 64th of the physical memory, whichever is smaller, or the
    environment variable ``FASTBPTT_ARRAY_CACHE_BYTES`` when set at import. Arrays are fresh either way (no live
    array shares its memory) and uninitialised until a kernel writes them, as NumPy's are.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"nbytes: expected an int, got {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes: must be >= 0, got {nbytes}")
    _core.set_array_cache_limit(int(nbytes))


def empty_array_cache() -> None:
    """Returns the memory waiting in the array cache to the operating system; the limit stays."""
    _core.empty_array_cache()


def array_cache_info() -> dict[str, int]:
    """The array cache's ``limit`` and ``min_bytes`` (smaller arrays bypass it), the ``cached_bytes`` and
    ``cached_blocks`` waiting, and how many requests were served from it (``hits``) or not (``misses``)."""
    return dict(_core.array_cache_stats())


def _limit_from_environment() -> None:
    value = os.environ.get("FASTBPTT_ARRAY_CACHE_BYTES")
    if value is None:
        return
    try:
        nbytes = int(value)
    except ValueError:
        raise ValueError(f"FASTBPTT_ARRAY_CACHE_BYTES: expected a number of bytes, got {value!r}") from None
    set_array_cache_limit(nbytes)


_limit_from_environment()
