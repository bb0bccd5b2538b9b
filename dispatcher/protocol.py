"""The wire contract: every frame the dispatcher, its agents and its clients exchange.

This module is the only place that knows frames. Agents and clients import it and nothing else
of the dispatcher. The human-readable spec is ``docs/protocol.md``; keep the two in step.

Rules
-----
* A message is one ZeroMQ frame: a msgpack array ``[version, op, *fields]``. ROUTER sockets add
  the peer's routing id in front; nothing else travels in the envelope.
* ``decode()`` validates the version, the op, the number of fields and the type and size of every
  field, and raises :class:`ProtocolError` otherwise. Nothing untyped gets past it: the result is
  always one of the frozen dataclasses below, with tuple items for batches.
* Payloads (tasks, results) are opaque ``bytes`` here. The dispatcher never unpickles them.
* Names: ``node_name`` is a Kubernetes node name (1-253 chars), ``client_id`` / ``agent_id`` are
  short ids chosen by their owner, ``task_id`` is an unsigned 64-bit int unique per client, and
  ``rank`` is the planned start time (lower runs first).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, NamedTuple

import msgpack

PROTOCOL_VERSION: Final = 1

MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
"""Largest frame decode() accepts; the sockets enforce the same limit with ZMQ_MAXMSGSIZE."""
MAX_BATCH: Final = 1_000_000
"""Most items in one batch message."""
MAX_NAME: Final = 253
"""Longest node name (a DNS subdomain, as Kubernetes node names are)."""
MAX_ID: Final = 128
"""Longest client, agent or dispatcher id."""
MAX_TEXT: Final = 4096
"""Longest free-text field (reasons, error messages)."""
MAX_SLOTS: Final = 65_536
MAX_U64: Final = 2**64 - 1


_NODE_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_node_name(name: str) -> bool:
    """Whether ``name`` is a valid Kubernetes node name (an RFC 1123 DNS subdomain)."""
    return len(name) <= MAX_NAME and _NODE_NAME.fullmatch(name) is not None


class ProtocolError(ValueError):
    """A frame that does not follow this contract. Raised by decode(); never fatal to a loop."""


class Op(IntEnum):
    """Operation codes. Values are part of the wire format: never renumber, only add."""

    # agent -> dispatcher
    REGISTER = 1
    CREDIT = 2
    RESULTS = 3
    DRAIN = 4
    BYE = 5
    STEAL_REPLY = 6
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
    # dispatcher -> client
    WELCOME = 40
    RESOLVED = 41
    NODES = 42
    STATUS = 43
    ERROR = 44
    NODE_CHANGED = 45


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
    BAD_REQUEST = 3


# --------------------------------------------------------------------------- batch items


NO_RETRY_ON_NODE_LOSS: Final = 1
"""TaskSpec flag: if the task's node dies while running it, resolve it NODE_LOST; never re-run it."""
SOFT_AFFINITY: Final = 2
"""TaskSpec flag: an idle node may take this task from its busy (live) node when that is faster."""
_KNOWN_FLAGS: Final = NO_RETRY_ON_NODE_LOSS | SOFT_AFFINITY


class TaskSpec(NamedTuple):
    """One task as a client submits it. ``node_name`` None means any node may run it."""

    task_id: int
    node_name: str | None
    rank: float
    payload: bytes
    flags: int = 0


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
    payload: bytes


class TaskResult(NamedTuple):
    """One finished task as an agent reports it; ``runtime_s`` is its wall time in the worker."""

    client_id: str
    task_id: int
    outcome: Outcome
    payload: bytes
    runtime_s: float = 0.0


class Resolution(NamedTuple):
    """One finished task as the dispatcher reports it to its client; ``node_name`` ran it."""

    task_id: int
    outcome: Outcome
    payload: bytes
    node_name: str
    runtime_s: float = 0.0


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


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Register:
    """Agent -> dispatcher: I am ``node_name`` (agent process ``agent_id``), with these slots."""

    node_name: str
    agent_id: str
    slots: int
    prefetch: int
    speed: float
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Credit:
    """Agent -> dispatcher: send me up to ``n`` more tasks."""

    n: int


@dataclass(frozen=True, slots=True)
class Results:
    """Agent -> dispatcher: these tasks finished."""

    results: tuple[TaskResult, ...]


@dataclass(frozen=True, slots=True)
class Drain:
    """Agent -> dispatcher: I am stopping; these unstarted tasks go back, running ones will finish."""

    returned: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class StealReply:
    """Agent -> dispatcher: of the tasks asked for in ``request_id``, these were not started and
    are dropped here (confirmed); the others are running or done and stay."""

    request_id: int
    confirmed: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    """Agent -> dispatcher: I am gone; nothing of mine is running any more."""


