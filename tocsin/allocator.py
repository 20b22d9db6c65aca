"""The C allocator of a process that moves Kafka requests and fetches of megabytes.

glibc's malloc serves a large request (above ``M_MMAP_THRESHOLD``, 128 kB at first, moved
up by itself to at most 32 MB) with a fresh ``mmap`` and gives it back on ``free``, and it
hands the top of the heap back to the kernel once more than ``M_TRIM_THRESHOLD`` is free.
Either way the next buffer of the same size is new memory that the kernel zero-fills page
by page. The replayer builds 1-MB record batches and produce requests of up to 8 MB
(aiokafka copies each byte about four times on the way to the socket): publishing the
40-MB bench package took 33,000-40,000 minor page faults and 0.08-0.10 s of system time,
a third of the replayer's CPU. With both thresholds above the largest request, freed
buffers stay in the heap and are used again: 3-7,000 faults and about 0.01 s.

The cost is memory kept: a process holds up to ``TRIM_THRESHOLD`` of freed heap instead
of returning it at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: above the largest produce request (``max_request_size`` 8 MB) and fetch (8 MB)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module doc).

    Returns False, and changes nothing, where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        raise OSError("mallopt refused the mmap/trim thresholds")
    return True
