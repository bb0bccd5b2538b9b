"""A fork server that several agents share: Parsl imported once, every worker forked from it.

Each worker imports Parsl (~1.6 s of CPU here), so a local cluster of N one-worker nodes paid
for that N times, and a respawn after a crash paid for it again. The embedded mode
(:class:`dispatcher.local.LocalCluster`) starts one zygote; its agents (``--zygote PATH``) ask
it for workers instead of spawning them. The zygote is single-threaded and never opens a ZeroMQ
context, so forking it is safe; a worker forked from it runs :func:`worker_main` and nothing
else of the zygote.

Protocol, on a Unix stream socket in a 0700 directory (one connection per worker, kept open by
the agent as that worker's handle):

* agent -> zygote: one message, JSON ``{"node_name", "speed"}``, with two file descriptors
  (SCM_RIGHTS): the worker's end of its pipe, and the write end of a sentinel pipe that only
  the worker holds (so the agent sees EOF the moment it dies, whoever its parent is);
* zygote -> agent: the worker's pid, then its wait status when it has ended (8 bytes each).

A forked worker's parent is the zygote, not the agent, so PR_SET_PDEATHSIG cannot tie it to the
agent: it watches a pidfd of the agent instead (the peer of the request, by SO_PEERCRED) and
kills itself when the agent is gone: a SIGKILLed agent leaves no worker behind. Only a peer of
the zygote's own user is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

_WORD: Final = struct.Struct("<q")
_PEERCRED: Final = struct.Struct("3i")
READY_LINE: Final = "zygote ready"
"""What the zygote prints on stdout once it listens."""


class ZygoteError(OSError):
    """The zygote could not be reached or did not fork a worker."""


# --------------------------------------------------------------------------- the agent's side


class ForkedWorker:
    """A worker forked by a zygote, with the parts of ``multiprocessing.Process`` the pool uses."""

    def __init__(self, path: str, node_name: str, speed: float, start_timeout_s: float = 10.0) -> None:
        ours, theirs = socket.socketpair()
        sentinel_r, sentinel_w = os.pipe()
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control.settimeout(start_timeout_s)
            control.connect(path)
            request = json.dumps({"node_name": node_name, "speed": speed}).encode()
            socket.send_fds(control, [request], [theirs.fileno(), sentinel_w])
            self.pid: int = _read_word(control)
        except (OSError, ValueError) as exc:
            for sock in (ours, control):
                sock.close()
            os.close(sentinel_r)
            raise ZygoteError(f"the worker zygote at {path} did not fork a worker: {exc}") from exc
        finally:
            theirs.close()
            os.close(sentinel_w)
        self.conn = Connection(ours.detach())
        self.sentinel: int = sentinel_r
        """Readable (EOF) once the worker has exited: only it holds the write end."""
        self._control = control
        self._status: int | None = None

    @property
    def exitcode(self) -> int | None:
        """Like ``Process.exitcode`` (negative: killed by that signal); None while it runs, or if
        the zygote is gone and cannot say."""
        if self._status is None and not self.is_alive():
            self.join(0.0)
        return None if self._status is None else os.waitstatus_to_exitcode(self._status)

    def is_alive(self) -> bool:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sentinel, selectors.EVENT_READ)
            return not sel.select(0)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has exited and the zygote has told its status (or ``timeout``)."""
        if self._status is not None:
            return
        with selectors.DefaultSelector() as sel:
            sel.register(self.sentinel, selectors.EVENT_READ)
            if not sel.select(timeout):
                return
        self._control.settimeout(timeout if timeout is None else max(timeout, 0.5))
        with contextlib.suppress(OSError, ValueError):
            self._status = _read_word(self._control)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def close(self) -> None:
        """Release the handle's descriptors (the pool closes ``conn`` itself)."""
        self._control.close()
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


def _read_word(sock: socket.socket) -> int:
    data = b""
    while len(data) < _WORD.size:
        chunk = sock.recv(_WORD.size - len(data))
        if not chunk:
            raise ValueError("the zygote closed the connection")
        data += chunk
    value: int = _WORD.unpack(data)[0]
    return value


