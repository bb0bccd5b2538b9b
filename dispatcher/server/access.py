"""Who may talk to the dispatcher: CurveZMQ on both sockets, the allow-lists, and their reloads.

:class:`Access` belongs to the service's loop thread. With ``--keys DIR`` it starts the ZAP gate
before either socket binds (libzmq lets every CURVE client in when no handler answers), makes
both ROUTER sockets CURVE servers (domain ``agents`` or ``clients``), and from then on:

* :meth:`admit` names the key a message came with, or None for a key no longer on its list (a
  peer revoked while its connection stayed up): the shell drops that message unread;
* :meth:`reload` re-reads the two allow-list folders (on SIGHUP, and when :meth:`changed` sees
  their files change) and returns the :class:`KeysChanged` event for the core, which forgets
  revoked peers; a folder that fails to load keeps the lists as they were, and says why;
* :meth:`read_monitors` counts connections and failed handshakes per socket from libzmq's
  monitor events: an unauthenticated peer costs the core nothing, and is counted here.

Without keys every key is "" and :meth:`admit` lets everything in: the sockets are plain TCP,
and ``exposure.check_bind`` kept them on loopback unless ``--insecure``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from dispatcher.runtime import keys as k
from dispatcher.runtime.curve import AGENTS, CLIENTS, Gate, serve_curve
from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.throttle import log_due
from dispatcher.server.events import KeysChanged

log = get_logger("dispatcher")

Side = Literal["agent", "client"]
_DOMAIN: Final[dict[Side, str]] = {"agent": AGENTS, "client": CLIENTS}
_FOLDER: Final[dict[Side, str]] = {"agent": k.AGENTS_DIR, "client": k.CLIENTS_DIR}
_WATCHED: Final = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_FAILURES: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key_not_allowed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
}


class GateDied(DispatchError):
    """The ZAP handler stopped: every CURVE client would be let in. The dispatcher must stop."""


class KeysNotApplied(DispatchError):
    """The core could not apply reloaded allow-lists (a bug): the dispatcher stops rather than
    serve peers the gate has already cut off, or not."""


@dataclass(slots=True)
class AccessCounters:
    """Per socket: what the handshakes and the key checks turned away (the loop thread's)."""

    accepted: Counter[str] = field(default_factory=Counter)
    """TCP connections accepted."""
    authenticated: Counter[str] = field(default_factory=Counter)
    """Handshakes that succeeded. ``accepted - authenticated`` is what never got in: garbage,
    unknown keys, wrong versions, peers that hung up (minus the handshakes still under way)."""
    handshakes_failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(side, reason): the failures libzmq names (a peer that sends garbage and hangs up before
    the greeting is only in ``accepted``)."""
    frames_unauthorized: Counter[str] = field(default_factory=Counter)
    """Messages dropped because their key was revoked after their connection was made."""
    reloads: int = 0
    reload_failures: int = 0

    def refused(self, side: str) -> int:
        return self.accepted[side] - self.authenticated[side]

    def fields(self) -> dict[str, object]:
        """Flat, for a log line."""
        out: dict[str, object] = {"keys_reloads": self.reloads, "keys_reload_failures": self.reload_failures}
        for side in ("agent", "client"):
            out[f"{side}_connections"] = self.accepted[side]
            out[f"{side}_authenticated"] = self.authenticated[side]
            out[f"{side}_refused"] = self.refused(side)
            out[f"{side}_frames_unauthorized"] = self.frames_unauthorized[side]
        for (side, reason), n in sorted(self.handshakes_failed.items()):
            out[f"{side}_handshakes_failed_{reason}"] = n
        return out


class Access:
    """The dispatcher's gate keeper (see the module docstring); ``keys`` None: no CURVE."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], folder: Path | None, log_every: int = 1000) -> None:
        self.folder = folder
        self.counters = AccessCounters()
        self._ctx = ctx
        self._log_every = log_every
        self._keys = k.for_dispatcher(folder) if folder is not None else None
        self._gate: Gate | None = None
        self._allowed: dict[Side, frozenset[str]] = {"agent": frozenset(), "client": frozenset()}
        self._agents: dict[str, str] = {}
        self._monitors: dict[zmq.Socket[bytes], Side] = {}
        self._fingerprint = self._stat()

    @property
    def keyed(self) -> bool:
        return self._keys is not None

    def secure(self, sock: zmq.Socket[bytes], side: Side) -> None:
        """Before ``sock`` binds: the gate runs, ``sock`` is its CURVE server for ``side``, and
        its handshakes are watched. Without keys, only the watching."""
        if self._keys is not None:
            if self._gate is None:
                self._gate = Gate(self._ctx)
                self._gate.start()
                self._apply(_as_lists(self._keys.agents, self._keys.clients))  # as read at start
            serve_curve(sock, self._keys.public, self._keys.secret, _DOMAIN[side])
        self._monitors[sock.get_monitor_socket(_WATCHED)] = side

    @property
    def monitors(self) -> list[zmq.Socket[bytes]]:
        return list(self._monitors)

    def initial_event(self, now: float) -> KeysChanged | None:
        """The allow-lists the core starts with (None without keys: it binds nothing to keys)."""
        if self._keys is None:
            return None
        return KeysChanged(dict(self._agents), self._allowed["client"], now, "keys-initial")

    def check(self) -> None:
        """Raise :class:`GateDied` if the ZAP handler is gone."""
        if self._gate is not None and not self._gate.alive():
            raise GateDied("the ZAP authenticator thread died: refusing to serve with CURVE unchecked")

    def admit(self, side: Side, frame: zmq.Frame) -> str | None:
        """The key ``frame`` came with ("" without keys), or None if it is not on ``side``'s list
        any more (the message is to be dropped, and is counted)."""
        if self._keys is None:
            return ""
        try:
            key = frame.get("User-Id")
        except zmq.ZMQError:  # no metadata: not from an authenticated connection
            key = None
        if isinstance(key, str) and key in self._allowed[side]:
            return key
        self.counters.frames_unauthorized[side] += 1
        n = self.counters.frames_unauthorized[side]
        if log_due(n, every=self._log_every):
            log.warning("frame_unauthorized", side=side, reason="its key is no longer allowed", total=n)
        return None

    # ------------------------------------------------------------------ reloading

    def changed(self) -> bool:
        """Whether the allow-list folders' files changed since the last look (cheap: a stat per file)."""
        if self._keys is None:
            return False
        fingerprint = self._stat()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        return True

    def reload(self, now: float, why: str) -> KeysChanged | None:
        """Re-read both allow-lists; the event for the core, or None if nothing changed or they
        could not be read (then the old lists stay, and the log says why)."""
        if self._keys is None:
            log.info("keys_reload_ignored", why=why, reason="the dispatcher runs without keys")
            return None
        try:
            lists = self._load()
        except k.KeyFileError as exc:
            self.counters.reload_failures += 1
            # An expected failure (a half-written Secret): one line, no traceback.
            log.error("keys_reload_failed", why=why, error=str(exc), kept="the previous allow-lists")  # noqa: TRY400
            return None
        before = (dict(self._agents), self._allowed["client"])
        self._apply(lists)
        self.counters.reloads += 1
        agents, clients = lists
        if before == (agents, self._allowed["client"]):
            log.info("keys_reloaded", why=why, changed=False)
            return None
        log.info(
            "keys_reloaded",
            why=why,
            changed=True,
            agent_keys=len(agents),
            agent_keys_revoked=len(before[0].keys() - agents.keys()),
            client_keys=len(clients),
            client_keys_revoked=len(before[1] - clients),
        )
        return KeysChanged(dict(agents), self._allowed["client"], now, f"keys-{self.counters.reloads}")

    def _load(self) -> tuple[dict[str, str], frozenset[str]]:
        assert self.folder is not None
        return _as_lists(*k.allow_lists(self.folder))

    def _apply(self, lists: tuple[dict[str, str], frozenset[str]]) -> None:
        agents, clients = lists
        assert self._gate is not None
        self._agents = agents
        self._allowed = {"agent": frozenset(agents), "client": clients}
        self._gate.allow(AGENTS, frozenset(key.encode() for key in agents))
        self._gate.allow(CLIENTS, frozenset(key.encode() for key in clients))

    def _stat(self) -> tuple[tuple[str, int, int, int], ...]:
        if self.folder is None:
            return ()
        seen = []
        subs = _FOLDER.values() if k.layout(self.folder) == "folders" else ("",)  # flat: a Secret volume
        for sub in subs:
            folder = self.folder / sub
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                seen.append((sub, -1, -1, -1))
                continue
            for entry in entries:
                try:
                    st = entry.stat()  # follows links: a Kubernetes Secret volume swaps ``..data``
                except OSError:
                    continue
                seen.append((f"{sub}/{entry.name}", st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(seen)

    # ------------------------------------------------------------------ counting

    def read_monitors(self, ready: dict[zmq.Socket[bytes], int]) -> None:
        """Count the handshake events waiting on the monitors that ``poll`` found ready."""
        for mon, side in self._monitors.items():
            if mon not in ready:
                continue
            while mon.poll(0):
                event = int(recv_monitor_message(mon, zmq.NOBLOCK)["event"])
                if event == zmq.EVENT_ACCEPTED:
                    self.counters.accepted[side] += 1
                elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.counters.authenticated[side] += 1
                elif event in _FAILURES:
                    reason = _FAILURES[event]
                    self.counters.handshakes_failed[side, reason] += 1
                    n = sum(v for (s, _), v in self.counters.handshakes_failed.items() if s == side)
                    if log_due(n, every=self._log_every):
                        log.warning("handshake_refused", side=side, reason=reason, total=n)

    def close_monitors(self) -> None:
        for mon in self._monitors:
            mon.close(linger=0)
        self._monitors.clear()

    def stop(self) -> None:
        """Stop the ZAP handler (after the sockets it answers for are closed)."""
        if self._gate is not None:
            self._gate.stop()
            self._gate = None


def _as_lists(agents: Mapping[bytes, str], clients: Mapping[bytes, str]) -> tuple[dict[str, str], frozenset[str]]:
    """Allow-lists as the ZAP User-Id spells keys (Z85 text): agent key -> bound node name, and
    the client keys."""
    return {key.decode(): name for key, name in agents.items()}, frozenset(key.decode() for key in clients)
