"""What goes into the dispatcher core (events, past tense) and what comes out (commands, imperative).

Events carry the time as data (``now``, seconds on the shell's monotonic clock) and a
``stimulus_id`` naming the cause, so a transcript of events replays exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

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
    kind: str = "malformed"
    """What was wrong, as a bounded label (``FRAME_KINDS``): the metrics count by it."""


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


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """What the Kubernetes API says of one Node (the Node watch's reading of a ``V1Node``)."""

    name: str
    cordoned: bool = False
    """``spec.unschedulable``, or the ``node.kubernetes.io/unschedulable`` taint."""
    ready: bool = True
    """False when its Ready condition is False or Unknown, or it has the ``unreachable`` or
    ``not-ready`` taint: its node is then suspect (dead at its first missed heartbeat)."""
    speed: float | None = None
    """The ``saga-dispatch.io/speed`` label: the node's speed where its agent gives none."""
    zone: str = ""
    """``topology.kubernetes.io/zone``."""


@dataclass(frozen=True, slots=True)
class NodesListed:
    """The Node watch listed every Node (at its start, and again after a 410 Gone or an error):
    this is all of them, so a Node the core knew and that is not here was deleted meanwhile."""

    nodes: tuple[ClusterNode, ...]
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeObserved:
    """A Node was added or changed (a watch event ADDED or MODIFIED)."""

    node: ClusterNode
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeDeleted:
    """A Node was deleted (a watch event DELETED)."""

    name: str
    now: float
    stimulus_id: str = ""


NO_NODE: Final = "(none)"
"""The metrics' ``node`` label of what no node did (rejected at submission, cancelled, revoked).
Not a Kubernetes node name (RFC 1123): it never clashes with one."""
POOL_LABEL: Final = "(pool)"
"""The ``node`` label of tasks submitted for any node (the shared pool)."""

FRAME_KINDS: Final = ("frames", "version", "malformed", "direction")
"""Why a frame was rejected: a wrong number of frames, a protocol version not spoken, a body that
does not decode, a message only the other side sends. (A frame over ``MAXMSGSIZE`` never arrives:
libzmq drops its connection.)"""

ClusterEvent = NodesListed | NodeObserved | NodeDeleted
"""What the Node watch reports (``nodewatch.py``), in the order the API said it."""

Event = AgentMessageReceived | ClientMessageReceived | FrameRejected | Ticked | KeysChanged | ClusterEvent

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


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``n`` to the counter ``metric`` (one of ``metrics.COUNTERS``) at ``labels``.

    Issued once per step per metric and label set (a batch of 100 results is one ``Count``), and
    like every command only by a step that committed: a step undone counts nothing."""

    metric: str
    labels: tuple[str, ...]
    n: int = 1


@dataclass(frozen=True, slots=True)
class Observe:
    """Record ``values`` (seconds) in the histogram ``metric`` (``metrics.HISTOGRAMS``) at ``labels``."""

    metric: str
    labels: tuple[str, ...]
    values: tuple[float, ...]


Command = SendToAgent | SendToClient | Log | Count | Observe
