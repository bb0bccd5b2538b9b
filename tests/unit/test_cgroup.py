"""The cgroup readings behind ``--workers`` and ``--max-memory``, on cgroup trees written here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatcher.runtime.cgroup import cpu_quota, memory_limit
from dispatcher.server.config import FALLBACK_MAX_MEMORY, default_max_memory
from worker_agent.config import default_workers

pytestmark = pytest.mark.unit


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),  # nothing to read
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000\n"}, 0.5),  # the period left out: v2's default
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 without a limit
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu.max": "lots 100000\n"}, None),  # unreadable
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "0\n"}, None),
    ],
)
def test_cpu_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    assert cpu_quota(tree(tmp_path, files)) == expected


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"memory.max": "max\n"}, None),  # v2 without a limit
        ({"memory.max": "536870912\n"}, 512 * 1024 * 1024),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1 without a limit
        ({"memory/memory.limit_in_bytes": "1073741824\n"}, 1024**3),
        ({"memory.max": "max\n", "memory/memory.limit_in_bytes": "1073741824\n"}, 1024**3),  # hybrid: v1 limits
    ],
)
def test_memory_limit(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    assert memory_limit(tree(tmp_path, files)) == expected


def test_the_defaults_follow_the_limits(tmp_path: Path) -> None:
    assert default_max_memory(tmp_path) == FALLBACK_MAX_MEMORY
    tree(tmp_path, {"memory.max": "1000000\n", "cpu.max": "100001 100000\n"})
    assert default_max_memory(tmp_path) == 750000  # three quarters: headroom for what a budget cannot see
    assert default_workers(tmp_path) == min(2, os.cpu_count() or 1)  # a quota just over 1 CPU: rounded up
