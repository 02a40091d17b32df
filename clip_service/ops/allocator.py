"""glibc's allocator, told to give large freed blocks back to the system at once.

glibc serves each thread from its own arena and, after the first large block
is freed, raises its mmap threshold up to 32 MiB, so large buffers come from
arenas that keep them when freed. Image decodes in many download threads
(libwebp's canvas, a frame's copy) then leave a worker's RSS hundreds of MiB
above what is in use at any moment. A fixed threshold keeps blocks of 8 MiB and
more in mmap, returned on free. Fixing it also fixes the trim threshold, whose
128 KiB default made the service 10% slower (the heap given back and faulted in
again around each forward pass), so that one is set high. Measured side by side
in the service: text batches and single images as fast as with glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 8 << 20
TRIM_BYTES = 256 << 20


def return_large_blocks_to_the_os(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process and its forks; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    # A fixed mmap threshold also fixes the trim threshold at 128 KiB: the heap would be
    # given back and faulted in again around every forward pass (10% slower). Keep it.
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)) and ok
    if not ok:
        log.warning("could not set the allocator's mmap threshold; large freed buffers may stay resident")
    return ok
