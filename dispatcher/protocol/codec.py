"""encode() and decode(): frames <-> messages, validating every field on the way in.

One table (``_DECODERS``) says, per message class, its field count and how to build it from
the wire; the op code is the class's own ``op``. Older versions differ only where
``_CHANGED_IN`` says, in both directions: a frame in version N-1 decodes to the same message,
and a message encodes for a peer of version N-1 without the fields that version lacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final

import msgpack

from dispatcher.protocol import messages as m
from dispatcher.protocol.messages import (
    MAX_ID,
    MAX_MONITORING_BYTES,
    MAX_NAME,
    MAX_SLOTS,
    MAX_TEXT,
    MAX_U64,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    AgentStatus,
    Bye,
    Cancel,
    CancelTasks,
    Credit,
    Drain,
    Error,
    ErrorCode,
    Fetch,
    Heartbeat,
    Hello,
    Message,
    Monitor,
    Monitored,
    MonitoredItem,
    MonitoringItem,
    NodeChanged,
    NodeInfo,
    Nodes,
    NodesQuery,
    Op,
    Outcome,
    Payload,
    PayloadItem,
    Payloads,
    Placement,
    ProtocolError,
    Refused,
    Register,
    Registered,
    Repin,
    Reregister,
    Resolution,
    Resolved,
    Results,
    Status,
    StatusQuery,
    StealReply,
    StealRequest,
    Submit,
    TaskAssignment,
    TaskRef,
    TaskResult,
    Tasks,
    TaskSpec,
    VersionError,
    Welcome,
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


def _payload(value: Any, what: str = "payload") -> Payload:
    """A payload: bytes from the header, or (version 5) the buffer of a frame of its own, which
    stays a zero-copy view of the frame it came in."""
    if type(value) is not bytes and type(value) is not memoryview:
        raise _fail(what, value)
    return value


def _items(value: Any, what: str, width: int) -> list[list[Any]]:
    """A list of fixed-width lists (a batch)."""
    if type(value) is not list or len(value) > m.MAX_BATCH:
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
    """NodeInfo rows."""
    return tuple(
        NodeInfo(
            _str(row[0], "node_name", MAX_NAME),
            _str(row[1], "node state", MAX_ID),
            _float(row[2], "speed"),
            _int(row[3], "slots"),
            _int(row[4], "incarnation"),
            _int(row[5], "queued"),
            _int(row[6], "in_flight"),
            _int(row[7], "done"),
            _int(row[8], "worker_respawns"),
            _str(row[9], "node reason", MAX_ID, 0),
            _versions(row[10]),
            _str(row[11], "zone", MAX_NAME, 0),
        )
        for row in _items(value, "nodes", len(NodeInfo._fields))
    )


def _versions(value: Any) -> str:
    return _str(value, "versions", MAX_TEXT, 0)


# --------------------------------------------------------------------------- codecs per op
# Each entry: (field count, fields -> message). encode() walks dataclass fields in order, so a
# message's dataclass field order IS its wire order.


def _register(f: list[Any]) -> Register:
    """``speed`` 0: the agent gives none."""
    speed = _float(f[4], "speed")
    if speed < 0.0:
        raise _fail("speed", speed)
    return Register(
        node_name=_str(f[0], "node_name", MAX_NAME),
        agent_id=_str(f[1], "agent_id", MAX_ID),
        slots=_int(f[2], "slots", 1, MAX_SLOTS),
        prefetch=_int(f[3], "prefetch", 0, MAX_SLOTS),
        speed=speed,
        protocol_version=_int(f[5], "protocol_version"),
        running=_refs(f[6], "running"),
        versions=_versions(f[7]),
    )


def _results(f: list[Any]) -> Results:
    return Results(
        tuple(
            TaskResult(_str(c, "client_id", MAX_ID), _int(t, "task_id"), _outcome(o), _payload(p), _runtime(r))
            for c, t, o, p, r in _items(f[0], "results", 5)
        ),
        _int(f[1], "credit", 0, MAX_SLOTS * 2),
    )


def _refs(value: Any, what: str) -> tuple[TaskRef, ...]:
    return tuple(TaskRef(_str(c, "client_id", MAX_ID), _int(t, "task_id")) for c, t in _items(value, what, 2))


def _tasks(f: list[Any]) -> Tasks:
    return Tasks(
        tuple(
            TaskAssignment(_str(c, "client_id", MAX_ID), _int(t, "task_id"), _float(r, "rank"), _payload(p))
            for c, t, r, p in _items(f[0], "tasks", 4)
        )
    )


def _submit(f: list[Any], known: int = m.KNOWN_FLAGS, width: int = 6) -> Submit:
    tasks = []
    for item in _items(f[0], "tasks", width):
        if width > 5:
            t, n, r, payload, g, size = item
            size = _int(size, "size", 0, m.MAX_FRAME_BYTES)
        else:
            t, n, r, payload, g = item
            size = 0
        flags = _flags(g, known)
        if flags & m.HELD:
            if payload != b"":
                raise _fail("payload of a HELD task (must be empty)", len(payload) if type(payload) is bytes else 0)
        elif size:
            raise _fail("size of a task that is not HELD (must be 0)", size)
        tasks.append(
            TaskSpec(
                _int(t, "task_id"),
                None if n is None else _str(n, "node_name", MAX_NAME),
                _float(r, "rank"),
                _payload(payload),
                flags,
                size,
            )
        )
    return Submit(tuple(tasks))


def _flags(value: Any, known: int = m.KNOWN_FLAGS) -> int:
    flags = _int(value, "flags", 0, 0xFFFF)
    if flags & ~known:
        raise _fail("flags", value)
    return flags


def _ids(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not list or len(value) > m.MAX_BATCH:
        raise _fail(what, value)
    return tuple(_int(t, "task_id") for t in value)


def _payloads(f: list[Any]) -> Payloads:
    items = tuple(PayloadItem(_int(t, "task_id"), _payload(p)) for t, p in _items(f[0], "payloads", 2))
    return Payloads(items, _ids(f[1], "missing"))


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
            Resolution(_int(t, "task_id"), _outcome(o), _payload(p), _str(n, "node_name", MAX_NAME, 0), _runtime(r))
            for t, o, p, n, r in _items(f[0], "results", 5)
        )
    )


def _monitoring_payload(value: Any) -> bytes:
    payload = _bytes(value, "monitoring payload")
    if len(payload) > MAX_MONITORING_BYTES:
        raise _fail("monitoring payload size", len(payload))
    return payload


def _monitor(f: list[Any]) -> Monitor:
    return Monitor(
        tuple(
            MonitoringItem(_str(c, "client_id", MAX_ID), _int(t, "task_id"), _monitoring_payload(p))
            for c, t, p in _items(f[0], "monitoring items", 3)
        )
    )


def _monitored(f: list[Any]) -> Monitored:
    return Monitored(
        tuple(MonitoredItem(_int(t, "task_id"), _monitoring_payload(p)) for t, p in _items(f[0], "monitoring items", 2))
    )


def _cancel(f: list[Any]) -> Cancel:
    return Cancel(_ids(f[0], "task_ids"))


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
        tasks_stolen=_int(f[8], "tasks_stolen"),
    )


def _error(f: list[Any]) -> Error:
    try:
        code = ErrorCode(_int(f[0], "error code", 0, 255))
    except ValueError as exc:
        raise _fail("error code", f[0]) from exc
    return Error(code, _str(f[1], "message", MAX_TEXT, 0))


_DECODERS: Final[dict[type[Any], tuple[int, Any]]] = {
    AgentStatus: (2, lambda f: AgentStatus(_int(f[0], "worker_respawns"), _int(f[1], "busy_workers", 0, MAX_SLOTS))),
    Register: (8, _register),
    Monitor: (1, _monitor),
    Monitored: (1, _monitored),
    Credit: (1, lambda f: Credit(_int(f[0], "credit", 1, MAX_SLOTS * 2))),
    Results: (2, _results),
    Drain: (1, lambda f: Drain(_refs(f[0], "returned"))),
    Bye: (0, lambda _: Bye()),
    Registered: (
        5,
        lambda f: Registered(
            _str(f[0], "node_name", MAX_NAME),
            _int(f[1], "incarnation"),
            _str(f[2], "dispatcher_id", MAX_ID),
            _float(f[3], "heartbeat_interval_s", positive=True),
            _int(f[4], "liveness", 1, 1000),
        ),
    ),
    Tasks: (1, _tasks),
    CancelTasks: (1, lambda f: CancelTasks(_refs(f[0], "tasks"))),
    Reregister: (0, lambda _: Reregister()),
    Refused: (1, lambda f: Refused(_str(f[0], "reason", MAX_TEXT, 0))),
    Heartbeat: (0, lambda _: Heartbeat()),
    Hello: (3, lambda f: Hello(_str(f[0], "client_id", MAX_ID), _int(f[1], "protocol_version"), _versions(f[2]))),
    Submit: (1, _submit),
    Cancel: (1, _cancel),
    NodesQuery: (1, lambda f: NodesQuery(_int(f[0], "request_id"))),
    StatusQuery: (1, lambda f: StatusQuery(_int(f[0], "request_id"))),
    Welcome: (
        3,
        lambda f: Welcome(
            _str(f[0], "dispatcher_id", MAX_ID),
            _float(f[1], "heartbeat_interval_s", positive=True),
            _int(f[2], "payload_window"),
        ),
    ),
    Fetch: (1, lambda f: Fetch(_ids(f[0], "task_ids"))),
    Payloads: (2, _payloads),
    Resolved: (1, _resolved),
    Nodes: (2, lambda f: Nodes(_int(f[0], "request_id"), _nodes(f[1]))),
    Status: (9, _status),
    Error: (2, _error),
    Repin: (1, _repin),
    StealRequest: (2, lambda f: StealRequest(_int(f[0], "request_id"), _refs(f[1], "tasks"))),
    StealReply: (2, lambda f: StealReply(_int(f[0], "request_id"), _refs(f[1], "confirmed"))),
    NodeChanged: (
        4,
        lambda f: NodeChanged(
            _str(f[0], "node_name", MAX_NAME),
            _str(f[1], "node state", MAX_ID),
            _int(f[2], "incarnation"),
            _float(f[3], "speed", positive=True),
        ),
    ),
}
"""Message class -> (field count, fields -> message), for the current version."""

_BY_OP: Final[dict[Op, tuple[type[Any], int, Any]]] = {cls.op: (cls, n, build) for cls, (n, build) in _DECODERS.items()}
_V4_FLAGS: Final = m.KNOWN_FLAGS & ~m.HELD

_CHANGED_IN: Final[dict[int, dict[type[Any], tuple[int, Any] | None]]] = {
    PROTOCOL_VERSION - 1: {
        Welcome: (
            2,
            lambda f: Welcome(_str(f[0], "dispatcher_id", MAX_ID), _float(f[1], "heartbeat_interval_s", positive=True)),
        ),
        Submit: (1, lambda f: _submit(f, _V4_FLAGS, 5)),
        Fetch: None,
        Payloads: None,
    },
}
"""Per older supported version: the messages that differ from the current version there (None:
the message does not exist in that version)."""


def _older_fields(message: Message, fields: list[Any], version: int) -> list[Any]:
    """``fields`` of ``message`` as a peer of ``version`` expects them."""
    changed = _CHANGED_IN[version]
    if type(message) not in changed:
        return fields
    if changed[type(message)] is None:
        raise ValueError(f"{message.op.name} does not exist in protocol version {version}")
    if isinstance(message, Submit):
        if any(spec.flags & m.HELD for spec in message.tasks):
            raise ValueError(f"HELD does not exist in protocol version {version}")
        return [[spec[:5] for spec in message.tasks]]
    assert isinstance(message, Welcome)
    return fields[:2]


def op_of(message: Message) -> Op:
    """The op code of a message."""
    return message.op


def encode(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame for ``message``, for a peer that speaks ``version`` (one of SUPPORTED_VERSIONS).
    Batches are sequences of NamedTuples (packed as arrays)."""
    fields = [getattr(message, name) for name in message.__slots__]
    if version != PROTOCOL_VERSION:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"cannot encode for protocol version {version}")
        fields = _older_fields(message, fields, version)
    frame: bytes = msgpack.packb([version, message.op, *fields], use_bin_type=True)
    return frame


