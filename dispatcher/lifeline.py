"""Tie a child process's life to its parent's, so a killed test or executor leaves no orphans."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "SAGA_DISPATCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """If started by a parent that set ``SAGA_DISPATCH_PARENT_PID``, get ``sig`` when it dies."""
    parent = os.environ.get(ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
