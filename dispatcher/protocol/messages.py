"""The messages of the wire contract: version, limits, op codes, and one frozen dataclass each.

See ``dispatcher/protocol/__init__.py`` for the rules and ``docs/protocol.md`` for the spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import ClassVar, Final, NamedTuple

PROTOCOL_VERSION: Final = 5
"""5: a task's payload may stay with its client until the dispatcher asks for it (TaskSpec flag
HELD, FETCH, PAYLOADS, WELCOME's ``payload_window``): the dispatcher's memory has a budget.
4: what the cluster says of a node (NodeInfo's ``reason``); REGISTER and HELLO carry their
side's runtime versions; REGISTER's speed may be 0 (the agent gives none: the Node's label or 1);
MONITOR and MONITORED carry Parsl's monitoring messages from the workers to the task's client.
3: AGENT_STATUS (an agent's own counters); NODES and STATUS report worker respawns and steals.
2: RESULTS carries the credit its results free (one frame where version 1 sent two)."""
SUPPORTED_VERSIONS: Final = (PROTOCOL_VERSION - 1, PROTOCOL_VERSION)
"""What the dispatcher decodes and answers in (each peer in its own version): this one and the
previous one, so a rolling upgrade of the agents or the clients never strands a node."""

MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
"""Largest frame decode() accepts; the sockets enforce the same limit with ZMQ_MAXMSGSIZE."""
MAX_BATCH: Final = 1_000_000
"""Most items in one batch message."""
MAX_MESSAGE_BYTES: Final = MAX_FRAME_BYTES
"""Largest message, all its frames together (version 5: a payload may travel in a frame of its
own, and ZMQ_MAXMSGSIZE bounds each frame only). Senders keep under it: they start a new message
past ``COALESCE_BYTES``, and a lone payload is at most MAX_FRAME_BYTES less 64 KiB."""
type Payload = bytes | memoryview
"""A task's or a result's payload: bytes, or in the dispatcher the zero-copy view of the frame it
came in (version 5), forwarded as it is."""
INLINE_MAX: Final = 64 * 1024
"""Payloads up to this size travel inside the header frame; larger ones, in frames of their own
(version 5), which the dispatcher forwards without reading or copying them. A payload frame is
always larger (a small one would pin a receive buffer many times its size)."""
MAX_FRAMES: Final = MAX_MESSAGE_BYTES // (INLINE_MAX + 1) + 1
"""Most frames in one message: its header and one per payload, each over INLINE_MAX."""
MAX_NAME: Final = 253
"""Longest node name (a DNS subdomain, as Kubernetes node names are)."""
MAX_ID: Final = 128
"""Longest client, agent or dispatcher id."""
MAX_TEXT: Final = 4096
"""Longest free-text field (reasons, error messages)."""
MAX_MONITORING_BYTES: Final = 1024 * 1024
"""Largest monitoring message (MONITOR, MONITORED): Parsl's are a few hundred bytes."""
MAX_SLOTS: Final = 65_536
MAX_U64: Final = 2**64 - 1


_NODE_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_node_name(name: str) -> bool:
    """Whether ``name`` is a valid Kubernetes node name (an RFC 1123 DNS subdomain)."""
    return len(name) <= MAX_NAME and _NODE_NAME.fullmatch(name) is not None


class ProtocolError(ValueError):
    """A frame that does not follow this contract. Raised by decode(); never fatal to a loop."""


class VersionError(ProtocolError):
    """A frame in a protocol version this side does not speak (its header is readable)."""

    def __init__(self, version: object) -> None:
        super().__init__(f"protocol version {version!r}; this side speaks {', '.join(map(str, SUPPORTED_VERSIONS))}")
        self.version = version


class Op(IntEnum):
    """Operation codes. Values are part of the wire format: never renumber, only add."""

    # agent -> dispatcher
    REGISTER = 1
    CREDIT = 2
    RESULTS = 3
    DRAIN = 4
    BYE = 5
    STEAL_REPLY = 6
    AGENT_STATUS = 7
    """Since version 3."""
    MONITOR = 8
    """Since version 4."""
    # dispatcher -> agent
    REGISTERED = 10
    TASKS = 11
    CANCEL_TASKS = 12
    REREGISTER = 13
    REFUSED = 14
    STEAL_REQUEST = 15
    # every direction
    HEARTBEAT = 20
    # client -> dispatcher
    HELLO = 30
    SUBMIT = 31
    CANCEL = 32
    NODES_QUERY = 33
    STATUS_QUERY = 34
    REPIN = 35
    PAYLOADS = 36
    """Since version 5."""
    # dispatcher -> client
    WELCOME = 40
    RESOLVED = 41
    NODES = 42
    STATUS = 43
    ERROR = 44
    NODE_CHANGED = 45
    MONITORED = 46
    """Since version 4."""
    FETCH = 47
    """Since version 5."""


class Outcome(IntEnum):
    """How a task ended. OK and APP_ERROR carry Parsl-serialized payloads; the rest carry UTF-8 text."""

    OK = 0
    APP_ERROR = 1
    """The app raised: the payload is a serialized ``RemoteExceptionWrapper``."""
    WORKER_LOST = 2
    """The worker process running the task died (crash, OOM kill, os._exit)."""
    NODE_LOST = 3
    """The node running the task died and the task may not be run again elsewhere."""
    CANCELLED = 4
    REJECTED = 5
    """The dispatcher or agent refused the task (bad submission); the payload says why."""


class ErrorCode(IntEnum):
    """Reasons in an ERROR reply to a client."""

    UNKNOWN_CLIENT = 1
    """The dispatcher does not know this peer (it restarted, or HELLO was never sent): say HELLO again."""
    VERSION_MISMATCH = 2
    """The client speaks a protocol version the dispatcher does not (the message says which it does)."""
    # 3 was BAD_REQUEST, never sent: retired, never to be reused.
    REFUSED = 4
    """The dispatcher refuses this request for good (e.g. the client id is bound to another key):
    saying HELLO again will not help. Sent only to authenticated peers, which speak version 3."""


# --------------------------------------------------------------------------- batch items


NO_RETRY_ON_NODE_LOSS: Final = 1
"""TaskSpec flag: if the task's node dies while running it, resolve it NODE_LOST; never re-run it."""
SOFT_AFFINITY: Final = 2
"""TaskSpec flag: an idle node may take this task from its busy (live) node when that is faster."""
HELD: Final = 4
"""TaskSpec flag (since version 5): the payload stays with the client (``payload`` is empty) until
the dispatcher asks for it with FETCH, when the task is next on a node."""
KNOWN_FLAGS: Final = NO_RETRY_ON_NODE_LOSS | SOFT_AFFINITY | HELD


class TaskSpec(NamedTuple):
    """One task as a client submits it. ``node_name`` None means any node may run it."""

    task_id: int
    node_name: str | None
    rank: float
    payload: Payload
    flags: int = 0
    size: int = 0
    """A HELD task's payload length, what a FETCH of it brings (its share of the dispatcher's
    payload budget); 0 for any other task."""


class PayloadItem(NamedTuple):
    """One payload a client sends back when FETCH asks for it."""

    task_id: int
    payload: Payload


class Placement(NamedTuple):
    """A new place for a queued task (REPIN): ``node_name`` None means any node."""

    task_id: int
    node_name: str | None
    rank: float


class TaskAssignment(NamedTuple):
    """One task as the dispatcher hands it to an agent."""

    client_id: str
    task_id: int
    rank: float
    payload: Payload


class TaskResult(NamedTuple):
    """One finished task as an agent reports it; ``runtime_s`` is its wall time in the worker."""

    client_id: str
    task_id: int
    outcome: Outcome
    payload: Payload
    runtime_s: float = 0.0


class Resolution(NamedTuple):
    """One finished task as the dispatcher reports it to its client; ``node_name`` ran it."""

    task_id: int
    outcome: Outcome
    payload: Payload
    node_name: str
    runtime_s: float = 0.0


class MonitoringItem(NamedTuple):
    """One Parsl monitoring message from a worker, for the client of the task it ran
    (``payload``: the message pickled, as HTEX's radio sends it)."""

    client_id: str
    task_id: int
    payload: bytes


class MonitoredItem(NamedTuple):
    """One Parsl monitoring message as the dispatcher forwards it to the task's client."""

    task_id: int
    payload: bytes


TaskKey = tuple[str, int]
"""(client_id, task_id): a task's identity, unique across clients, stable across dispatcher restarts."""


class TaskRef(NamedTuple):
    """A task named by its owner and id (cancellation, drain hand-back)."""

    client_id: str
    task_id: int


class NodeInfo(NamedTuple):
    """One node as the dispatcher sees it (NODES and STATUS replies)."""

    node_name: str
    state: str
    speed: float
    slots: int
    incarnation: int
    queued: int
    in_flight: int
    done: int
    worker_respawns: int = 0
    """Worker processes its agent started again after one died (since version 3)."""
    reason: str = ""
    """Why it is in its state, where the cluster or the agent says ("cordoned", "deleted",
    "suspect", "not-in-api", "draining"; "" otherwise). Since version 4."""
    versions: str = ""
    """Its agent's runtime versions (``runtime_versions``), "" when unknown. Since version 4."""
    zone: str = ""
    """Its Node's ``topology.kubernetes.io/zone`` label (with the Node watch), else "". Since version 4."""


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Register:
    """Agent -> dispatcher: I am ``node_name`` (agent process ``agent_id``), with these slots."""

    op: ClassVar[Op] = Op.REGISTER

    node_name: str
    agent_id: str
    slots: int
    prefetch: int
    speed: float
    protocol_version: int = PROTOCOL_VERSION
    running: tuple[TaskRef, ...] = ()
    """Tasks this agent is running right now (non-empty when it registers again after losing its
    connection: everything else the dispatcher thought it held was dropped or never arrived)."""
    versions: str = ""
    """What its workers run: ``python=3.13.5 parsl=2026.10.26`` (space-separated ``name=version``;
    since version 4). A client whose own differ is told so for tasks pinned here."""


@dataclass(frozen=True, slots=True)
class Credit:
    """Agent -> dispatcher: send me up to ``n`` more tasks."""

    op: ClassVar[Op] = Op.CREDIT

    n: int


@dataclass(frozen=True, slots=True)
class Results:
    """Agent -> dispatcher: these tasks finished; send me up to ``credit`` more tasks (the
    slots they free; 0: none). One frame, so credit never arrives ahead of the results that
    free its slots."""

    op: ClassVar[Op] = Op.RESULTS

    results: tuple[TaskResult, ...]
    credit: int = 0


@dataclass(frozen=True, slots=True)
class Drain:
    """Agent -> dispatcher: I am stopping; these unstarted tasks go back, running ones will finish."""

    op: ClassVar[Op] = Op.DRAIN

    returned: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class StealReply:
    """Agent -> dispatcher: of the tasks asked for in ``request_id``, these were not started and
    are dropped here (confirmed); the others are running or done and stay."""

    op: ClassVar[Op] = Op.STEAL_REPLY

    request_id: int
    confirmed: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    """Agent -> dispatcher: I am gone; nothing of mine is running any more."""

    op: ClassVar[Op] = Op.BYE


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Agent -> dispatcher (since version 3): what only the agent sees. Sent when it changes
    (at most once per heartbeat interval, in place of a heartbeat)."""

    op: ClassVar[Op] = Op.AGENT_STATUS

    worker_respawns: int
    """Worker processes started again after one died, since the agent started."""
    busy_workers: int


@dataclass(frozen=True, slots=True)
class Monitor:
    """Agent -> dispatcher (since version 4): monitoring messages from tasks running here, sent
    before the RESULTS of those tasks. The dispatcher passes each on unread to the task's client
    while the task is unresolved and ran on this node, and drops it otherwise."""

    op: ClassVar[Op] = Op.MONITOR

    items: tuple[MonitoringItem, ...]


@dataclass(frozen=True, slots=True)
class Registered:
    """Dispatcher -> agent: welcome; heartbeat every ``heartbeat_interval_s``."""

    op: ClassVar[Op] = Op.REGISTERED

    node_name: str
    incarnation: int
    dispatcher_id: str
    heartbeat_interval_s: float
    liveness: int


@dataclass(frozen=True, slots=True)
class Tasks:
    """Dispatcher -> agent: run these, in this order."""

    op: ClassVar[Op] = Op.TASKS

    tasks: tuple[TaskAssignment, ...]


@dataclass(frozen=True, slots=True)
class CancelTasks:
    """Dispatcher -> agent: drop these if they have not started."""

    op: ClassVar[Op] = Op.CANCEL_TASKS

    tasks: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class StealRequest:
    """Dispatcher -> agent: give back these tasks if they have not started (answer STEAL_REPLY)."""

    op: ClassVar[Op] = Op.STEAL_REQUEST

    request_id: int
    tasks: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Reregister:
    """Dispatcher -> agent: I do not know you (I restarted, or declared you dead): register again."""

    op: ClassVar[Op] = Op.REREGISTER


@dataclass(frozen=True, slots=True)
class Refused:
    """Dispatcher -> agent: your registration is refused."""

    op: ClassVar[Op] = Op.REFUSED

    reason: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Any direction: I am alive. Any other message counts as a heartbeat too."""

    op: ClassVar[Op] = Op.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> dispatcher: I am ``client_id``. Sent first, and again after UNKNOWN_CLIENT."""

    op: ClassVar[Op] = Op.HELLO

    client_id: str
    protocol_version: int = PROTOCOL_VERSION
    versions: str = ""
    """What packs this client's tasks (as REGISTER's ``versions``; since version 4)."""


@dataclass(frozen=True, slots=True)
class Submit:
    """Client -> dispatcher: queue these tasks. A task id already known is ignored (re-send safe)."""

    op: ClassVar[Op] = Op.SUBMIT

    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Client -> dispatcher: cancel these of my tasks if they have not started."""

    op: ClassVar[Op] = Op.CANCEL

    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Payloads:
    """Client -> dispatcher (since version 5): the payloads FETCH asked for; ``missing``: the asked
    tasks this client no longer holds (resolved or cancelled here), which the dispatcher forgets."""

    op: ClassVar[Op] = Op.PAYLOADS

    items: tuple[PayloadItem, ...]
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Repin:
    """Client -> dispatcher: move these of my tasks, if still queued, to a new node and rank (a re-plan)."""

    op: ClassVar[Op] = Op.REPIN

    tasks: tuple[Placement, ...]


@dataclass(frozen=True, slots=True)
class NodesQuery:
    """Client -> dispatcher: which nodes do you know? Answered by NODES with the same request id."""

    op: ClassVar[Op] = Op.NODES_QUERY

    request_id: int


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Client -> dispatcher: how are things? Answered by STATUS with the same request id."""

    op: ClassVar[Op] = Op.STATUS_QUERY

    request_id: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """Dispatcher -> client: hello; ``dispatcher_id`` changes when the dispatcher restarts."""

    op: ClassVar[Op] = Op.WELCOME

    dispatcher_id: str
    heartbeat_interval_s: float
    payload_window: int = 0
    """Payload bytes the client may send ahead (since version 5): of the tasks it has sent and that
    are unresolved, those past this many payload bytes go HELD. 0: no limit."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """Dispatcher -> client: these of your tasks ended."""

    op: ClassVar[Op] = Op.RESOLVED

    results: tuple[Resolution, ...]


@dataclass(frozen=True, slots=True)
class Nodes:
    """Dispatcher -> client: the nodes, in name order."""

    op: ClassVar[Op] = Op.NODES

    request_id: int
    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True)
class Status:
    """Dispatcher -> client: nodes plus dispatcher-wide counters."""

    op: ClassVar[Op] = Op.STATUS

    request_id: int
    dispatcher_id: str
    nodes: tuple[NodeInfo, ...]
    pool_queued: int
    tasks_submitted: int
    tasks_resolved: int
    duplicates_dropped: int
    bad_frames: int
    tasks_stolen: int = 0
    """Tasks moved off their node by soft-affinity stealing (since version 3)."""


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """Dispatcher -> every client: a node registered, began draining, died or left."""

    op: ClassVar[Op] = Op.NODE_CHANGED

    node_name: str
    state: str
    incarnation: int
    speed: float


@dataclass(frozen=True, slots=True)
class Monitored:
    """Dispatcher -> client (since version 4): monitoring messages from the workers running
    these of your tasks, in the order their node sent them, ahead of the tasks' RESOLVED."""

    op: ClassVar[Op] = Op.MONITORED

    items: tuple[MonitoredItem, ...]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Dispatcher -> client (since version 5): send the payloads of these HELD tasks (PAYLOADS)."""

    op: ClassVar[Op] = Op.FETCH

    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Error:
    """Dispatcher -> client: your last message could not be served."""

    op: ClassVar[Op] = Op.ERROR

    code: ErrorCode
    message: str


AgentMessage = Register | Credit | Results | Drain | Bye | Heartbeat | StealReply | AgentStatus | Monitor
"""What an agent may send."""
ClientMessage = Hello | Submit | Cancel | Repin | NodesQuery | StatusQuery | Heartbeat | Payloads
"""What a client may send."""
Message = (
    AgentMessage
    | Registered
    | StealRequest
    | Tasks
    | CancelTasks
    | Reregister
    | Refused
    | ClientMessage
    | Welcome
    | Resolved
    | Nodes
    | Status
    | Error
    | NodeChanged
    | Monitored
    | Fetch
)


_payload_of: Final = attrgetter("payload")
COALESCE_BYTES: Final = 16 * 1024 * 1024
"""Payload bytes above which :func:`coalesce` starts a new message (far below MAX_MESSAGE_BYTES)."""


def coalesce(messages: list[Message]) -> list[Message]:
    """Merge runs of batch messages bound for one peer (TASKS, RESOLVED) into as few messages as
    the limits allow, and split one past them (MAX_BATCH items, COALESCE_BYTES of payloads but
    for a lone item); order is kept. What the dispatcher sends a peer in one loop turn goes out
    as one message per run instead of one per event, and none too large for its peer to take."""
    out: list[Message] = []
    run: list[TaskAssignment] | list[Resolution] = []
    kind: type | None = None
    size = 0

    def close_run() -> None:
        if run and kind is Tasks:
            out.append(Tasks(tuple(run)))  # type: ignore[arg-type]
        elif run and kind is Resolved:
            out.append(Resolved(tuple(run)))  # type: ignore[arg-type]

    for message in messages:
        items: tuple[TaskAssignment, ...] | tuple[Resolution, ...]
        if type(message) is Tasks:
            items = message.tasks
        elif type(message) is Resolved:
            items = message.results
        else:
            close_run()
            kind, run, size = None, [], 0
            out.append(message)
            continue
        if kind is not type(message):
            close_run()
            kind, run, size = type(message), [], 0
        added = sum(map(len, map(_payload_of, items)))
        if len(run) + len(items) <= MAX_BATCH and size + added <= COALESCE_BYTES:  # the usual case: all of it
            run.extend(items)  # type: ignore[arg-type]
            size += added
            continue
        for item in items:
            n = len(item.payload)
            if run and (len(run) >= MAX_BATCH or size + n > COALESCE_BYTES):
                close_run()
                run, size = [], 0
            run.append(item)  # type: ignore[arg-type]
            size += n
    close_run()
    return out


def runs[T](
    items: Sequence[T], max_items: int, max_bytes: int, *, payload_of: Callable[[T], Sized] = _payload_of
) -> Iterator[list[T]]:
    """``items`` in order, in runs of at most ``max_items`` whose payloads (``payload_of``; its
    ``payload`` by default) add up to at most ``max_bytes`` (an item larger than that goes
    alone): a sender's messages, none past what its peer takes however the payloads fall."""
    if len(items) <= max_items and sum(map(len, map(payload_of, items))) <= max_bytes:  # the usual case
        if items:
            yield list(items)
        return
    run: list[T] = []
    size = 0
    for item in items:
        n = len(payload_of(item))
        if run and (len(run) >= max_items or size + n > max_bytes):
            yield run
            run, size = [], 0
        run.append(item)
        size += n
    if run:
        yield run
