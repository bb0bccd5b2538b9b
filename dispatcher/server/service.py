"""The dispatcher's I/O shell: two ROUTER sockets, the clock, and the core as a field.

The loop reads as named phases: poll, read agent frames, read client frames, tick, send. Every
frame is decoded by the contract, turned into one event, handed to the core, and the commands
that come back are carried out in order; messages for one peer are sent at the end of the turn,
batches merged (``protocol.coalesce``), so a burst of events costs a frame per peer, not per event.
Nothing a peer sends can stop the loop: undecodable frames become ``FrameRejected`` events,
and an event the core raises on is rejected: the core undid the step, nothing is sent, the
rejection is counted and logged with its stimulus id.

Who may send anything is :class:`Access`'s (``access.py``): with keys, both sockets are CURVE
servers, a peer that fails the handshake never reaches this loop, and a message whose key was
revoked is dropped before it is decoded. The one thing that stops the loop is the ZAP handler
dying (``GateDied``): serving on would let every CURVE client in.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, get_args

import zmq

from dispatcher import protocol as p
from dispatcher.runtime import exposure
from dispatcher.runtime.health import HealthServer, Heartbeat
from dispatcher.runtime.inbox import Inbox
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.sockets import drain, recv_frames, send_parts
from dispatcher.server.access import Access, KeysNotApplied, Side
from dispatcher.server.config import DispatcherConfig
from dispatcher.server.core import DispatcherCore
from dispatcher.server.events import (
    AgentMessageReceived,
    ClientMessageReceived,
    Command,
    Count,
    Event,
    FrameRejected,
    Log,
    Observe,
    SendToAgent,
    SendToClient,
    Ticked,
)
from dispatcher.server.metrics import Metrics, Scrape, Snapshot, WatchGauges, render, snapshot
from dispatcher.server.nodewatch import NodeWatch, Reading

if TYPE_CHECKING:
    from kubernetes.client import Configuration

log = get_logger("dispatcher")

_AGENT_TYPES: Final = get_args(p.AgentMessage)
"""What an agent may send: derived from the contract, so a new message cannot be forgotten here."""
_CLIENT_TYPES: Final = get_args(p.ClientMessage)
"""What a client may send."""
_MAX_OLDER_PEERS: Final = 100_000
_READ_BURST: Final = 256
"""Frames read from one socket before looking at the other and at the clock (fairness)."""
KEYS_CHECK_S: Final = 1.0
"""How often the allow-list folders are looked at for added or revoked keys."""
SCRAPE_WAIT_S: Final = 5.0
"""How long ``/metrics`` waits for the loop to take its snapshot (a loop stuck longer: 503)."""
METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _after_rejection(event: Event) -> list[Command]:
    """What a peer is told when the core rejected its message, so that nothing waits for an
    answer that will not come: a submission's tasks resolve REJECTED (the client's futures end);
    an agent is asked to register again, and the resync requeues what it no longer runs (its
    results, if that is what failed, are run again: at-least-once)."""
    if isinstance(event, ClientMessageReceived) and isinstance(event.message, p.Submit):
        why = f"the dispatcher failed on this submission ({event.stimulus_id}); see its log".encode()
        results = tuple(p.Resolution(spec.task_id, p.Outcome.REJECTED, why, "") for spec in event.message.tasks)
        return [SendToClient(event.peer, p.Resolved(results))] if results else []
    if isinstance(event, AgentMessageReceived) and not isinstance(event.message, p.Bye):
        return [SendToAgent(event.peer, p.Reregister())]
    return []


class DispatcherService:
    """Owns the sockets and the clock; the state lives in ``self.core``."""

    def __init__(
        self,
        config: DispatcherConfig,
        clock: Callable[[], float] = time.monotonic,
        kube: Configuration | None = None,
    ) -> None:
        """``kube``: a Kubernetes client configuration (``nodewatch.load_configuration``): the
        Node watch runs, and its readings reach the core through the inbox."""
        self.config = config
        self.dispatcher_id = uuid.uuid4().hex[:16]
        self.core = DispatcherCore(dataclasses.replace(config.core, dispatcher_id=self.dispatcher_id))
        self._clock = clock
        self._stimuli = itertools.count()
        self._stop = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.access = Access(self._ctx, config.keys, config.core.bad_frame_log_every)
        """Reads the keys now, so a bad key file fails the start with a clear error."""
        self.host = config.host or exposure.default_host(self.access.keyed)
        self.insecure = exposure.check_bind(self.host, keyed=self.access.keyed, insecure=config.insecure)
        self._reload_asked = False
        """Set by SIGHUP (a signal handler runs on this thread, between bytecodes)."""
        self._agents = self._router()
        self._clients = self._router()
        self.client_port = 0
        self.agent_port = 0
        self.events_rejected = 0
        """Events the core raised on (a bug): each left the state as it was and sent nothing."""
        self._outgoing: dict[tuple[zmq.Socket[bytes], bytes], list[p.Message]] = {}
        """Messages per peer, sent at the end of the loop turn."""
        self._older: OrderedDict[tuple[zmq.Socket[bytes], bytes], int] = OrderedDict()
        """Peers whose last frame was in an older supported version: they are answered in it.
        Bounded (the oldest forgotten): a peer that is not in it is answered in the current version."""
        self.heartbeat = Heartbeat()
        """Bumped every loop turn: ``/healthz``."""
        self.bound = False
        """Both sockets bound: ``/readyz`` (never the Node watch: an API outage must not take the
        dispatcher out of its Service)."""
        self.metrics = Metrics()
        """What the core counted (its ``Count`` and ``Observe`` commands): this loop's."""
        self._inbox: Inbox[Reading | Scrape] = Inbox()
        self.watch = NodeWatch(kube, self._inbox.post, config.watch) if kube is not None else None
        self.http: HealthServer | None = None
        self.http_port = 0

    def _router(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame_bytes)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop a result or task silently; credit bounds agents
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        return sock

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> tuple[int, int]:
        """Bind both sockets, CURVE first where there are keys; returns (client_port,
        agent_port), resolving port 0."""
        host = self.host
        if self.insecure:
            log.warning("insecure", host=host, warning=exposure.INSECURE_WARNING)
        self.access.secure(self._clients, "client")
        self.access.secure(self._agents, "agent")
        initial = self.access.initial_event(self._clock())
        if initial is not None:
            self._step(initial)
        self.client_port = self._bind(self._clients, host, self.config.client_port)
        self.agent_port = self._bind(self._agents, host, self.config.agent_port)
        self.bound = True
        if self.config.http_port is not None:
            routes = {"/healthz": self.heartbeat.check, "/readyz": self._ready}
            pages = {"/metrics": self._metrics_page}
            self.http = HealthServer(host, self.config.http_port, routes, pages).start()
            self.http_port = self.http.port
        if self.watch is not None:
            self.watch.start()
        log.info(
            "dispatcher_listening",
            dispatcher_id=self.dispatcher_id,
            client_url=self.url(self.client_port),
            agent_url=self.url(self.agent_port),
            curve=self.access.keyed,
            keys=str(self.config.keys) if self.config.keys else None,
            http_port=self.http_port or None,
            watch_nodes=self.watch is not None,
        )
        return self.client_port, self.agent_port

    def _ready(self) -> tuple[bool, str]:
        if not self.bound:
            return False, "sockets not bound yet"
        return True, f"serving clients on {self.client_port} and agents on {self.agent_port}"

    @staticmethod
    def _bind(sock: zmq.Socket[bytes], host: str, port: int) -> int:
        if port == 0:
            return sock.bind_to_random_port(f"tcp://{host}")
        sock.bind(f"tcp://{host}:{port}")
        return port

    def url(self, port: int) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "*") else self.host
        return f"tcp://{host}:{port}"

    def announcement(self) -> str:
        """One JSON line a parent process reads to learn where we listen."""
        return json.dumps(
            {
                "event": "dispatcher_listening",
                "dispatcher_id": self.dispatcher_id,
                "client_url": self.url(self.client_port),
                "agent_url": self.url(self.agent_port),
                "http_port": self.http_port or None,
            }
        )

    def stop(self) -> None:
        """Ask the loop to finish (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop; SIGHUP re-reads the allow-lists."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_reload(self) -> None:
        """Re-read the allow-list folders at the next tick (what SIGHUP does)."""
        self._reload_asked = True

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.http is not None:
            self.http.close()
        self._inbox.close()
        self.access.close_monitors()
        self._agents.close(linger=0)
        self._clients.close(linger=0)
        self.access.stop()  # last: while a socket is open, a ZAP handler must answer for it

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Serve until :meth:`stop`. Binds first if :meth:`bind` was not called."""
        if not self.client_port:
            self.bind()
        poller = zmq.Poller()
        poller.register(self._agents, zmq.POLLIN)
        poller.register(self._clients, zmq.POLLIN)
        access = self.access
        for monitor in access.monitors:
            poller.register(monitor, zmq.POLLIN)
        inbox = self._inbox.fileno()
        poller.register(inbox, zmq.POLLIN)
        beat = self.heartbeat.beat
        tick_s = self.config.tick_s
        next_tick = self._clock() + tick_s
        next_keys_check = self._clock() + KEYS_CHECK_S
        try:
            while not self._stop.is_set():
                # Rounded up: rounding down would spin through the last millisecond before a tick.
                wait_ms = max(0, math.ceil((next_tick - self._clock()) * 1000.0))
                ready = dict(poller.poll(wait_ms))
                beat()
                if self._agents in ready:
                    self._read(self._agents, "agent")
                if self._clients in ready:
                    self._read(self._clients, "client")
                if len(ready) > (self._agents in ready) + (self._clients in ready):
                    if inbox in ready:
                        self._read_inbox()
                    access.read_monitors(ready)
                now = self._clock()
                if now >= next_tick:
                    access.check()
                    self._step(Ticked(now, f"tick-{next(self._stimuli)}"))
                    next_tick = now + tick_s
                self._flush()
                if self._reload_asked or now >= next_keys_check:  # after the flush: nothing queued
                    self._reload_keys(now)  # this turn may still go to a peer the reload cuts off
                    next_keys_check = now + KEYS_CHECK_S
                    self._flush()
        finally:
            self._flush()
            log.info(
                "dispatcher_stopped",
                tasks_submitted=self.core.tasks_submitted,
                tasks_resolved=self.core.tasks_resolved,
                unresolved=len(self.core.tasks),
                bad_frames=self.core.bad_frames,
                clients_refused=self.core.clients_refused,
                agents_refused=self.core.agents_refused,
                results_refused=self.core.results_refused,
                **access.counters.fields(),
            )
            self.close()

    def _read_inbox(self) -> None:
        """What the Node watch read, in the order it read it: one core event each; and the
        scrapes waiting for a snapshot."""
        for item in self._inbox.take():
            if isinstance(item, Scrape):
                item.fulfil(self.snapshot())
            else:
                self._step(item(self._clock(), f"k8s-{next(self._stimuli)}"))

    # ------------------------------------------------------------------ metrics

    def snapshot(self) -> Snapshot:
        """The loop thread's: what ``/metrics`` shows, as of now."""
        watch = self.watch
        gauges = None
        if watch is not None:
            contact = watch.contact_at
            gauges = WatchGauges(
                synced=watch.synced,
                restarts={"expired": watch.expiries, "error": watch.errors},
                since_contact_s=None if contact is None else max(0.0, time.monotonic() - contact),
            )
        return snapshot(self.metrics, self.core, self.access.counters, gauges, self.events_rejected)

    def scrape(self, timeout_s: float = SCRAPE_WAIT_S) -> Snapshot | None:
        """Any thread: ask the loop for a snapshot and wait for it (None: it did not answer)."""
        request = Scrape()
        self._inbox.post(request)
        return request.wait(timeout_s)

    def _metrics_page(self) -> tuple[bytes, str] | None:
        snap = self.scrape()
        return None if snap is None else (render(snap), METRICS_TYPE)

    def _reload_keys(self, now: float) -> None:
        asked, self._reload_asked = self._reload_asked, False
        if not asked and not self.access.changed():
            return
        event = self.access.reload(now, "SIGHUP" if asked else "the allow-list folders changed")
        if event is not None and not self._step(event):
            # The gate has the new lists and the core does not: revoked peers would keep what
            # they hold. Fail closed; a restart reads the lists afresh.
            raise KeysNotApplied(
                f"the core failed to apply the reloaded allow-lists ({event.stimulus_id}); see the log"
            )

    def _read(self, sock: zmq.Socket[bytes], side: Side) -> None:
        """Read up to a burst of frames from one socket and feed them to the core: at most
        ``_READ_BURST`` frames and at most a tick's time, so a flood of large submissions never
        keeps agents' heartbeats unread long enough to declare their nodes dead. With CURVE a
        message whose key was revoked is dropped unread (:meth:`_receiver`)."""
        clock = self._clock
        until = clock() + self.config.tick_s
        for frames, key in itertools.islice(drain(sock, self._receiver(sock, side)), _READ_BURST):
            now = clock()
            if key is not None:
                event, version = self._event(side, frames, now, f"{side}-{next(self._stimuli)}", key)
                if version is not None:
                    self._note_version(sock, bytes(frames[0]), version)
                self._step(event)
            if now >= until:
                return

    def _receiver(
        self, sock: zmq.Socket[bytes], side: Side
    ) -> Callable[[int], tuple[Sequence[bytes | memoryview], str | None]]:
        """How :meth:`_read` takes one message: its frames and the key it came with ("" without
        keys; None: revoked, to be dropped). Read as ZeroMQ frames, not copied: a payload in a
        frame of its own (version 5) stays a view of it, forwarded as it came. With CURVE the key
        is the ZAP User-Id (``Access.admit``)."""
        keyed, admit = self.access.keyed, self.access.admit
        keep = p.MAX_FRAMES + 2  # the routing id, and one frame more than a message may have

        def recv(flags: int) -> tuple[Sequence[bytes | memoryview], str | None]:
            frames = recv_frames(sock, flags, keep)
            key = admit(side, frames[-1]) if keyed else ""
            if key is None:
                return (), None
            return [frames[0].bytes, *(frame.buffer for frame in frames[1:])], key

        return recv

    @staticmethod
    def _event(
        side: Side, frames: Sequence[bytes | memoryview], now: float, stimulus_id: str, key: str = ""
    ) -> tuple[Event, int | None]:
        """The event for one ROUTER message (a decoded message, or a rejection saying why not),
        and the protocol version it was written in when it decoded."""
        if len(frames) < 2:
            reason = "expected a frame after the routing id, got none"
            return FrameRejected(side, reason, now, stimulus_id, kind="frames"), None
        try:
            version, message = p.decode_versioned(frames[1:])
        except p.VersionError as exc:
            seen = exc.version if type(exc.version) is int else -1
            return FrameRejected(side, str(exc), now, stimulus_id, bytes(frames[0]), seen, "version"), None
        except p.ProtocolError as exc:
            return FrameRejected(side, str(exc), now, stimulus_id), None
        if side == "agent" and isinstance(message, _AGENT_TYPES):
            return AgentMessageReceived(bytes(frames[0]), message, now, stimulus_id, key), version
        if side == "client" and isinstance(message, _CLIENT_TYPES):
            return ClientMessageReceived(bytes(frames[0]), message, now, stimulus_id, key), version
        reason = f"{p.op_of(message).name} is not a message a {side} sends"
        return FrameRejected(side, reason, now, stimulus_id, kind="direction"), None

    def _note_version(self, sock: zmq.Socket[bytes], peer: bytes, version: int) -> None:
        key = (sock, peer)
        if version == p.PROTOCOL_VERSION:
            if self._older:
                self._older.pop(key, None)
            return
        self._older[key] = version
        self._older.move_to_end(key)
        if len(self._older) > _MAX_OLDER_PEERS:
            self._older.popitem(last=False)

    def _step(self, event: Event) -> bool:
        """One event through the core. A step that raises changed nothing (the core undoes it)
        and issued nothing: the event is rejected, counted and logged, and the loop goes on. Not
        failing hard is deliberate: clients re-send what they sent, so a crash on one bad input
        would become a crash loop."""
        try:
            commands = self.core.handle(event)
        except Exception:
            self.events_rejected += 1
            log.exception(
                "event_rejected",
                stimulus_id=event.stimulus_id,
                event_type=type(event).__name__,
                total=self.events_rejected,
            )
            self._carry_out(_after_rejection(event))
            return False
        self._carry_out(commands)
        return True

    def _carry_out(self, commands: list[Command]) -> None:
        outgoing = self._outgoing
        for command in commands:
            if type(command) is SendToAgent:
                outgoing.setdefault((self._agents, command.peer), []).append(command.message)
            elif type(command) is SendToClient:
                outgoing.setdefault((self._clients, command.peer), []).append(command.message)
            elif type(command) is Count or type(command) is Observe:
                self.metrics.record(command)
            elif type(command) is Log:
                getattr(log, command.level)(command.event, **command.fields)

    def _flush(self) -> None:
        """Send what this turn produced, per peer in order, batches merged."""
        if not self._outgoing:
            return
        outgoing, self._outgoing = self._outgoing, {}
        older = self._older
        for key, messages in outgoing.items():
            version = older.get(key, p.PROTOCOL_VERSION) if older else p.PROTOCOL_VERSION
            for message in p.coalesce(messages) if len(messages) > 1 else messages:  # one alone is in bounds
                self._send(key[0], key[1], message, version)

    @staticmethod
    def _send(sock: zmq.Socket[bytes], peer: bytes, message: p.Message, version: int) -> None:
        try:
            send_parts(sock, [peer, *p.encode_parts(message, version)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # e.g. the peer vanished; ROUTER drops, but never raise here
            log.warning("send_failed", error=str(exc), op=p.op_of(message).name)
        except Exception:  # an unencodable message is a bug: log it, keep serving
            log.exception("encode_failed", op=p.op_of(message).name)
