"""A local cluster: one dispatcher and N agents (``local-0 .. local-N-1``) as subprocesses.

Used by ``saga-dispatch local``, the demo, the tests and the Parsl executor's embedded mode.
Each child runs in its own session (process group) and is tied to this process, so
:meth:`LocalCluster.stop` — or this process dying — leaves nothing running, even a worker of an
agent that was SIGKILLed.

The agents fork their workers from one shared worker zygote (:mod:`worker_agent.zygote`), which
imports Parsl once instead of once per node: a forked worker lives in the zygote's process
group, not its agent's, and dies with its agent through a pidfd, so a SIGKILL of an agent's group
still ends its workers, while a SIGSTOP of that group leaves them running their current task
(their results wait in the pipe for the agent, as a frozen node's would).

Keys: loopback is not private on a shared machine (every user reaches its ports), so the cluster
generates ephemeral CurveZMQ keys in a private 0700 folder (``keys_dir``), a pair bound to each
node's name, hands them to every role (``client()`` included) and removes them at ``stop()``.
``insecure=True`` runs without them (for measurements).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

from dispatcher.client.client import Client
from dispatcher.runtime import keys
from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from dispatcher.runtime.logs import get_logger

log = get_logger("local_cluster")
READY_LINE = "zygote ready"
"""What the worker zygote writes on its ready descriptor (``worker_agent.zygote.READY_LINE``;
not imported: this module starts the zygote by name and never imports the agent's modules)."""

NODE_PREFIX = "local-"
LOCAL_WORKERS = 1
"""Workers per simulated node: the nodes share one machine, so one each by default."""


class LocalClusterError(DispatchError):
    """A local dispatcher or agent did not start."""


class LocalCluster:
    def __init__(
        self,
        nodes: int = 4,
        *,
        speeds: Sequence[float] | None = None,
        workers: int = LOCAL_WORKERS,
        prefetch: int | None = None,
        pipeline: int | None = None,
        heartbeat_interval_s: float | None = None,
        liveness: int | None = None,
        pending_grace_s: float | None = None,
        start_agents: bool = True,
        log_dir: Path | None = None,
        log_format: str = "json",
        startup_timeout_s: float = 30.0,
        zygote: bool = True,
        insecure: bool = False,
        http: bool = False,
        dispatcher_args: Sequence[str] = (),
        dispatcher_env: Mapping[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a local cluster needs at least one node, got {nodes}")
        speeds = list(speeds) if speeds is not None else [1.0] * nodes
        if len(speeds) != nodes:
            raise ValueError(f"{len(speeds)} speeds given for {nodes} nodes")
        if any(not s > 0 for s in speeds):
            raise ValueError(f"speeds must be positive, got {speeds}")
        self.node_names = [f"{NODE_PREFIX}{i}" for i in range(nodes)]
        self.speeds = dict(zip(self.node_names, speeds, strict=True))
        self.workers = workers
        self.prefetch = prefetch
        """None: the agent's default (and likewise for the settings below: the dispatcher's)."""
        self.pipeline = pipeline
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness = liveness
        self.pending_grace_s = pending_grace_s
        self.start_agents = start_agents
        self.log_dir = log_dir
        self.log_format = log_format
        self.startup_timeout_s = startup_timeout_s
        self.client_url = ""
        self.agent_url = ""
        self.use_zygote = zygote
        """Fork the agents' workers from one zygote (False: each agent spawns its own)."""
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.zygote: subprocess.Popen[bytes] | None = None
        self._zygote_dir: Path | None = None
        self.insecure = insecure
        """No keys: plain TCP on loopback (anyone on this machine could reach the ports)."""
        self.keys_dir: Path | None = None
        """The ephemeral key folder, while the cluster runs (None when ``insecure``)."""
        self._logs: list[IO[Any]] = []
        self.http = http
        """Serve the dispatcher's /healthz and /readyz on a free port (``http_url``)."""
        self.http_url = ""
        self.dispatcher_args = list(dispatcher_args)
        """More flags for the dispatcher (e.g. ``--watch-nodes``)."""
        self.dispatcher_env = dict(dispatcher_env or {})
        """More environment for the dispatcher (e.g. ``KUBECONFIG``)."""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            if not self.insecure:
                self.keys_dir = Path(tempfile.mkdtemp(prefix="saga-keys-"))  # 0700, ours alone
                keys.generate(self.keys_dir, nodes=self.node_names)
            ready = self._spawn_zygote() if self.use_zygote else None
            try:
                self.start_dispatcher()  # while the zygote imports Parsl
            except BaseException:
                if ready is not None:
                    os.close(ready)
                raise
            if ready is not None:
                self._await_zygote(ready)  # if it cannot start, the agents spawn their workers
            if self.start_agents:
                for name in self.node_names:
                    self.start_agent(name)
                self.wait_for_nodes(len(self.node_names))
        except BaseException:
            self.stop()
            raise

    def start_dispatcher(self, client_port: int = 0, agent_port: int = 0) -> None:
        """Start the dispatcher (again, after a kill: pass the old ports to keep its address)."""
        argv = [
            "dispatcher", "--host", "127.0.0.1",
            "--client-port", str(client_port), "--agent-port", str(agent_port), "--announce",
            *_given("--heartbeat-interval", self.heartbeat_interval_s), *_given("--liveness", self.liveness),
            *_given("--pending-grace", self.pending_grace_s), *self._keys_flag(),
            *(["--http-port", "0"] if self.http else []), *self.dispatcher_args,
        ]  # fmt: skip
        proc = self._spawn("dispatcher", argv, stdout=subprocess.PIPE, extra_env=self.dispatcher_env)
        self.dispatcher = proc
        announced = _read_line(proc, self.startup_timeout_s)
        if announced is None:
            code = proc.poll()
            raise LocalClusterError(f"dispatcher did not start within {self.startup_timeout_s:g} s (exit code {code})")
        info = json.loads(announced)
        self.client_url, self.agent_url = info["client_url"], info["agent_url"]
        self.http_url = f"http://127.0.0.1:{info['http_port']}" if info.get("http_port") else ""

    def _spawn_zygote(self) -> int:
        """Start the zygote; the returned pipe says when it is ready (:meth:`_await_zygote`)."""
        self._zygote_dir = Path(tempfile.mkdtemp(prefix="saga-zygote-"))  # 0700
        path = str(self._zygote_dir / "zygote.sock")
        ready_r, ready_w = os.pipe()
        try:
            self.zygote = self._spawn("zygote", [path, str(ready_w)], module="worker_agent.zygote", pass_fds=(ready_w,))
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return ready_r

    def _await_zygote(self, ready_r: int) -> None:
        assert self.zygote is not None
        try:
            line = _read_fd_line(ready_r, self.startup_timeout_s)
        finally:
            os.close(ready_r)
        if line != READY_LINE:  # e.g. a socket path too long for AF_UNIX, no pidfd_open here
            log.warning("zygote_unavailable", said=line, exit_code=self.zygote.poll(), fallback="spawn")
            _signal_group(self.zygote, signal.SIGKILL)
            self.zygote.wait()
            self.zygote = None
            if self._zygote_dir is not None:
                shutil.rmtree(self._zygote_dir, ignore_errors=True)
            self._zygote_dir = None

    @property
    def zygote_path(self) -> str | None:
        return None if self._zygote_dir is None else str(self._zygote_dir / "zygote.sock")

    def start_agent(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) the agent of node ``name``."""
        old = self.agents.get(name)
        if old is not None and old.poll() is None:
            raise LocalClusterError(f"agent {name} is already running (pid {old.pid})")
        argv = [
            "agent", "--dispatcher", self.agent_url, "--node-name", name,
            "--workers", str(self.workers), "--speed", repr(self.speeds[name]),
            *_given("--prefetch", self.prefetch), *_given("--pipeline", self.pipeline),
            *(["--zygote", self.zygote_path] if self.zygote_path else []), *self._keys_flag(),
        ]  # fmt: skip
        proc = self._spawn(name, argv)
        self.agents[name] = proc
        return proc

    def _keys_flag(self) -> list[str]:
        return ["--keys", str(self.keys_dir)] if self.keys_dir is not None else []

    def _spawn(
        self,
        role: str,
        argv: list[str],
        *,
        stdout: int | None = None,
        module: str | None = None,
        pass_fds: tuple[int, ...] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``saga-dispatch argv...`` (or ``python -m module argv...``)."""
        env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", keys.ENV)}
        env.update(extra_env or {})
        env[PARENT_ENV] = str(os.getpid())
        stderr: IO[Any] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stderr = (self.log_dir / f"{role}.log").open("ab")
            self._logs.append(stderr)
        head = ["-m", module] if module else ["-m", "dispatcher", "--log-format", self.log_format]
        return subprocess.Popen(
            [sys.executable, *head, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
            pass_fds=pass_fds,
        )

    def wait_for_nodes(self, count: int, timeout_s: float | None = None) -> None:
        """Block until ``count`` nodes are registered and alive."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        with self.client() as client:
            while True:
                alive = [n.node_name for n in client.nodes() if n.state == "alive"]
                if len(alive) >= count:
                    return
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"only {alive} of {count} nodes registered in time")
                for name, proc in self.agents.items():
                    if proc.poll() is not None and name not in alive:
                        raise LocalClusterError(f"agent {name} exited with code {proc.returncode}")
                time.sleep(0.05)

    def client(self, **kwargs: Any) -> Client:
        """A client of this cluster, with its keys (unless ``keys=`` says otherwise)."""
        kwargs.setdefault("keys", str(self.keys_dir) if self.keys_dir is not None else "")
        return Client(self.client_url, **kwargs)

    # ------------------------------------------------------------------ faults

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the agent of ``name`` and its workers (its whole process group)."""
        _signal_group(self.agents[name], sig)
        if sig == signal.SIGKILL:
            self.agents[name].wait()

    def kill_dispatcher(self, sig: int = signal.SIGKILL) -> None:
        assert self.dispatcher is not None
        _signal_group(self.dispatcher, sig)
        if sig == signal.SIGKILL:
            self.dispatcher.wait()

    # ------------------------------------------------------------------ teardown

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drain agents (SIGTERM), stop the dispatcher, then SIGKILL whatever is left of each group."""
        procs = list(self.agents.values())
        for proc in procs:  # the agent alone: it drains its workers itself
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        _wait_all(procs, timeout_s)
        if self.dispatcher is not None:
            with contextlib.suppress(ProcessLookupError):
                self.dispatcher.send_signal(signal.SIGTERM)
            _wait_all([self.dispatcher], timeout_s)
            procs.append(self.dispatcher)
        if self.zygote is not None:  # last: its group holds the workers that outlived a drain
            procs.append(self.zygote)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
            if proc.stdout is not None:
                proc.stdout.close()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self._zygote_dir is not None:
            shutil.rmtree(self._zygote_dir, ignore_errors=True)
            self._zygote_dir = None
        if self.keys_dir is not None:
            shutil.rmtree(self.keys_dir, ignore_errors=True)
            self.keys_dir = None


def _given(flag: str, value: float | None) -> list[str]:
    """``[flag, value]``, or nothing for None (then the child's own default holds)."""
    return [] if value is None else [flag, repr(value)]


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _read_fd_line(fd: int, timeout_s: float) -> str | None:
    """The first line read from ``fd`` (a pipe), or None if none came within ``timeout_s`` or
    the pipe closed first. Raw reads, with a deadline: a child that writes half a line and hangs
    cannot block us."""
    data = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                return None
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode().strip() or None


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """The child's first stdout line (:func:`_read_fd_line`; nothing reads its stdout after it)."""
    assert proc.stdout is not None
    return _read_fd_line(proc.stdout.fileno(), timeout_s)


def main(argv: list[str]) -> int:
    """``saga-dispatch local``: a dispatcher and N agents until Ctrl-C."""
    from dispatcher.runtime.args import role_parser, security_flags

    parser = role_parser("local", "run a dispatcher and N agents locally until Ctrl-C")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--speeds", default=None, help="comma-separated node speeds, e.g. 1,1,2,4")
    parser.add_argument("--workers", type=int, default=LOCAL_WORKERS, help="workers per node")
    security_flags(parser, keys=None, insecure="no CurveZMQ keys (for measurements)")
    args = parser.parse_args(argv)
    speeds = [float(s) for s in args.speeds.split(",")] if args.speeds else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(
        args.nodes, speeds=speeds, workers=args.workers, log_format=args.log_format, insecure=args.insecure
    ) as cluster:
        print(f"dispatcher client URL: {cluster.client_url}", flush=True)
        print(f"dispatcher agent URL:  {cluster.agent_url}", flush=True)
        if cluster.keys_dir is not None:
            print(f"keys (removed at exit): {cluster.keys_dir}  e.g. Client(url, keys=that folder)", flush=True)
        else:
            print("keys: none (--insecure): any user of this machine can reach these ports", flush=True)
        print(f"nodes: {', '.join(cluster.node_names)}  (Ctrl-C to stop)", flush=True)
        stop.wait()
    return 0
