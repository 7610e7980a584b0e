"""Keep freed memory in the process during training instead of handing it back to the kernel.

A training step frees and re-allocates the same few hundred MB of activations every
iteration. glibc's malloc gives memory above its trim threshold back to the kernel
(``madvise``/``brk`` shrink) and takes fresh zeroed pages again on the next step: on the
2-core build machine that cost a million page faults and a fifth of the step in kernel
time, and raising the trim threshold and top pad made DDRNet-23-slim's training step
~15% faster (docs/benchmarks.md, "Allocator"). The price is that peak RSS is kept for
the life of the process, which is what a training run holds anyway.

Only ``semseg train`` calls :func:`keep_freed_memory`; a library user's process is left
alone. Explicit ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` settings win, and on a
C library other than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
KEEP = 1 << 30  # bytes of free heap kept before trimming, and extra heap taken per growth


def keep_freed_memory() -> bool:
    """Raise glibc's trim threshold and top pad to 1 GiB; True if applied."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_TOP_PAD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP)) and bool(mallopt(M_TOP_PAD, KEEP))
