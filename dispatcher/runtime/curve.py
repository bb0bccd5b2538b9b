"""CurveZMQ on a socket, and the ZAP handler that decides who is let in, per socket.

The dispatcher is the CURVE server on both ROUTER sockets, each with its own ZAP domain
(:data:`AGENTS` or :data:`CLIENTS`) and its own allow-list (``keys.allow_list`` of ``agents/`` or
``clients/``): a client key cannot register a node and an agent key cannot submit. Agents and
clients are CURVE clients that pin the dispatcher's public key, so neither talks to an impostor.

:class:`Gate` is pyzmq's ``ThreadAuthenticator`` with one credentials callback per domain, reading
allow-lists that :meth:`Gate.allow` replaces whole (a reload after a key is added or revoked).
Its User-Id for a peer is the peer's public key (Z85), so the dispatcher can drop frames of a key
that was revoked while its connection stayed up, and bind names to keys. libzmq lets every CURVE
client in when no ZAP handler answers: start the gate before binding, and treat its death as
fatal (:meth:`Gate.alive`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import zmq
import zmq.auth.thread

AGENTS: Final = "agents"
CLIENTS: Final = "clients"
DOMAINS: Final = (AGENTS, CLIENTS)


class _AllowList:
    """A ZAP credentials provider: is this Z85 key on the domain's current list?"""

    def __init__(self) -> None:
        self.keys: frozenset[bytes] = frozenset()

    def callback(self, _domain: str, key: bytes) -> bool:
        return key in self.keys


class Gate:
    """The dispatcher's ZAP handler: one allow-list per domain, replaceable while it runs."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx)
        self._lists = {domain: _AllowList() for domain in DOMAINS}
        self.started = False

    def start(self) -> None:
        """Answer ZAP requests from now on: call before any CURVE server socket binds."""
        self._auth.start()
        for domain, provider in self._lists.items():
            self._auth.configure_curve_callback(domain, credentials_provider=provider)
        self.started = True

    def allow(self, domain: str, keys: Mapping[bytes, str] | frozenset[bytes]) -> None:
        """Make ``keys`` (public keys, Z85) the whole allow-list of ``domain``; takes effect for the
        next handshake. Frames from a connection made under a key no longer listed are for the
        dispatcher to drop (:meth:`allowed`). The list is swapped whole, one reference
        assignment, so the authenticator's thread reads the old list or the new one, never a mix."""
        self._lists[domain].keys = frozenset(keys)

    def allowed(self, domain: str, key: bytes) -> bool:
        return key in self._lists[domain].keys

    def alive(self) -> bool:
        return self.started and self._auth.is_alive()

    def stop(self) -> None:
        if self.started:
            self._auth.stop()
            self.started = False


def serve_curve(sock: zmq.Socket[bytes], public: bytes, secret: bytes, domain: str) -> None:
    """Make ``sock`` a CURVE server whose peers the gate checks against ``domain`` (before bind)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown ZAP domain {domain!r}")
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = domain.encode()


def use_curve(sock: zmq.Socket[bytes], public: bytes, secret: bytes, server_public: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_public`` (before connect)."""
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public


_HANDSHAKE_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
KEY_REFUSED: Final = "the dispatcher refused our key: it is not on the dispatcher's allow-list for this socket"
SERVER_KEY_MISMATCH: Final = (
    "the CURVE handshake did not complete: if this repeats, the dispatcher at this address does not "
    "hold the key we pin (dispatcher.key), or does not use keys (a restart can break one handshake)"
)
KEYS_REQUIRED: Final = "the dispatcher requires CurveZMQ keys: give the key folder (--keys DIR, keys=DIR or SAGA_KEYS)"


class HandshakeWatch:
    """What the handshakes of a connecting socket said, from its libzmq monitor.

    :meth:`failure` is None while nothing went wrong (or the last handshake succeeded), else why
    the last one failed: :data:`KEY_REFUSED` (the dispatcher's ZAP handler said no),
    :data:`KEYS_REQUIRED` (we have no keys and it wants CURVE) — both final for a client — or
    :data:`SERVER_KEY_MISMATCH` (it could not read our CURVE hello: a wrong pinned key, or a
    keyless dispatcher). Owned by the thread that owns the socket."""

    def __init__(self, sock: zmq.Socket[bytes], *, keyed: bool) -> None:
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.keyed = keyed
        self._last: str | None = None

    def failure(self) -> str | None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = int(recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"])
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._last = None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._last = KEY_REFUSED
            else:
                self._last = SERVER_KEY_MISMATCH if self.keyed else KEYS_REQUIRED
        return self._last

    def close(self) -> None:
        self.monitor.close(linger=0)
