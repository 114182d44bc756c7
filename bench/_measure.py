"""Measuring helpers shared by the benchmarks."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: ``VmHWM`` (of its own address space;
    ``ru_maxrss`` keeps the parent's resident set from before ``exec``, so a child started
    by a large parent would report the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
