"""Keep freed host memory in the process, so XLA's CPU backend does not page-fault it back in every step.

XLA's CPU runtime allocates each execution's buffers with malloc and frees them afterwards. glibc serves
large blocks with fresh `mmap`s (and per-thread arenas hand freed memory back to the kernel), so every step
touches hundreds of MB of new pages, each a page fault the kernel zero-fills: 194,000 minor faults (760 MB)
per GRPO update step of `configs/bench_qwen3.yaml` (64 rows x 96 tokens), measured with getrusage. With one
arena, no mmap'd blocks and freed memory kept up to 2 GB, the same step takes about 41,000 faults.
These are glibc's own knobs (mallopt(3): M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD); they change where
memory comes from, never a computed value. They only act on arenas made afterwards: call this before JAX
starts its backend. Only for CPU-only processes: an accelerator host's runtime threads keep their arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_KEEP_BYTES = 2**31 - 1  # freed memory kept up to this much (mallopt takes an int)


def retain_freed_memory() -> bool:
    """Sets the three malloc options; False (nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES)))
