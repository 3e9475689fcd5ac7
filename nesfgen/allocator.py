"""Keep freed memory in the process on glibc, so large tensors are not page-faulted in afresh.

glibc serves every allocation above 32 MB with its own ``mmap`` and unmaps it on free. The estimator
and the training step allocate and free tensors of that size many times a second, so the kernel
zeroes and maps every page again: decoding spent up to half of its CPU time in the kernel. Turning off
mmap-served allocations and raising the trim threshold lets freed blocks be reused from the heap.
The results are bitwise the same; the cost is that the process keeps its peak heap until it exits
(above the trim threshold, memory is still returned).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: free heap above this many bytes is still handed back to the system
TRIM_THRESHOLD = 1 << 30
#: set to 0 to keep the C library's defaults
SWITCH = "NESFGEN_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Configure glibc malloc for reuse; True when applied (False off Linux/glibc or when switched off)."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:  # Windows: no process-wide symbol table
        return False
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):  # another libc's mallopt differs
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc malloc keeps freed memory: %s", applied)
    return applied
