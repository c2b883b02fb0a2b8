"""Keep freed tensor memory in the process for the next step instead of handing it back to the OS.

Why: glibc serves every allocation above its mmap threshold with a fresh `mmap` and unmaps it on
`free`. A training step allocates the same few-MB activations every time, so each step page-faults
all of them in again: ~1,600 minor faults and ~3 ms of kernel time per `nanda-p113` step on a 2-core
CPU. Raising glibc's mmap and trim thresholds once makes those blocks come from, and go back to, the
heap (`benchmarks/allocator_effect.py` measures the effect; the README has the figures). Elsewhere (macOS, musl,
Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for the mmap threshold on 64-bit
_TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap instead of trimming it


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when glibc accepted both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
