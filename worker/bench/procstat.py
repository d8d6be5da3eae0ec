"""What a process has cost, read from ``/proc``: CPU seconds and peak resident memory.

Read from outside the measured process, so the systems compared (Tailor, the peer, the
relay) are measured the same way and need no instrumentation of their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

__all__ = ["cpu_seconds", "peak_rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU of these processes (all their threads), 0 for one that is gone."""
    total = 0.0
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{pid}/stat").read_text()
            # The command name (field 2) may hold spaces: count fields after its ')'.
            fields = text[text.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), 0 when it cannot be read."""
    with suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
