"""The wire contract: every message round-trips; every malformed frame raises ProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from dispatcher import protocol as p
from dispatcher.protocol import messages

pytestmark = pytest.mark.unit

NODE = p.NodeInfo("node-a", "draining", 2.0, 4, 1, 3, 2, 10, 1, "cordoned", "python=3.13.5 parsl=2026.10.26", "eu-1a")
EXAMPLES: list[p.Message] = [
    p.Register("node-a", "agent-1", 4, 2, 1.5),
    p.Register("node-a", "agent-1", 4, 2, 1.5, running=(p.TaskRef("c1", 3),)),
    p.Register("node-a", "agent-1", 4, 2, 0.0, versions="python=3.13.5 parsl=2026.10.26"),
    p.Credit(3),
    p.Results(
        (p.TaskResult("c1", 7, p.Outcome.OK, b"\x80value", 0.5), p.TaskResult("c1", 8, p.Outcome.APP_ERROR, b"")),
        credit=2,
    ),
    p.Results(()),
    p.Drain((p.TaskRef("c1", 9),)),
    p.Bye(),
    p.Registered("node-a", 2, "d1", 0.5, 3),
    p.Tasks((p.TaskAssignment("c1", 7, 0.25, b"payload"),)),
    p.CancelTasks((p.TaskRef("c1", 7),)),
    p.Reregister(),
    p.StealRequest(9, (p.TaskRef("c1", 7),)),
    p.StealReply(9, ()),
    p.Refused("no"),
    p.Heartbeat(),
    p.Hello("c1"),
    p.Hello("c1", versions="python=3.13.5"),
    p.Submit((p.TaskSpec(1, "node-a", 1.0, b"x"), p.TaskSpec(2, None, -3.5, b"", p.NO_RETRY_ON_NODE_LOSS))),
    p.Repin((p.Placement(1, "node-b", 2.0), p.Placement(2, None, 0.0))),
    p.NodeChanged("node-a", "dead", 3, 2.0),
    p.Cancel((1, 2, 2**64 - 1)),
    p.NodesQuery(4),
    p.StatusQuery(5),
    p.Welcome("d1", 0.5),
    p.Welcome("d1", 0.5, 64 * 1024 * 1024),
    p.Submit((p.TaskSpec(3, "node-a", 0.0, b"", p.HELD | p.SOFT_AFFINITY, 1000),)),
    p.Fetch((3, 4)),
    p.Payloads((p.PayloadItem(3, b"\x80fn"), p.PayloadItem(4, b"")), missing=(5,)),
    p.Payloads(()),
    p.Resolved((p.Resolution(1, p.Outcome.WORKER_LOST, b"died", "node-a"), p.Resolution(2, p.Outcome.OK, b"", ""))),
    p.Nodes(4, (NODE,)),
    p.Status(5, "d1", (NODE,), 1, 2, 3, 4, 5, 6),
    p.AgentStatus(2, 3),
    p.Monitor((p.MonitoringItem("c1", 7, b"\x80msg"), p.MonitoringItem("c2", 1, b""))),
    p.Monitored((p.MonitoredItem(7, b"\x80msg"),)),
    p.Error(p.ErrorCode.UNKNOWN_CLIENT, "say hello"),
]


def test_every_op_has_an_example() -> None:
    assert {p.op_of(m) for m in EXAMPLES} == set(p.Op)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: p.Message) -> None:
    decoded = p.decode(p.encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_decoded_batches_are_typed_tuples() -> None:
    results = next(m for m in EXAMPLES if isinstance(m, p.Results))
    decoded = p.decode(p.encode(results))
    assert isinstance(decoded, p.Results)
    assert isinstance(decoded.results, tuple)
    assert isinstance(decoded.results[0], p.TaskResult)
    assert decoded.results[0].outcome is p.Outcome.OK


PREVIOUS = p.PROTOCOL_VERSION - 1


def raw(*parts: object) -> bytes:
    return msgpack.packb(list(parts), use_bin_type=True)


BAD_FRAMES = {
    "empty": b"",
    "truncated": p.encode(p.Submit((p.TaskSpec(1, "node-a", 1.0, b"x"),)))[:-3],
    "not msgpack": b"\xc1\xc1\xc1",
    "trailing bytes": p.encode(p.Heartbeat()) + b"\x00",
    "not an array": msgpack.packb({"op": 1}),
    "header only": raw(p.PROTOCOL_VERSION),
    "wrong version": raw(99, p.Op.HEARTBEAT),
    "unknown op": raw(p.PROTOCOL_VERSION, 250),
    "op as string": raw(p.PROTOCOL_VERSION, "HEARTBEAT"),
    "too many fields": raw(p.PROTOCOL_VERSION, p.Op.HEARTBEAT, 1),
    "too few fields": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "node-a"),
    "slots as string": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "node-a", "a", "4", 0, 1.0, 1, []),
    "zero slots": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "node-a", "a", 0, 0, 1.0, 1, []),
    "negative speed": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "node-a", "a", 1, 0, -1.0, 1, []),
    "nan speed": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "node-a", "a", 1, 0, float("nan"), 1, []),
    "bool as int": raw(p.PROTOCOL_VERSION, p.Op.CREDIT, True),  # noqa: FBT003
    "zero credit": raw(p.PROTOCOL_VERSION, p.Op.CREDIT, 0),
    "node name too long": raw(p.PROTOCOL_VERSION, p.Op.REGISTER, "n" * 254, "a", 1, 0, 1.0, 1, []),
    "payload as str": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, "text", 0, 0]]),
    "unknown flag": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b"", 8, 0]]),
    "negative task id": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[-1, None, 0.0, b"", 0, 0]]),
    "float task id": raw(p.PROTOCOL_VERSION, p.Op.CANCEL, [1.0]),
    "short batch item": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b""]]),
    "batch not a list": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, b"tasks"),
    "item not a list": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [b"x"], 0),
    "unknown outcome": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [["c", 1, 99, b"", 0.0]], 0),
    "negative runtime": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [["c", 1, 0, b"", -1.0]], 0),
    "result without runtime": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [["c", 1, 0, b""]], 0),
    "results without credit (version 1's shape)": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [["c", 1, 0, b"", 0.0]]),
    "negative credit in results": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [], -1),
    "credit in results as float": raw(p.PROTOCOL_VERSION, p.Op.RESULTS, [], 1.0),
    "unknown error code": raw(p.PROTOCOL_VERSION, p.Op.ERROR, 99, "x"),
    "map inside": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [{"a": 1}]),
    "repin to a number": raw(p.PROTOCOL_VERSION, p.Op.REPIN, [[1, 5, 0.0]]),
    "ext type": msgpack.packb([p.PROTOCOL_VERSION, p.Op.CREDIT, msgpack.ExtType(1, b"x")]),
    "deep nesting": b"\x91" * 100_000,
    "monitoring payload as str": raw(p.PROTOCOL_VERSION, p.Op.MONITOR, [["c", 1, "text"]]),
    "monitoring payload too large": raw(p.PROTOCOL_VERSION, p.Op.MONITORED, [[1, b"x" * (p.MAX_MONITORING_BYTES + 1)]]),
    "monitoring item without task": raw(p.PROTOCOL_VERSION, p.Op.MONITOR, [["c", b""]]),
    "fetch in version 4": raw(p.PROTOCOL_VERSION - 1, p.Op.FETCH, [1]),
    "payloads in version 4": raw(p.PROTOCOL_VERSION - 1, p.Op.PAYLOADS, [[1, b"x"]], []),
    "held in version 4": raw(p.PROTOCOL_VERSION - 1, p.Op.SUBMIT, [[1, None, 0.0, b"", p.HELD]]),
    "held with a payload": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b"x", p.HELD, 1]]),
    "a size without held": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b"x", 0, 1]]),
    "negative size": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b"", p.HELD, -1]]),
    "task without its size": raw(p.PROTOCOL_VERSION, p.Op.SUBMIT, [[1, None, 0.0, b"x", 0]]),
    "payloads without missing": raw(p.PROTOCOL_VERSION, p.Op.PAYLOADS, [[1, b"x"]]),
    "fetched payload as str": raw(p.PROTOCOL_VERSION, p.Op.PAYLOADS, [[1, "x"]], []),
    "welcome without window": raw(p.PROTOCOL_VERSION, p.Op.WELCOME, "d1", 0.5),
    "negative window": raw(p.PROTOCOL_VERSION, p.Op.WELCOME, "d1", 0.5, -1),
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_malformed_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(frame)


def test_oversized_frame_is_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "MAX_FRAME_BYTES", 1024)
    with pytest.raises(p.ProtocolError, match="exceeds 1024"):
        p.decode(p.encode(p.Submit((p.TaskSpec(1, None, 0.0, b"x" * 2048),))))


def test_oversized_batch_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "MAX_BATCH", 10)
    with pytest.raises(p.ProtocolError):
        p.decode(p.encode(p.Cancel(tuple(range(11)))))


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("node-a", True),
        ("ip-10-0-0-1.ec2.internal", True),
        ("local-0", True),
        ("Node-A", False),
        ("-a", False),
        ("a-", False),
        ("a_b", False),
        ("", False),
        ("a" * 253, True),
        ("a" * 254, False),
    ],
)
def test_node_names_follow_kubernetes_rules(name: str, valid: bool) -> None:
    assert p.is_node_name(name) is valid


def test_coalesce_merges_runs_of_batches_per_peer_and_keeps_order() -> None:
    t = [p.TaskAssignment("c", i, float(i), b"x") for i in range(4)]
    r = [p.Resolution(i, p.Outcome.OK, b"", "n", 0.0) for i in range(3)]
    messages: list[p.Message] = [
        p.Tasks((t[0],)),
        p.Tasks((t[1], t[2])),
        p.CancelTasks((p.TaskRef("c", 9),)),
        p.Tasks((t[3],)),
        p.Resolved((r[0],)),
        p.Resolved((r[1], r[2])),
    ]
    assert p.coalesce(messages) == [
        p.Tasks((t[0], t[1], t[2])),
        p.CancelTasks((p.TaskRef("c", 9),)),
        p.Tasks((t[3],)),
        p.Resolved(tuple(r)),
    ]
    big = b"x" * (p.COALESCE_BYTES // 2 + 1)
    heavy = [p.Tasks((p.TaskAssignment("c", i, 0.0, big),)) for i in range(3)]
    assert [len(m.tasks) for m in p.coalesce(list(heavy))] == [1, 1, 1]  # type: ignore[union-attr]


def test_coalesce_splits_one_batch_past_its_limits() -> None:
    third = b"x" * (p.COALESCE_BYTES // 3)
    tasks = p.Tasks(tuple(p.TaskAssignment("c", i, 0.0, third) for i in range(5)))
    alone = p.Tasks((p.TaskAssignment("c", 9, 0.0, b"x" * (p.COALESCE_BYTES + 1)),))
    split = p.coalesce([tasks, alone])
    assert [[t.task_id for t in m.tasks] for m in split] == [[0, 1, 2], [3, 4], [9]]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- payload frames (version 5)

BIG = b"\x80" + b"p" * p.INLINE_MAX
FRAMED = [
    p.Submit((p.TaskSpec(1, "node-a", 0.0, b"small"), p.TaskSpec(2, None, 1.0, BIG), p.TaskSpec(3, None, 2.0, BIG))),
    p.Tasks((p.TaskAssignment("c", 1, 0.0, BIG), p.TaskAssignment("c", 2, 1.0, b""))),
    p.Results((p.TaskResult("c", 1, p.Outcome.OK, BIG, 0.5),), 1),
    p.Resolved((p.Resolution(1, p.Outcome.APP_ERROR, BIG, "node-a", 0.5),)),
    p.Payloads((p.PayloadItem(1, BIG), p.PayloadItem(2, b"s")), missing=(3,)),
]


@pytest.mark.parametrize("message", FRAMED, ids=lambda m: type(m).__name__)
def test_a_large_payload_travels_in_a_frame_of_its_own_and_comes_back_as_that_frame(message: p.Message) -> None:
    parts = p.encode_parts(message)
    assert (
        len(parts) == 1 + sum(1 for part in parts[1:] if part is BIG) == 1 + (2 if isinstance(message, p.Submit) else 1)
    )
    assert len(parts[0]) < 200  # the header holds the payloads' lengths, not the payloads
    views = [parts[0], *map(memoryview, parts[1:])]  # as the dispatcher reads them
    decoded = p.decode(views)
    assert decoded == message
    batch = getattr(decoded, decoded.__slots__[0])
    assert [item for item in batch if any(field is view for view in views[1:] for field in item)]  # not copied
    assert p.decode(p.encode(message)) == message  # inline, as version 4 and small payloads go, is valid too


def test_a_message_without_a_large_payload_is_one_frame() -> None:
    assert p.encode_parts(p.Tasks((p.TaskAssignment("c", 1, 0.0, b"x" * p.INLINE_MAX),))) == [
        p.encode(p.Tasks((p.TaskAssignment("c", 1, 0.0, b"x" * p.INLINE_MAX),)))
    ]
    assert p.encode_parts(p.Heartbeat()) == [p.encode(p.Heartbeat())]
    old = p.encode_parts(FRAMED[1], PREVIOUS)  # version 4 has no payload frames
    assert len(old) == 1 and p.decode_versioned(old) == (PREVIOUS, FRAMED[1])


def _tasks_parts() -> list[bytes]:
    return p.encode_parts(p.Tasks((p.TaskAssignment("c", 1, 0.0, BIG),)))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([p.encode(p.Heartbeat()), b"x"], "takes no frames"),
        ([_tasks_parts()[0]], "payload"),  # the frame its header names is missing
        ([_tasks_parts()[0], BIG, BIG], "does not name"),
        ([_tasks_parts()[0], BIG[:-1]], "its header says"),
        ([raw(PREVIOUS, p.Op.TASKS, [["c", 1, 0.0, len(BIG)]]), BIG], "takes no frames"),
        ([], "frames"),
    ],
    ids=["frames after a heartbeat", "missing frame", "extra frame", "wrong length", "frames in version 4", "none"],
)
def test_malformed_payload_frames_raise_protocol_error(parts: list[bytes], error: str) -> None:
    with pytest.raises(p.ProtocolError, match=error):
        p.decode(parts)


def test_a_message_is_bounded_in_frames_and_in_bytes_not_only_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    header, payload = _tasks_parts()
    monkeypatch.setattr(messages, "MAX_MESSAGE_BYTES", len(header) + len(payload) - 1)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.decode([header, payload])
    monkeypatch.setattr(messages, "MAX_MESSAGE_BYTES", p.MAX_FRAME_BYTES)
    monkeypatch.setattr(messages, "MAX_FRAMES", 1)
    with pytest.raises(p.ProtocolError, match="frames"):
        p.decode([header, payload])


# --------------------------------------------------------------------------- the previous version


def test_the_dispatcher_speaks_this_version_and_the_previous_one() -> None:
    assert p.SUPPORTED_VERSIONS == (PREVIOUS, p.PROTOCOL_VERSION)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_of_the_previous_version_round_trips_in_it(message: p.Message) -> None:
    held = isinstance(message, p.Submit) and any(spec.flags & p.HELD for spec in message.tasks)
    if isinstance(message, p.Fetch | p.Payloads) or held:  # version 5's own
        with pytest.raises(ValueError, match="does not exist in protocol version 4"):
            p.encode(message, PREVIOUS)
        return
    version, decoded = p.decode_versioned(p.encode(message, PREVIOUS))
    assert version == PREVIOUS
    if isinstance(message, p.Welcome):  # what version 4 lacks comes back as its default
        message = dataclasses.replace(message, payload_window=0)
    assert decoded == message


def test_a_version_4_welcome_is_what_version_4_reads_and_writes() -> None:
    """Written out by hand from the version 4 spec: WELCOME of 2 fields, no HELD flag."""
    frame = p.encode(p.Welcome("d1", 0.5, 1024), PREVIOUS)
    assert msgpack.unpackb(frame) == [PREVIOUS, p.Op.WELCOME, "d1", 0.5]
    assert p.decode(msgpack.packb([PREVIOUS, p.Op.WELCOME, "d1", 0.5])) == p.Welcome("d1", 0.5)
    old = msgpack.packb([PREVIOUS, p.Op.SUBMIT, [[1, "node-a", 0.0, b"fn", p.SOFT_AFFINITY]]])
    assert p.decode(old) == p.Submit((p.TaskSpec(1, "node-a", 0.0, b"fn", p.SOFT_AFFINITY),))
    submit = p.encode(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"fn", p.SOFT_AFFINITY),)), PREVIOUS)
    assert msgpack.unpackb(submit) == [PREVIOUS, p.Op.SUBMIT, [[1, "node-a", 0.0, b"fn", p.SOFT_AFFINITY]]]


@pytest.mark.parametrize("version", [0, 1, p.PROTOCOL_VERSION + 1, "3", None])
def test_a_frame_in_a_version_not_spoken_raises_version_error_naming_both(version: object) -> None:
    with pytest.raises(p.VersionError) as raised:
        p.decode(msgpack.packb([version, p.Op.HEARTBEAT]))
    assert raised.value.version == version
    assert str(p.PROTOCOL_VERSION) in str(raised.value)


def test_coalescing_keeps_a_task_s_monitoring_between_the_results_around_it() -> None:
    """What the dispatcher sends one client in a turn: MONITORED is not merged into a RESOLVED run."""
    first = p.Resolved((p.Resolution(1, p.Outcome.OK, b"", "n"),))
    monitored = p.Monitored((p.MonitoredItem(2, b"m"),))
    second = p.Resolved((p.Resolution(2, p.Outcome.OK, b"", "n"),))
    assert p.coalesce([first, monitored, second]) == [first, monitored, second]
