"""Tie a child process's life to its parent's, so a killed test or executor leaves no orphans.

Two mechanisms, because PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
not the process: a child started from a short-lived thread (a chaos injector restarting a
dispatcher, an executor thread restarting its planner) would be killed with that thread.

* :func:`die_with_parent` — a watchdog thread polls ``getppid()``; for the dispatcher, agents
  and the planning process, which any thread may start.
* :func:`die_with_parent_thread` — PR_SET_PDEATHSIG; for worker processes, which the agent only
  ever starts from its main thread, and which must die at once with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

ENV = "SAGA_DISPATCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.25


def _parent() -> int | None:
    value = os.environ.get(ENV)
    return int(value) if value else None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """If a parent set ``SAGA_DISPATCH_PARENT_PID``, send ourselves ``sig`` once it is gone."""
    parent = _parent()
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_S)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def die_with_parent_thread(sig: int = signal.SIGKILL) -> None:
    """PR_SET_PDEATHSIG: get ``sig`` when the thread that started us exits (Linux only)."""
    parent = _parent()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