_FRAMED: Final[dict[Op, int]] = {Op.SUBMIT: 3, Op.TASKS: 3, Op.RESULTS: 3, Op.RESOLVED: 2, Op.PAYLOADS: 1}
"""The messages whose first field is a batch of items that carry a payload, and where in each
item it is: since version 5, such a payload may travel in a frame of its own."""
FRAMES_SINCE: Final = 5


def encode_parts(message: Message, version: int = PROTOCOL_VERSION) -> list[Payload]:
    """``message`` as the frames of one ZeroMQ message, for ``runtime.sockets.send_parts``: the
    header, then (version 5) each payload over INLINE_MAX in a frame of its own, in order, its
    place in the header holding its length. The payloads are not copied here, and ZeroMQ sends
    them from where they are; a message without such a payload is the one frame :func:`encode`
    gives."""
    at = _FRAMED.get(message.op)
    if at is None or version < FRAMES_SINCE:
        return [encode(message, version)]
    slots: tuple[str, ...] = message.__slots__
    batch: tuple[Any, ...] = getattr(message, slots[0])
    if not batch or max(map(len, map(itemgetter(at), batch))) <= m.INLINE_MAX:  # in C: no Python loop per item
        return [encode(message, version)]
    fields = [getattr(message, name) for name in message.__slots__]
    items: list[Any] | None = None
    frames: list[Payload] = []
    for i, item in enumerate(batch):
        payload = item[at]
        if len(payload) > m.INLINE_MAX:
            if items is None:
                items = list(batch[:i])
            items.append((*item[:at], len(payload), *item[at + 1 :]))
            frames.append(payload)
        elif items is not None:
            items.append(item)
    if items is None:
        return [encode(message, version)]
    fields[0] = items
    header: bytes = msgpack.packb([version, message.op, *fields], use_bin_type=True)
    return [header, *frames]


