"""What goes into the dispatcher core (events, past tense) and what comes out (commands, imperative).

Events carry the time as data (``now``, seconds on the shell's monotonic clock) and a
``stimulus_id`` naming the cause, so a transcript of events replays exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dispatcher.protocol import AgentMessage, ClientMessage, Message

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class AgentMessageReceived:
    """A decoded message arrived on the agent socket from routing id ``peer``."""

    peer: bytes
    message: AgentMessage
    now: float
    stimulus_id: str = ""
    key: str = ""
    """The public key (Z85) the peer authenticated with; "" without keys."""


@dataclass(frozen=True, slots=True)
class ClientMessageReceived:
    """A decoded message arrived on the client socket from routing id ``peer``."""

    peer: bytes
    message: ClientMessage
    now: float
    stimulus_id: str = ""
    key: str = ""
    """The public key (Z85) the peer authenticated with; "" without keys."""


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame on ``side`` failed to decode (or was of the wrong direction); it is dropped."""

    side: Literal["agent", "client"]
    reason: str
    now: float
    stimulus_id: str = ""
    peer: bytes = b""
    version: int | None = None
    """Set when the frame was readable but in a protocol version the dispatcher does not speak:
    the peer is told which versions it does."""


@dataclass(frozen=True, slots=True)
class Ticked:
    """The clock advanced: check liveness, send heartbeats, expire grace periods."""

    now: float
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class KeysChanged:
    """The allow-lists were (re)loaded: these keys may connect from now on, and no others.

    ``agents`` maps each agent key to the node name it is bound to ("" for the shared agent key);
    ``clients`` is the client keys. Peers whose key left a list get nothing more: their frames
    are dropped by the shell, and the core forgets them here."""

    agents: Mapping[str, str]
    clients: frozenset[str]
    now: float
    stimulus_id: str = ""


Event = AgentMessageReceived | ClientMessageReceived | FrameRejected | Ticked | KeysChanged

# --------------------------------------------------------------------------- commands

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class SendToAgent:
    peer: bytes
    message: Message


@dataclass(frozen=True, slots=True)
class SendToClient:
    peer: bytes
    message: Message


@dataclass(frozen=True, slots=True)
class Log:
    """Log a fact. ``event`` is a snake_case fact (``node_dead``); the core has no logger."""

    event: str
    level: LogLevel = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Command = SendToAgent | SendToClient | Log
