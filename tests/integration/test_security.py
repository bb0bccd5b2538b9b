"""CurveZMQ end to end, with real processes: who gets in, what a refused peer can do (nothing),
and what the dispatcher counts.

Each probe has a control in the same test: the right key runs a task on the same node after the
probe had its chance (its handshake ended), so "nothing ran" is not "nothing was tried". A probe
task would write a file: none may appear. The dispatcher's counters come from its last log line
(``dispatcher_stopped``), after the cluster stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from parsl.serialize import pack_apply_message
from zmq.utils.monitor import recv_monitor_message

from dispatcher import AccessRefused, LocalCluster
from dispatcher import protocol as p
from dispatcher.runtime import keys
from dispatcher.runtime.curve import use_curve
from tests.integration import apps
from tests.integration.test_curve import _DONE

pytestmark = pytest.mark.integration

_OUTCOMES = _DONE


# --------------------------------------------------------------------------- helpers


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def wait_for_log(path: Path, event: str, timeout_s: float = 60.0, **fields: Any) -> dict[str, Any]:
    """The first line of ``path`` with ``event`` (and ``fields``), waiting for it to be written."""
    deadline = time.monotonic() + timeout_s
    while True:
        for line in log_lines(path):
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} {fields} in {path}:\n{path.read_text() if path.exists() else ''}")
        time.sleep(0.05)


def counters(logs: Path) -> dict[str, Any]:
    (stopped,) = [line for line in log_lines(logs / "dispatcher.log") if line.get("event") == "dispatcher_stopped"]
    return stopped


def pair_folder(root: Path, name: str, secret_of: Path, dispatcher_key: Path, role: str = "client") -> Path:
    """A key folder whose ``role`` pair is the pair in ``secret_of`` (e.g. another role's), pinning
    ``dispatcher_key``: how a peer holding the wrong keys is built."""
    folder = root / name
    folder.mkdir(mode=0o700)
    shutil.copy(secret_of, folder / f"{role}.key_secret")
    shutil.copy(secret_of.with_suffix(".key"), folder / f"{role}.key")
    (folder / f"{role}.key_secret").chmod(0o600)
    shutil.copy(dispatcher_key, folder / "dispatcher.key")
    return folder


def add_client_key(cluster: LocalCluster, logs: Path, root: Path, name: str) -> tuple[Path, Path]:
    """A new client pair, its public key added to the running dispatcher's allow-list (the
    folder change is its reload, awaited): (the client's key folder, the allow-list file)."""
    import zmq.auth

    folder = cluster.keys_dir
    assert folder is not None
    pair_dir = root / f"{name}-pair"
    pair_dir.mkdir()
    public, secret = (Path(f) for f in zmq.auth.create_certificates(pair_dir, f"client-{name}"))
    secret.chmod(0o600)

    def reloads() -> int:
        return sum(
            1 for line in log_lines(logs / "dispatcher.log") if line.get("event") == "keys_reloaded" and line["changed"]
        )

    before = reloads()
    allowed = folder / "clients" / public.name
    shutil.copy(public, allowed)
    deadline = time.monotonic() + 60
    while reloads() <= before:
        assert time.monotonic() < deadline, "the dispatcher did not reload its allow-lists"
        time.sleep(0.05)
    return pair_folder(root, name, secret, folder / "dispatcher.key"), allowed


class RawPeer:
    """A hand-made DEALER (optionally CURVE), as an attacker would write: it sends its frames
    at once and reports how its handshake ended."""

    def __init__(self, url: str, pair: tuple[bytes, bytes, bytes] | None) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.reconnect_ivl = -1  # one connection, one handshake: what it counts is exact
        if pair is not None:
            use_curve(self.sock, *pair)
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(url)

    def send(self, *messages: p.Message) -> None:
        for message in messages:
            self.sock.send(p.encode(message))

    def offer(self, *messages: p.Message) -> None:
        """Sends without waiting: a refused handshake may already have closed the only pipe
        (``reconnect_ivl=-1``), and then a DEALER's send would block for ever. Frames that
        could not leave are simply not sent, which is what the dispatcher must ensure anyway."""
        for message in messages:
            with contextlib.suppress(zmq.Again):
                self.sock.send(p.encode(message), zmq.NOBLOCK)

    def handshake(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.monitor.poll(100):
                event = recv_monitor_message(self.monitor)["event"]
                if event in _OUTCOMES:
                    return _OUTCOMES[event]
        return "none"

    def received(self, timeout_ms: int = 200) -> list[p.Message]:
        out = []
        while self.sock.poll(timeout_ms):
            out.append(p.decode(self.sock.recv()))
        return out

    def close(self) -> None:
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def probe_submit(path: Path, node: str = "local-0") -> p.Submit:
    return p.Submit((p.TaskSpec(1, node, 0.0, pack_apply_message(apps.probe, (str(path),), {})),))


def agent_process(url: str, name: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", keys.ENV)}
    argv = [sys.executable, "-m", "dispatcher", "--log-format", "json", "agent", "--dispatcher", url]
    return subprocess.Popen(
        [*argv, "--node-name", name, "--workers", "1", *extra],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_all(agents: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in agents.values():
        stop(proc)


def assert_idle(agents: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    """Each agent (logging to ``logs/NAME.log``) stopped having run no task."""
    for name in agents:
        assert wait_for_log(logs / f"{name}.log", "agent_stopped")["tasks_done"] == 0, name


@pytest.fixture
def cluster(logs: Path) -> Iterator[LocalCluster]:
    with LocalCluster(2, log_dir=logs) as c:
        yield c


# --------------------------------------------------------------------------- clients


def test_clients_without_the_right_key_get_nothing_run(cluster: LocalCluster, logs: Path, tmp_path: Path) -> None:
    folder = cluster.keys_dir
    assert folder is not None
    other = tmp_path / "other"
    keys.generate(other)
    dispatcher_key = keys.load_public(folder, "dispatcher")
    agent_pair = keys.load_pair(folder, "agent")
    probes = {
        "no keys": None,
        "another set's client pair and dispatcher key": (
            *keys.load_pair(other, "client"),
            keys.load_public(other, "dispatcher"),
        ),
        "another set's client pair, the right dispatcher key": (*keys.load_pair(other, "client"), dispatcher_key),
        "the agent pair on the client port": (*agent_pair, dispatcher_key),
    }
    marks = {what: tmp_path / f"probe-{n}" for n, what in enumerate(probes)}
    for what, pair in probes.items():
        peer = RawPeer(cluster.client_url, pair)
        try:
            peer.offer(p.Hello(f"probe-{marks[what].name}"), probe_submit(marks[what]))
            assert peer.handshake() in ("refused", "protocol", "failed"), what
            assert peer.received() == [], what
        finally:
            peer.close()
    control = tmp_path / "control"
    with cluster.client() as client:
        assert client.submit(apps.probe, str(control), node="local-0", rank=1.0).result(timeout=60) == str(control)
    assert control.read_text() == "local-0"
    assert [what for what, mark in marks.items() if mark.exists()] == []
    # A real Client says why, at once, instead of timing out.
    with pytest.raises(AccessRefused, match="requires CurveZMQ keys"):
        cluster.client(keys="", connect_timeout_s=30)
    with pytest.raises(AccessRefused, match="not on the dispatcher's allow-list"):
        cluster.client(
            keys=pair_folder(tmp_path, "agent-as-client", folder / "agent.key_secret", folder / "dispatcher.key")
        )
    cluster.stop()
    seen = counters(logs)
    assert (seen["tasks_submitted"], seen["tasks_resolved"], seen["bad_frames"]) == (1, 1, 0)
    assert seen["client_refused"] >= len(probes) + 2
    assert seen["client_frames_unauthorized"] == seen["clients_refused"] == 0
    assert seen["agent_refused"] == 0


def test_a_client_cannot_take_over_another_client_s_id(cluster: LocalCluster, logs: Path, tmp_path: Path) -> None:
    """Bob's key is added while the dispatcher runs (the folder change is its reload); his key
    works under his own id, never under alice's."""
    bob, _ = add_client_key(cluster, logs, tmp_path, "bob")
    with cluster.client() as alice:
        first = alice.submit(apps.slow_where, 1, 0.3, node="local-0")
        with pytest.raises(AccessRefused, match="belongs to another key"):
            cluster.client(keys=bob, client_id=alice.client_id, connect_timeout_s=30)
        assert first.result(timeout=60)[:2] == ("local-0", 1)  # alice's result still reaches alice
        assert alice.submit(apps.where, 2, node="local-1").result(timeout=60)[:2] == ("local-1", 2)
    with cluster.client(keys=bob) as own:  # control: bob's key is allowed under an id of his own
        assert own.submit(apps.square, 7).result(timeout=60) == 49
    cluster.stop()
    seen = counters(logs)
    assert seen["clients_refused"] == 1
    assert seen["tasks_submitted"] == seen["tasks_resolved"] == 3


def test_a_revoked_client_gets_nothing_after_the_reload(cluster: LocalCluster, logs: Path, tmp_path: Path) -> None:
    carol_keys, public = add_client_key(cluster, logs, tmp_path, "carol")
    folder = cluster.keys_dir
    assert folder is not None
    mark = tmp_path / "after-revocation"
    with cluster.client(keys=carol_keys) as carol, cluster.client() as alice:
        assert carol.submit(apps.square, 3, node="local-0").result(timeout=60) == 9  # control: carol was allowed
        public.unlink()
        assert cluster.dispatcher is not None
        cluster.dispatcher.send_signal(signal.SIGHUP)
        wait_for_log(logs / "dispatcher.log", "client_revoked", client_id=carol.client_id)
        late = carol.submit(apps.probe, str(mark), node="local-0", rank=0.0)
        control = tmp_path / "control"
        assert alice.submit(apps.probe, str(control), node="local-0", rank=1.0).result(timeout=60) == str(control)
        assert not mark.exists()
        assert not late.done()
        with pytest.raises(AccessRefused, match="not on the dispatcher's allow-list"):
            cluster.client(keys=carol_keys, connect_timeout_s=30)
    cluster.stop()
    seen = counters(logs)
    assert seen["client_frames_unauthorized"] >= 1  # carol's late submission, dropped unread
    assert seen["tasks_submitted"] == 2


# --------------------------------------------------------------------------- agents


def test_agents_without_the_right_key_get_no_task(cluster: LocalCluster, logs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    keys.generate(other, nodes=["rogue-b"])
    rogues = {
        "rogue-a": agent_process(cluster.agent_url, "rogue-a", logs / "rogue-a.log"),
        "rogue-b": agent_process(cluster.agent_url, "rogue-b", logs / "rogue-b.log", "--keys", str(other)),
    }
    try:
        wait_for_log(logs / "rogue-a.log", "dispatcher_handshake_failed", timeout_s=90)
        wait_for_log(logs / "rogue-b.log", "dispatcher_handshake_failed", timeout_s=90)
        with cluster.client() as client:
            futures = [client.submit(apps.where, i) for i in range(20)]
            ran = [f.result(timeout=60) for f in futures]
            assert [x for _, x, _ in ran] == list(range(20))
            assert {node for node, _, _ in ran} <= {"local-0", "local-1"}
            assert {n.node_name for n in client.nodes()} == {"local-0", "local-1"}
    finally:
        stop_all(rogues)
    assert_idle(rogues, logs)
    cluster.stop()
    assert counters(logs)["agent_refused"] >= 2


def test_a_node_key_cannot_register_another_node(cluster: LocalCluster, logs: Path, tmp_path: Path) -> None:
    """local-1 dies; an impostor holding local-0's key, and one holding the shared agent key,
    each try to register as local-1: both refused, local-1's pinned tasks never reach them, and
    the real local-1 runs them when it comes back."""
    folder = cluster.keys_dir
    assert folder is not None
    cluster.kill_agent("local-1")
    with_a = pair_folder(tmp_path, "with-a", folder / "agent-local-0.key_secret", folder / "dispatcher.key", "agent")
    shared = pair_folder(tmp_path, "shared", folder / "agent.key_secret", folder / "dispatcher.key", "agent")
    impostors = {
        "with-a": agent_process(cluster.agent_url, "local-1", logs / "with-a.log", "--keys", str(with_a)),
        "shared": agent_process(cluster.agent_url, "local-1", logs / "shared.log", "--keys", str(shared)),
    }
    try:
        refused_a = wait_for_log(logs / "with-a.log", "registration_refused", timeout_s=90)
        refused_shared = wait_for_log(logs / "shared.log", "registration_refused", timeout_s=90)
        assert "belongs to node local-0, not local-1" in refused_a["reason"]
        assert cluster.zygote is not None  # so the real workers' parent is the zygote, never an agent
        assert "has a key of its own" in refused_shared["reason"]
        impostor_pids = {proc.pid for proc in impostors.values()}
        with cluster.client() as client:
            pinned = [client.submit(apps.node_and_parent, i, node="local-1") for i in range(6)]
            cluster.start_agent("local-1")  # the real one, with its own key
            ran = [f.result(timeout=90) for f in pinned]
            assert [x for _, x, _ in ran] == list(range(6))
            assert {node for node, _, _ in ran} <= {"local-0", "local-1"}
            # The impostors call themselves local-1 too: their workers would say so. Their workers'
            # parent is the impostor (it spawns them); the real nodes' workers come from the zygote.
            assert not {parent for _, _, parent in ran} & impostor_pids
    finally:
        stop_all(impostors)
    assert_idle(impostors, logs)
    cluster.stop()
    assert counters(logs)["agents_refused"] >= 2


# --------------------------------------------------------------------------- starting


def _dispatcher(*argv: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != keys.ENV}
    base = [sys.executable, "-m", "dispatcher", "--log-format", "json", "dispatcher", "--client-port", "0"]
    return subprocess.run(
        [*base, "--agent-port", "0", *argv], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_the_dispatcher_refuses_to_start_open_and_says_why(tmp_path: Path) -> None:
    refused = _dispatcher("--host", "0.0.0.0")
    assert refused.returncode != 0
    assert "refusing to bind 0.0.0.0 without keys" in refused.stderr
    folder = tmp_path / "keys"
    keys.generate(folder)
    (folder / "dispatcher.key_secret").chmod(0o640)
    loose = _dispatcher("--keys", str(folder))
    assert loose.returncode != 0
    assert "open to its group or others" in loose.stderr
    (folder / "dispatcher.key_secret").chmod(0o644)
    world = _dispatcher("--keys", str(folder))
    assert world.returncode != 0 and "readable by everyone" in world.stderr


def test_insecure_starts_beyond_loopback_and_warns(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "--log-format", "json", "dispatcher", "--host", "0.0.0.0",
         "--client-port", "0", "--agent-port", "0", "--insecure", "--announce"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != keys.ENV},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        assert announced["event"] == "dispatcher_listening"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    warnings = [json.loads(line) for line in err.splitlines() if '"insecure"' in line]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["host"] == "0.0.0.0"


def test_a_root_owned_group_readable_secret_is_what_a_kubernetes_secret_gives_and_is_accepted(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to own the secret as a Secret volume does")
    folder = tmp_path / "keys"
    keys.generate(folder)
    (folder / "dispatcher.key_secret").chmod(0o440)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "--log-format", "json", "dispatcher", "--keys", str(folder),
         "--host", "127.0.0.1", "--client-port", "0", "--agent-port", "0", "--announce"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != keys.ENV},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "dispatcher_listening"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_the_dispatcher_stops_when_its_zap_handler_dies(tmp_path: Path) -> None:
    """libzmq lets every CURVE client in when no ZAP handler answers: serving on is not an option."""
    import threading

    from dispatcher.server import DispatcherConfig, DispatcherService
    from dispatcher.server.access import GateDied

    folder = tmp_path / "keys"
    keys.generate(folder)
    service = DispatcherService(DispatcherConfig(host="127.0.0.1", client_port=0, agent_port=0, keys=folder))
    service.bind()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            service.run()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    gate = service.access._gate
    assert gate is not None and gate.alive()
    gate._auth.stop()  # the authenticator's thread ends, as if it had crashed
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], GateDied)
