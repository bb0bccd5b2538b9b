"""What the container's cgroup allows this process: its CPU quota and its memory limit (v2, else
v1), or None where there is none to read. The defaults of ``--workers`` and ``--max-memory``."""

from __future__ import annotations

from pathlib import Path
from typing import Final

CGROUP: Final = Path("/sys/fs/cgroup")
_NO_LIMIT: Final = 2**60
"""cgroup v1 says "no memory limit" with a huge number (v2 says "max")."""


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU limit in CPUs, or None if there is none (or it cannot be read)."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.exists():
            limit, _, period = v2.read_text().strip().partition(" ")
            return None if limit == "max" else int(limit) / int(period or "100000")
        v1 = cgroup / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota = int(v1.read_text())
            return None if quota <= 0 else quota / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def memory_limit(cgroup: Path = CGROUP) -> int | None:
    """The memory limit in bytes, or None if there is none (or it cannot be read)."""
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            return int(text)
    return None
