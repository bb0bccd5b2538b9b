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
  (SCM_RIGHTS): the worker's end of its pipe, and a pidfd of the agent itself;
* zygote -> agent: the worker's pid with a pidfd of the worker (opened right after the fork,
  before the single-threaded zygote can reap it, so it names that process and no other), then
  the worker's wait status when it has ended (8 bytes each).

The worker's pidfd is the agent's handle: readable once the worker has exited (even if a
grandchild of a task still holds the worker's pipes), and the way to signal it without a pid
that may have been reused. A forked worker's parent is the zygote, not the agent, so
PR_SET_PDEATHSIG cannot tie it to the agent: it watches the agent's pidfd instead and kills
itself when the agent is gone: a SIGKILLed agent leaves no worker behind. Only a peer of the
zygote's own user is served. The zygote says it is ready on a descriptor of its parent's
choosing, not on stdout: workers inherit its stdout and stderr, the cluster's own, as spawned
workers inherit their agent's.
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
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

_WORD: Final = struct.Struct("<q")
_PEERCRED: Final = struct.Struct("3i")
READY_LINE: Final = "zygote ready"
"""What the zygote writes on its ready descriptor once it listens."""
START_TIMEOUT_S: Final = 2.0
"""How long an agent waits for a fork (it blocks the agent's loop: well inside its liveness)."""


class ZygoteError(OSError):
    """The zygote could not be reached or did not fork a worker."""


# --------------------------------------------------------------------------- the agent's side


class ForkedWorker:
    """A worker forked by a zygote, with the parts of ``multiprocessing.Process`` the pool uses."""

    def __init__(self, path: str, node_name: str, speed: float, start_timeout_s: float = START_TIMEOUT_S) -> None:
        ours, theirs = socket.socketpair()
        me = os.pidfd_open(os.getpid())
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control.settimeout(start_timeout_s)
            control.connect(path)
            request = json.dumps({"node_name": node_name, "speed": speed}).encode()
            socket.send_fds(control, [request], [theirs.fileno(), me])
            data, fds, _, _ = socket.recv_fds(control, _WORD.size, 1)
            if len(data) != _WORD.size or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise ValueError("the zygote refused the request")  # noqa: TRY301  (one error path below)
        except (OSError, ValueError) as exc:
            for sock in (ours, control):
                sock.close()
            raise ZygoteError(f"the worker zygote at {path} did not fork a worker: {exc}") from exc
        finally:
            theirs.close()
            os.close(me)
        self.pid: int = _WORD.unpack(data)[0]
        self.conn = Connection(ours.detach())
        self.sentinel: int = fds[0]
        """The worker's pidfd: readable once it has exited."""
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
        return not _readable(self.sentinel, 0.0)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has exited (or ``timeout``), then for the zygote to tell its
        status (half a second at least, at most five: a stopped or dead zygote cannot hang us)."""
        if self._status is not None or not _readable(self.sentinel, timeout):
            return
        self._control.settimeout(5.0 if timeout is None else min(max(timeout, 0.5), 5.0))
        with contextlib.suppress(OSError, ValueError):
            self._status = _read_word(self._control)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it has exited: nothing to signal
            signal.pidfd_send_signal(self.sentinel, sig)

    def close(self) -> None:
        """Release the handle's descriptors (the pool closes ``conn`` itself)."""
        self._control.close()
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


def _readable(fd: int, timeout: float | None) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


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


def serve(path: str, ready_fd: int | None = None, parent: int | None = None) -> None:
    """Import the worker (Parsl), listen on ``path``, say so on ``ready_fd``, fork a worker per
    request until killed or until the process ``parent`` (a pid) is gone. A pidfd in the loop,
    not a watchdog thread: the zygote must stay single-threaded."""
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
    if ready_fd is not None:
        os.write(ready_fd, f"{READY_LINE}\n".encode())
        os.close(ready_fd)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except OSError as exc:  # e.g. out of descriptors: that agent times out and spawns
                    print(f"zygote: accept failed: {exc}", file=sys.stderr, flush=True)
                    continue
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
                _fork_one(request, children, lambda: _drop_zygote(sel, children, wake_w))


def _fork_one(conn: socket.socket, children: dict[int, socket.socket | None], drop_zygote: Callable[[], None]) -> None:
    """Read one request from ``conn`` and fork its worker; a bad request only closes ``conn``."""
    fds: list[int] = []
    try:
        message, fds, _, _ = socket.recv_fds(conn, 4096, 2)
        node_name, speed = _check(conn, message, fds)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"zygote: bad request: {exc}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()  # last: the agent's EOF means nothing of its request is held any more
        return
    pipe_fd, agent = fds
    try:
        child = os.fork()
    except OSError as exc:  # out of processes or memory: this agent spawns instead, the zygote goes on
        print(f"zygote: fork failed: {exc}", file=sys.stderr, flush=True)
        os.close(pipe_fd)
        os.close(agent)
        conn.close()
        return
    if child == 0:
        conn.close()
        drop_zygote()
        _become_worker(pipe_fd, agent, node_name, speed)
    os.close(pipe_fd)
    os.close(agent)
    try:
        handle = os.pidfd_open(child)  # not reaped yet: only this loop reaps, after this
    except OSError:
        conn.close()
        children[child] = None
        return
    try:
        socket.send_fds(conn, [_WORD.pack(child)], [handle])
    except OSError:  # the agent gave up waiting: the worker dies with its pipe
        conn.close()
        children[child] = None
    else:
        children[child] = conn
    finally:
        os.close(handle)


def _check(conn: socket.socket, message: bytes, fds: list[int]) -> tuple[str, float]:
    """A request's node name and speed; raises if it is not one to serve."""
    _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid != os.getuid():
        raise ValueError(f"refused: a peer of uid {uid}")
    if len(fds) != 2:
        raise ValueError(f"refused: {len(fds)} descriptors, not 2")
    request = json.loads(message)
    return str(request["node_name"]), float(request["speed"])


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


def _drop_zygote(sel: selectors.BaseSelector, children: dict[int, socket.socket | None], wake_w: int) -> None:
    """In a forked child: close everything of the zygote's (its listener, its pipes, every
    agent's connection, served or waiting), so that no agent waits on a descriptor a worker holds."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a task's own subprocesses must be waitable
    for key in list(sel.get_map().values()):
        if isinstance(key.fileobj, socket.socket):
            key.fileobj.close()
        else:
            os.close(key.fd)
    sel.close()
    for sock in children.values():
        if sock is not None:
            sock.close()
    os.close(wake_w)


def _become_worker(pipe_fd: int, agent: int, node_name: str, speed: float) -> None:
    """In the forked child: tie our life to the agent's and run the worker; never returns."""
    code = 0
    try:
        threading.Thread(target=_die_with, args=(agent,), name="lifeline", daemon=True).start()
        from worker_agent.worker import worker_main

        worker_main(Connection(pipe_fd), node_name, speed, tied=True)
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing: a task's prints
            with contextlib.suppress(Exception):
                stream.flush()
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
    """``python -m worker_agent.zygote SOCKET_PATH [READY_FD]``, started by the local cluster."""
    from dispatcher.runtime.lifeline import ENV

    if len(argv) not in (1, 2):
        print("usage: python -m worker_agent.zygote SOCKET_PATH [READY_FD]", file=sys.stderr)
        return 2
    parent = os.environ.get(ENV)
    serve(argv[0], int(argv[1]) if len(argv) == 2 else None, int(parent) if parent else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