# --------------------------------------------------------------------------- the zygote


def serve(path: str, parent: int | None = None) -> None:
    """Import the worker (Parsl), listen on ``path``, fork a worker per request until killed or
    until the process ``parent`` (a pid) is gone. A pidfd in the loop, not a watchdog thread:
    the zygote must stay single-threaded."""
    import worker_agent.worker  # noqa: F401  (the import every forked worker inherits)

    if threading.active_count() != 1:
        raise RuntimeError("the zygote must be single-threaded to fork safely")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    Path(path).chmod(0o600)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop: reaped below
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    lifeline = _pidfd(parent) if parent is not None else None
    if lifeline is not None:
        sel.register(lifeline, selectors.EVENT_READ)
    children: dict[int, socket.socket | None] = {}
    print(READY_LINE, flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ)
            elif key.fileobj == lifeline:
                return  # our parent is gone: so are we (the workers live on with their agents)
            elif key.fileobj == wake_r:
                os.read(wake_r, 512)
                _reap(children)
            else:
                request = key.fileobj
                assert isinstance(request, socket.socket)
                sel.unregister(request)
                _fork_one(request, children, close_in_child=[listener, wake_r, wake_w, lifeline, sel])


def _fork_one(conn: socket.socket, children: dict[int, socket.socket | None], close_in_child: list[object]) -> None:
    """Read one request from ``conn`` and fork its worker; a bad request only closes ``conn``."""
    fds: list[int] = []
    try:
        message, fds, _, _ = socket.recv_fds(conn, 4096, 2)
        node_name, speed, agent = _check(conn, message, fds)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"zygote: bad request: {exc}", file=sys.stderr, flush=True)
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    child = os.fork()
    if child == 0:
        _become_worker(fds, agent, node_name, speed, [conn, *children.values(), *close_in_child])
    for fd in (*fds, agent):
        os.close(fd)
    try:
        conn.sendall(_WORD.pack(child))
    except OSError:  # the agent gave up waiting: the worker dies with its pipe
        conn.close()
        children[child] = None
    else:
        children[child] = conn


def _check(conn: socket.socket, message: bytes, fds: list[int]) -> tuple[str, float, int]:
    """A request's node name and speed, and a pidfd of the agent that sent it; raises if bad."""
    pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid != os.getuid():
        raise ValueError(f"refused: a peer of uid {uid}")
    if len(fds) != 2:
        raise ValueError(f"refused: {len(fds)} descriptors, not 2")
    request = json.loads(message)
    return str(request["node_name"]), float(request["speed"]), _pidfd(pid)


def _reap(children: dict[int, socket.socket | None]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(_WORD.pack(status))
            conn.close()


def _become_worker(fds: list[int], agent: int, node_name: str, speed: float, inherited: list[object]) -> None:
    """In the forked child: drop the zygote's state, tie our life to the agent's, run the worker."""
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a task's own subprocesses must be waitable
        for thing in inherited:
            if isinstance(thing, int):
                os.close(thing)  # the descriptors of the zygote's pipes and pidfd
            elif thing is not None:
                thing.close()  # type: ignore[attr-defined]
        pipe_fd, _sentinel = fds  # the sentinel stays open until we exit: that is its point
        threading.Thread(target=_die_with, args=(agent,), name="lifeline", daemon=True).start()
        from worker_agent.worker import worker_main

        worker_main(Connection(pipe_fd), node_name, speed, tied=True)
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _die_with(pidfd: int) -> None:
    """Kill this process when the process behind ``pidfd`` has exited."""
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        while not sel.select():
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _pidfd(pid: int) -> int:
    """A pidfd of ``pid``; one that is readable at once if ``pid`` is already gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        r, w = os.pipe()
        os.close(w)
        return r


def main(argv: list[str]) -> int:
    """``python -m worker_agent.zygote PATH``, started by the local cluster."""
    from dispatcher.runtime.lifeline import ENV

    if len(argv) != 1:
        print("usage: python -m worker_agent.zygote SOCKET_PATH", file=sys.stderr)
        return 2
    parent = os.environ.get(ENV)
    serve(argv[0], int(parent) if parent else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