def _take_frames(op: Op, batch: Any, at: int, frames: Sequence[Payload]) -> None:
    """Put each payload frame where the header holds its length (in place)."""
    if type(batch) is not list:
        raise _fail(f"{op.name} batch", batch)
    left = iter(frames)
    for item in batch:
        if type(item) is list and len(item) > at and type(item[at]) is int:
            frame = next(left, None)
            if frame is None:
                raise ProtocolError(f"{op.name} names more payload frames than the {len(frames)} it has")
            if len(frame) != item[at]:
                raise ProtocolError(f"{op.name} payload frame of {len(frame)} bytes, its header says {item[at]}")
            if len(frame) <= m.INLINE_MAX:
                raise ProtocolError(f"{op.name} payload frame of {len(frame)} bytes (up to {m.INLINE_MAX}: inline)")
            item[at] = frame
    if next(left, None) is not None:
        raise ProtocolError(f"{op.name} has payload frames its header does not name")


def decode(frames: Payload | Sequence[Payload]) -> Message:
    """The message in ``frames`` (one frame, or a message's frames); raises :class:`ProtocolError`
    for anything that is not one."""
    return decode_versioned(frames)[1]


def decode_versioned(frames: Payload | Sequence[Payload]) -> tuple[int, Message]:
    """The protocol version ``frames`` were written in, and their message: one frame, or the
    frames of one ZeroMQ message (a header, and version 5's payload frames, kept as they are).
    A frame in a version not in SUPPORTED_VERSIONS raises :class:`VersionError` (a
    ProtocolError), so the receiver can say which versions it speaks."""
    rest: Sequence[Payload] = ()
    if type(frames) is bytes or type(frames) is memoryview:
        frame = frames
    else:
        assert not isinstance(frames, bytes | memoryview)
        if not frames or len(frames) > m.MAX_FRAMES:
            raise ProtocolError(f"a message of {len(frames)} frames (1 to {m.MAX_FRAMES})")
        frame, rest = frames[0], frames[1:]
        total = sum(map(len, frames)) if rest else 0
        if total > m.MAX_MESSAGE_BYTES:
            raise ProtocolError(f"a message of {total} bytes exceeds {m.MAX_MESSAGE_BYTES}")
    if len(frame) > m.MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {m.MAX_FRAME_BYTES}")
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
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise VersionError(version)
    if type(raw_op) is not int:
        raise _fail("op", raw_op)
    try:
        cls, arity, build = _BY_OP[Op(raw_op)]
    except (ValueError, KeyError) as exc:
        raise _fail("op", raw_op) from exc
    op = cls.op
    if version != PROTOCOL_VERSION and cls in _CHANGED_IN[version]:
        older = _CHANGED_IN[version][cls]
        if older is None:
            raise ProtocolError(f"{op.name} does not exist in protocol version {version}")
        arity, build = older
    if len(fields) != arity:
        raise ProtocolError(f"{op.name} takes {arity} fields, got {len(fields)}")
    if rest:
        at = _FRAMED.get(op) if version >= FRAMES_SINCE else None
        if at is None:
            raise ProtocolError(f"{op.name} in version {version} takes no frames after its header, got {len(rest)}")
        _take_frames(op, fields[0], at, rest)
    try:
        message: Message = build(fields)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. unpacking a batch item of the wrong shape
        raise ProtocolError(f"malformed {op.name}: {exc}") from exc
    return version, message