@dataclass(frozen=True, slots=True)
class Registered:
    """Dispatcher -> agent: welcome; heartbeat every ``heartbeat_interval_s``."""

    node_name: str
    incarnation: int
    dispatcher_id: str
    heartbeat_interval_s: float
    liveness: int


@dataclass(frozen=True, slots=True)
class Tasks:
    """Dispatcher -> agent: run these, in this order."""

    tasks: tuple[TaskAssignment, ...]


@dataclass(frozen=True, slots=True)
class CancelTasks:
    """Dispatcher -> agent: drop these if they have not started."""

    tasks: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class StealRequest:
    """Dispatcher -> agent: give back these tasks if they have not started (answer STEAL_REPLY)."""

    request_id: int
    tasks: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Reregister:
    """Dispatcher -> agent: I do not know you (I restarted, or declared you dead): register again."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Dispatcher -> agent: your registration is refused."""

    reason: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Any direction: I am alive. Any other message counts as a heartbeat too."""


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> dispatcher: I am ``client_id``. Sent first, and again after UNKNOWN_CLIENT."""

    client_id: str
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Submit:
    """Client -> dispatcher: queue these tasks. A task id already known is ignored (re-send safe)."""

    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Client -> dispatcher: cancel these of my tasks if they have not started."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Repin:
    """Client -> dispatcher: move these of my tasks, if still queued, to a new node and rank (a re-plan)."""

    tasks: tuple[Placement, ...]


