"""Peak resident memory of a stretch of work in this process (a stage-2 task), measured by Linux
itself: the kernel's high-water mark VmHWM, reset at the start (/proc/self/clear_refs, "5").
Where that reset is not allowed the process's lifetime peak (getrusage) is what is reported."""

from __future__ import annotations

import resource
from pathlib import Path


def rss_bytes(field: str = "VmRSS") -> int:
    """The current resident set (or, with field="VmHWM", its peak since the last reset), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class PeakRSS:
    """`with PeakRSS() as peak: ...` then `peak.bytes`: the most this process held inside the block."""

    def __enter__(self) -> "PeakRSS":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.since_reset = True
        except OSError:
            self.since_reset = False
        self.bytes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = rss_bytes("VmHWM")


def return_freed_memory() -> None:
    """Hand memory freed by Arrow and by C malloc back to the system. Both keep freed pages for
    reuse: after reading both sides of a 300,000-sample cell shard by shard that was ~90 MiB above
    the cell's own bytes, held through the whole estimate and past the task's memory plan.
    (Once per read: ~10 ms a call, so once per shard cost 6 s over a cell's 586 shard files.)"""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass
