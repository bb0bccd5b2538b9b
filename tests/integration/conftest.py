from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail if a test leaves any child process of ours running (agents, workers, dispatchers)."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert not left, f"processes left running: {[(p.pid, p.cmdline()) for p in left]}"


def all_pids(pid: int) -> list[int]:
    """``pid`` and every descendant of it."""
    proc = psutil.Process(pid)
    return [pid, *(c.pid for c in proc.children(recursive=True))]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"
