"""The allocator tuning: freed buffers of megabytes are used again, not faulted in anew."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import missing

# a child process builds produce requests as the replayer's producer does (six 1-MB record
# batches joined into a request, then size-prefixed), 20 times, and prints the minor page
# faults that took, with or without the tuning
_CHILD = """
import resource, sys
from tocsin.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batches = [bytes(1 << 20) for _ in range(6)]
    request = b"".join(batches)
    framed = len(request).to_bytes(4, "big") + request
    del batches, request, framed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
ROUND_PAGES = 18 * (1 << 20) // 4096  # one round's new memory: 6 + 6 + 6 MB


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_tuned_allocator_reuses_large_buffers() -> None:
    if platform.libc_ver()[0] != "glibc":
        missing("glibc (the tuning is its mallopt)")  # a failure under CI=true
    plain, tuned = _faults("plain"), _faults("tuned")
    # untuned, every round faults its 18 MB in anew; tuned, only the first does
    assert plain > 10 * ROUND_PAGES, f"untuned: {plain} faults; the test no longer shows it"
    assert tuned < 2 * ROUND_PAGES, f"tuned: {tuned} faults in 20 rounds"


def test_tune_allocator_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    from tocsin import allocator

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.tune_allocator() is False