@dataclass(frozen=True, slots=True)
class NodesQuery:
    """Client -> dispatcher: which nodes do you know? Answered by NODES with the same request id."""

    request_id: int


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Client -> dispatcher: how are things? Answered by STATUS with the same request id."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """Dispatcher -> client: hello; ``dispatcher_id`` changes when the dispatcher restarts."""

    dispatcher_id: str
    heartbeat_interval_s: float


@dataclass(frozen=True, slots=True)
class Resolved:
    """Dispatcher -> client: these of your tasks ended."""

    results: tuple[Resolution, ...]


@dataclass(frozen=True, slots=True)
class Nodes:
    """Dispatcher -> client: the nodes, in name order."""

    request_id: int
    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True)
class Status:
    """Dispatcher -> client: nodes plus dispatcher-wide counters."""

    request_id: int
    dispatcher_id: str
    nodes: tuple[NodeInfo, ...]
    pool_queued: int
    tasks_submitted: int
    tasks_resolved: int
    duplicates_dropped: int
    bad_frames: int


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """Dispatcher -> every client: a node registered, began draining, died or left."""

    node_name: str
    state: str
    incarnation: int
    speed: float


@dataclass(frozen=True, slots=True)
class Error:
    """Dispatcher -> client: your last message could not be served."""

    code: ErrorCode
    message: str


AgentMessage = Register | Credit | Results | Drain | Bye | Heartbeat | StealReply
"""What an agent may send."""
ClientMessage = Hello | Submit | Cancel | Repin | NodesQuery | StatusQuery | Heartbeat
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
)

# --------------------------------------------------------------------------- field checks


def _fail(what: str, value: object) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ProtocolError(f"bad {what}: {shown}")


def _int(value: Any, what: str, lo: int = 0, hi: int = MAX_U64) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _fail(what, value)
    return value


def _float(value: Any, what: str, positive: bool = False) -> float:
    if type(value) is int:
        value = float(value)
    if type(value) is not float or not math.isfinite(value) or (positive and value <= 0.0):
        raise _fail(what, value)
    return value


def _str(value: Any, what: str, max_len: int, min_len: int = 1) -> str:
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise _fail(what, value)
    return value


def _bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(what, value)
    return value


def _items(value: Any, what: str, width: int) -> list[list[Any]]:
    """A list of fixed-width lists (a batch)."""
    if type(value) is not list or len(value) > MAX_BATCH:
        raise _fail(what, value)
    for item in value:
        if type(item) is not list or len(item) != width:
            raise _fail(f"{what} item", item)
    return value


def _runtime(value: Any) -> float:
    runtime = _float(value, "runtime_s")
    if runtime < 0.0:
        raise _fail("runtime_s", value)
    return runtime


def _outcome(value: Any) -> Outcome:
    try:
        return Outcome(_int(value, "outcome", 0, 255))
    except ValueError as exc:
        raise _fail("outcome", value) from exc


def _nodes(value: Any) -> tuple[NodeInfo, ...]:
    return tuple(
        NodeInfo(
            _str(n, "node_name", MAX_NAME),
            _str(s, "node state", MAX_ID),
            _float(sp, "speed"),
            _int(sl, "slots"),
            _int(inc, "incarnation"),
            _int(q, "queued"),
            _int(f, "in_flight"),
            _int(d, "done"),
        )
        for n, s, sp, sl, inc, q, f, d in _items(value, "nodes", 8)
    )


# --------------------------------------------------------------------------- codecs per op
# Each entry: (field count, fields -> message). encode() walks dataclass fields in order, so a
# message's dataclass field order IS its wire order.


def _register(f: list[Any]) -> Register:
    return Register(
        node_name=_str(f[0], "node_name", MAX_NAME),
        agent_id=_str(f[1], "agent_id", MAX_ID),
        slots=_int(f[2], "slots", 1, MAX_SLOTS),
        prefetch=_int(f[3], "prefetch", 0, MAX_SLOTS),
        speed=_float(f[4], "speed", positive=True),
        protocol_version=_int(f[5], "protocol_version"),
    )


def _results(f: list[Any]) -> Results:
    return Results(
        tuple(
            TaskResult(_str(c, "client_id", MAX_ID), _int(t, "task_id"), _outcome(o), _bytes(p, "payload"), _runtime(r))
            for c, t, o, p, r in _items(f[0], "results", 5)
        )
    )


def _refs(value: Any, what: str) -> tuple[TaskRef, ...]:
    return tuple(TaskRef(_str(c, "client_id", MAX_ID), _int(t, "task_id")) for c, t in _items(value, what, 2))


def _tasks(f: list[Any]) -> Tasks:
    return Tasks(
        tuple(
            TaskAssignment(_str(c, "client_id", MAX_ID), _int(t, "task_id"), _float(r, "rank"), _bytes(p, "payload"))
            for c, t, r, p in _items(f[0], "tasks", 4)
        )
    )


def _submit(f: list[Any]) -> Submit:
    return Submit(
        tuple(
            TaskSpec(
                _int(t, "task_id"),
                None if n is None else _str(n, "node_name", MAX_NAME),
                _float(r, "rank"),
                _bytes(p, "payload"),
                _flags(g),
            )
            for t, n, r, p, g in _items(f[0], "tasks", 5)
        )
    )


def _flags(value: Any) -> int:
    flags = _int(value, "flags", 0, 0xFFFF)
    if flags & ~_KNOWN_FLAGS:
        raise _fail("flags", value)
    return flags


def _repin(f: list[Any]) -> Repin:
    return Repin(
        tuple(
            Placement(_int(t, "task_id"), None if n is None else _str(n, "node_name", MAX_NAME), _float(r, "rank"))
            for t, n, r in _items(f[0], "tasks", 3)
        )
    )


def _resolved(f: list[Any]) -> Resolved:
    return Resolved(
        tuple(
            Resolution(
                _int(t, "task_id"), _outcome(o), _bytes(p, "payload"), _str(n, "node_name", MAX_NAME, 0), _runtime(r)
            )
            for t, o, p, n, r in _items(f[0], "results", 5)
        )
    )


def _cancel(f: list[Any]) -> Cancel:
    ids = f[0]
    if type(ids) is not list or len(ids) > MAX_BATCH:
        raise _fail("task_ids", ids)
    return Cancel(tuple(_int(t, "task_id") for t in ids))


def _status(f: list[Any]) -> Status:
    return Status(
        request_id=_int(f[0], "request_id"),
        dispatcher_id=_str(f[1], "dispatcher_id", MAX_ID),
        nodes=_nodes(f[2]),
        pool_queued=_int(f[3], "pool_queued"),
        tasks_submitted=_int(f[4], "tasks_submitted"),
        tasks_resolved=_int(f[5], "tasks_resolved"),
        duplicates_dropped=_int(f[6], "duplicates_dropped"),
        bad_frames=_int(f[7], "bad_frames"),
    )


def _error(f: list[Any]) -> Error:
    try:
        code = ErrorCode(_int(f[0], "error code", 0, 255))
    except ValueError as exc:
        raise _fail("error code", f[0]) from exc
    return Error(code, _str(f[1], "message", MAX_TEXT, 0))


_DECODERS: Final[dict[Op, tuple[int, Any]]] = {
    Op.REGISTER: (6, _register),
    Op.CREDIT: (1, lambda f: Credit(_int(f[0], "credit", 1, MAX_SLOTS * 2))),
    Op.RESULTS: (1, _results),
    Op.DRAIN: (1, lambda f: Drain(_refs(f[0], "returned"))),
    Op.BYE: (0, lambda _: Bye()),
    Op.REGISTERED: (
        5,
        lambda f: Registered(
            _str(f[0], "node_name", MAX_NAME),
            _int(f[1], "incarnation"),
            _str(f[2], "dispatcher_id", MAX_ID),
            _float(f[3], "heartbeat_interval_s", positive=True),
            _int(f[4], "liveness", 1, 1000),
        ),
    ),
    Op.TASKS: (1, _tasks),
    Op.CANCEL_TASKS: (1, lambda f: CancelTasks(_refs(f[0], "tasks"))),
    Op.REREGISTER: (0, lambda _: Reregister()),
    Op.REFUSED: (1, lambda f: Refused(_str(f[0], "reason", MAX_TEXT, 0))),
    Op.HEARTBEAT: (0, lambda _: Heartbeat()),
    Op.HELLO: (2, lambda f: Hello(_str(f[0], "client_id", MAX_ID), _int(f[1], "protocol_version"))),
    Op.SUBMIT: (1, _submit),
    Op.CANCEL: (1, _cancel),
    Op.NODES_QUERY: (1, lambda f: NodesQuery(_int(f[0], "request_id"))),
    Op.STATUS_QUERY: (1, lambda f: StatusQuery(_int(f[0], "request_id"))),
    Op.WELCOME: (
        2,
        lambda f: Welcome(_str(f[0], "dispatcher_id", MAX_ID), _float(f[1], "heartbeat_interval_s", positive=True)),
    ),
    Op.RESOLVED: (1, _resolved),
    Op.NODES: (2, lambda f: Nodes(_int(f[0], "request_id"), _nodes(f[1]))),
    Op.STATUS: (8, _status),
    Op.ERROR: (2, _error),
    Op.REPIN: (1, _repin),
    Op.STEAL_REQUEST: (2, lambda f: StealRequest(_int(f[0], "request_id"), _refs(f[1], "tasks"))),
    Op.STEAL_REPLY: (2, lambda f: StealReply(_int(f[0], "request_id"), _refs(f[1], "confirmed"))),
    Op.NODE_CHANGED: (
        4,
        lambda f: NodeChanged(
            _str(f[0], "node_name", MAX_NAME),
            _str(f[1], "node state", MAX_ID),
            _int(f[2], "incarnation"),
            _float(f[3], "speed", positive=True),
        ),
    ),
}

_OPS: Final[dict[type[Any], Op]] = {
    Register: Op.REGISTER,
    Credit: Op.CREDIT,
    Results: Op.RESULTS,
    Drain: Op.DRAIN,
    Bye: Op.BYE,
    Registered: Op.REGISTERED,
    Tasks: Op.TASKS,
    CancelTasks: Op.CANCEL_TASKS,
    Reregister: Op.REREGISTER,
    Refused: Op.REFUSED,
    Heartbeat: Op.HEARTBEAT,
    Hello: Op.HELLO,
    Submit: Op.SUBMIT,
    Cancel: Op.CANCEL,
    NodesQuery: Op.NODES_QUERY,
    StatusQuery: Op.STATUS_QUERY,
    Welcome: Op.WELCOME,
    Resolved: Op.RESOLVED,
    Nodes: Op.NODES,
    Status: Op.STATUS,
    Error: Op.ERROR,
    Repin: Op.REPIN,
    StealRequest: Op.STEAL_REQUEST,
    StealReply: Op.STEAL_REPLY,
    NodeChanged: Op.NODE_CHANGED,
}


def op_of(message: Message) -> Op:
    """The op code of a message."""
    return _OPS[type(message)]


def encode(message: Message) -> bytes:
    """One frame for ``message``. Batches are sequences of NamedTuples (packed as arrays)."""
    fields = [getattr(message, name) for name in message.__slots__]
    frame: bytes = msgpack.packb([PROTOCOL_VERSION, _OPS[type(message)], *fields], use_bin_type=True)
    return frame


def decode(frame: bytes | memoryview) -> Message:
    """The message in ``frame``; raises :class:`ProtocolError` for anything that is not one."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        parts = msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError, ...
        raise ProtocolError(f"undecodable frame: {exc.__class__.__name__}: {exc}") from exc
    if type(parts) is not list or len(parts) < 2:
        raise _fail("frame header", parts)
    version, raw_op, fields = parts[0], parts[1], parts[2:]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if type(raw_op) is not int:
        raise _fail("op", raw_op)
    try:
        op = Op(raw_op)
    except ValueError as exc:
        raise _fail("op", raw_op) from exc
    arity, build = _DECODERS[op]
    if len(fields) != arity:
        raise ProtocolError(f"{op.name} takes {arity} fields, got {len(fields)}")
    try:
        message: Message = build(fields)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. unpacking a batch item of the wrong shape
        raise ProtocolError(f"malformed {op.name}: {exc}") from exc
    return message
