"""Rule 13 as transcripts: the payload budget, HELD tasks, FETCH and PAYLOADS, in rank order."""

from __future__ import annotations

import pytest

from dispatcher import protocol as p
from dispatcher.server.events import Command, SendToClient

from .transcript import CLIENT, CLIENT_ID, Transcript, resolved, result, sent_tasks, to_agents, to_client

pytestmark = pytest.mark.unit

MB = b"x" * 1000
"""A "large" payload: the budgets below are counted in these."""


def fetches(commands: list[Command], peer: bytes = CLIENT) -> list[int]:
    return [i for m in to_client(commands, peer) if isinstance(m, p.Fetch) for i in m.task_ids]


def payloads(*ids: int, missing: tuple[int, ...] = ()) -> p.Payloads:
    return p.Payloads(tuple(p.PayloadItem(i, MB) for i in ids), missing)


def held(*specs: tuple[int, str | None, float]) -> p.Submit:
    return p.Submit(tuple(p.TaskSpec(i, n, r, b"", p.HELD, len(MB)) for i, n, r in specs))


@pytest.fixture
def t() -> Transcript:
    t = Transcript(payload_budget=3 * len(MB), fetch_timeout_s=5.0)
    t.hello()
    return t


def test_past_the_budget_tasks_queue_without_their_payload_and_are_fetched_in_rank_order(t: Transcript) -> None:
    out = t.submit(*((i, "node-a", float(i)) for i in range(1, 7)), payload=MB)
    assert t.core.payload_bytes == 3 * len(MB)  # tasks 4-6 wait with their client
    assert [t.core.tasks[CLIENT_ID, i].payload is None for i in range(1, 7)] == [False] * 3 + [True] * 3
    assert fetches(out) == []
    out = t.register("node-a", slots=2)
    assert sent_tasks(out, b"node-a") == [1, 2]
    assert t.core.payload_bytes == 2 * len(MB)  # task 1's let go at the budget (its agent has it)
    assert t.core.tasks[CLIENT_ID, 1].payload is None
    out = t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b""),), credit=1))
    assert sent_tasks(out, b"node-a") == [3]
    out = t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 2, p.Outcome.OK, b""),), credit=1))
    assert sent_tasks(out, b"node-a") == []
    assert fetches(out) == [4, 5]  # the next held ones the budget has room for (task 3's is here)
    assert "node-a" in t.core._waiting
    out = t.client(payloads(5, 4))  # in any order: the node takes them in rank order
    assert sent_tasks(out, b"node-a") == [4]
    assert t.core.tasks[CLIENT_ID, 5].payload == MB
    out = t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 3, p.Outcome.OK, b""),), credit=1))
    assert sent_tasks(out, b"node-a") == [5]


def test_a_held_task_of_lower_rank_holds_back_an_eager_one_behind_it(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))
    t.submit((2, "node-a", 1.0), payload=MB)
    out = t.register("node-a", slots=2)
    assert sent_tasks(out, b"node-a") == []  # task 2 is here, but task 1 goes first
    assert fetches(out) == [1]
    out = t.client(payloads(1))
    assert sent_tasks(out, b"node-a") == [1, 2]


def test_the_middle_of_a_fetch_batch_asks_for_the_next_batch_when_it_is_dispatched() -> None:
    t = Transcript(payload_budget=100 * len(MB))
    t.hello()
    t.client(held(*((i, "node-a", float(i)) for i in range(1, 11))))
    out = t.register("node-a", slots=1, prefetch=1)
    assert fetches(out) == [1, 2, 3, 4]  # 2 x (slots + prefetch)
    out = t.client(payloads(1, 2, 3, 4))
    assert sent_tasks(out, b"node-a") == [1, 2]
    assert fetches(out) == []
    out = t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b""),), credit=1))
    assert sent_tasks(out, b"node-a") == [3]
    assert fetches(out) == [5, 6, 7, 8]  # task 3 was the batch's middle: no wait at task 5


def test_an_unanswered_fetch_is_asked_again_after_the_timeout_and_not_before() -> None:
    t = Transcript(heartbeat_interval_s=10.0, fetch_timeout_s=5.0)
    t.hello()
    t.client(held((1, "node-a", 0.0)))
    assert fetches(t.register("node-a")) == [1]
    assert fetches(t.tick(4.9)) == []
    assert fetches(t.tick(5.1)) == [1]
    assert fetches(t.tick(6.0)) == []
    assert sent_tasks(t.client(payloads(1)), b"node-a") == [1]


def test_a_task_its_client_no_longer_holds_resolves_rejected_and_a_stray_payload_changes_nothing(
    t: Transcript,
) -> None:
    t.client(held((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0)))
    assert fetches(t.register("node-a")) == [1, 2]
    out = t.client(payloads(missing=(1,)))
    [rejected] = resolved(out)
    assert (rejected.task_id, rejected.outcome) == (1, p.Outcome.REJECTED)
    assert (CLIENT_ID, 1) not in t.core.tasks
    assert sent_tasks(out, b"node-a") == []
    assert fetches(out) == []  # task 2, next, was asked for already
    out = t.client(payloads(99, 2))  # 99: never submitted
    assert sent_tasks(out, b"node-a") == [2]
    out = t.client(payloads(2))  # a late duplicate: task 2 is in flight
    assert out == []
    assert t.core.payload_bytes == len(MB)  # task 2's, kept in flight under the budget


def test_a_held_task_whose_size_is_over_the_task_limit_resolves_rejected_at_once() -> None:
    t = Transcript(max_task_bytes=10)
    t.hello()
    [rejected] = resolved(t.client(held((1, "node-a", 0.0))))
    assert rejected.outcome is p.Outcome.REJECTED and b"exceeds" in rejected.payload
    assert (CLIENT_ID, 1) not in t.core.tasks


def test_a_fetched_payload_of_another_size_than_its_task_said_resolves_rejected(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0), (2, "node-a", 1.0)))
    t.register("node-a")
    out = t.client(p.Payloads((p.PayloadItem(1, MB + b"more"), p.PayloadItem(2, MB))))
    [rejected] = resolved(out)
    assert (rejected.task_id, rejected.outcome) == (1, p.Outcome.REJECTED)
    assert b"sent as 1000" in rejected.payload
    assert sent_tasks(out, b"node-a") == [2]
    assert t.core.payload_bytes == len(MB)


def test_a_payload_nobody_asked_for_is_not_taken(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))  # no node: nothing asked for it
    assert t.client(payloads(1)) == []
    assert t.core.tasks[CLIENT_ID, 1].payload is None
    assert t.core.payload_bytes == 0
    assert fetches(t.register("node-a")) == [1]  # asked for now, when a node can take it


def test_fetches_are_sized_by_the_budget_left_across_nodes_and_only_one_head_goes_past_it(t: Transcript) -> None:
    t.client(held(*((i, "node-a", float(i)) for i in range(1, 5)), *((i, "node-b", float(i)) for i in range(5, 9))))
    assert fetches(t.register("node-a", slots=2)) == [1, 2, 3]  # twice its slots would be 4: the budget has room for 3
    assert t.core.fetch_bytes == 3 * len(MB)
    assert fetches(t.register("node-b", slots=2)) == []  # no room, and payloads are on their way: it waits
    assert "node-b" in t.core._waiting
    out = t.client(payloads(1, 2, 3))
    assert sent_tasks(out, b"node-a") == [1, 2]
    assert fetches(out) == [5]  # node-a's refill found no room; node-b's head goes past the budget, alone
    assert sent_tasks(t.client(payloads(5)), b"node-b") == [5]


def test_many_waiting_nodes_overshoot_the_budget_by_one_payload_at_most() -> None:
    t = Transcript(payload_budget=len(MB))
    t.hello()
    t.client(held(*((i, f"node-{i}", 0.0) for i in range(8))))
    for i in range(8):
        t.register(f"node-{i}")
    assert t.core.fetch_bytes == len(MB)
    for i in range(8):  # each in turn, as the one before it is dispatched
        assert fetches(t.client(payloads(i))) == ([i + 1] if i < 7 else [])
        assert t.core.fetch_bytes == (len(MB) if i < 7 else 0)


def test_a_payload_held_behind_a_held_head_never_deadlocks_its_node(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))
    t.submit(*((i, "node-a", float(i)) for i in range(2, 5)), payload=MB)  # the whole budget, behind task 1
    assert t.core.payload_bytes == 3 * len(MB)
    assert fetches(t.register("node-a")) == [1]  # no room, but nothing else is asked for
    assert sent_tasks(t.client(payloads(1)), b"node-a") == [1]


def test_a_client_that_leaves_fetches_unanswered_has_its_held_heads_rejected_and_blocks_no_node() -> None:
    t = Transcript(heartbeat_interval_s=100.0, payload_budget=3 * len(MB), fetch_timeout_s=5.0)
    t.hello()
    t.hello(peer=b"other-peer", client_id="c2")
    t.client(held((1, "node-a", 0.0), (2, "node-a", 1.0)))
    t.client(p.Submit((p.TaskSpec(3, "node-a", 2.0, b"fn"),)), peer=b"other-peer")
    assert fetches(t.register("node-a")) == [1, 2]
    for tries, at in enumerate((5.0, 10.0), 2):
        assert fetches(t.tick(at)) == [1, 2]
        assert t.core.tasks[CLIENT_ID, 1].fetches == tries
    assert resolved(t.tick(14.9)) == []  # the third FETCH is not yet unanswered
    out = t.tick(15.0)
    assert [(r.task_id, r.outcome) for r in resolved(out)] == [(1, p.Outcome.REJECTED), (2, p.Outcome.REJECTED)]
    assert b"unanswered" in resolved(out)[0].payload
    assert sent_tasks(out, b"node-a") == [3]  # c2's task goes on
    assert "c1" in t.core._unanswered
    assert t.core.fetch_bytes == 0
    t.client(held((4, "node-a", 3.0)), at=16.0)  # it speaks again: asked again
    assert "c1" not in t.core._unanswered
    out = t.agent(b"node-a", p.Results((p.TaskResult("c2", 3, p.Outcome.OK, b""),), credit=1), at=16.0)
    assert fetches(out) == [4]


def test_a_client_on_a_new_connection_is_asked_again_at_once(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))
    assert fetches(t.register("node-a")) == [1]
    out = t.hello(peer=b"new-peer")  # the FETCH went to the old connection
    assert fetches(out, peer=b"new-peer") == [1]
    assert t.core.tasks[CLIENT_ID, 1].fetches == 1


def test_cancelling_the_task_a_node_waits_for_lets_the_next_go_at_once(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))
    t.submit((2, "node-a", 1.0), payload=MB)
    assert fetches(t.register("node-a")) == [1]
    out = t.client(p.Cancel((1,)))
    assert sent_tasks(out, b"node-a") == [2]
    assert t.core.fetch_bytes == 0


def test_a_client_id_that_spoke_fetch_may_not_come_back_on_an_older_version(t: Transcript) -> None:
    t.client(held((1, "node-a", 0.0)))
    out = t.client(p.Hello(CLIENT_ID, protocol_version=p.PROTOCOL_VERSION - 1), peer=b"old-peer")
    [error] = to_client(out, b"old-peer")
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.REFUSED
    assert t.core._clients[CLIENT_ID] == CLIENT


def test_a_previous_version_client_keeps_its_payloads_here_whatever_the_budget(t: Transcript) -> None:
    t.client(p.Hello("old", protocol_version=p.PROTOCOL_VERSION - 1), peer=b"old-peer")
    frame = p.Submit(tuple(p.TaskSpec(i, "node-a", float(i), MB) for i in range(1, 6)))
    t.client(frame, peer=b"old-peer")
    assert t.core.payload_bytes == 5 * len(MB)  # it has no FETCH: nothing to ask back
    out = t.register("node-a", slots=5)
    assert sent_tasks(out, b"node-a") == [1, 2, 3, 4, 5]
    assert not [c for c in out if isinstance(c, SendToClient) and isinstance(c.message, p.Fetch)]


def test_a_task_whose_payload_was_let_go_is_fetched_again_when_its_node_dies(t: Transcript) -> None:
    t.submit(*((i, None, float(i)) for i in range(1, 5)), payload=MB)  # task 4 past the budget
    out = t.register("node-a", slots=4)
    assert sent_tasks(out, b"node-a") == [1, 2, 3]
    assert fetches(out) == [4]
    assert sent_tasks(t.client(payloads(4)), b"node-a") == [4]
    assert [t.core.tasks[CLIENT_ID, i].payload is None for i in range(1, 5)] == [True, False, False, True]
    t.register("node-b", credit=0)
    t.agent(b"node-b", p.Heartbeat(), at=2.0)
    t.tick(2.0)  # node-a is silent: its work goes to the pool
    out = t.agent(b"node-b", p.Credit(1), at=2.0)
    assert sent_tasks(out, b"node-b") == []
    assert fetches(out) == [1]  # the pool's held ones in rank order, as many as the budget has room for
    assert sent_tasks(t.client(payloads(1), at=2.0), b"node-b") == [1]
    assert sent_tasks(t.agent(b"node-b", result(1), at=2.0), b"node-b") == []  # credit 0 after the result


def test_held_tasks_are_not_stolen(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.register("node-b", slots=1, credit=0)
    t.client(p.Submit((
        p.TaskSpec(1, "node-a", 0.0, MB, p.SOFT_AFFINITY),
        p.TaskSpec(2, "node-a", 1.0, b"", p.SOFT_AFFINITY | p.HELD),
    )))  # fmt: skip
    out = t.agent(b"node-b", p.Credit(1))
    out += t.tick(0.1)
    assert sent_tasks(out, b"node-b") == []
    assert t.core.tasks[CLIENT_ID, 2].queue is t.core.nodes["node-a"].queue


def test_a_thief_steals_past_a_back_of_the_line_its_client_holds() -> None:
    t = Transcript(payload_budget=100 * len(MB))
    t.hello()
    t.register("node-a", slots=1)
    t.register("node-b", slots=1, credit=0)
    eager = [p.TaskSpec(i, "node-a", float(i), MB, p.SOFT_AFFINITY) for i in range(1, 6)]
    late = [p.TaskSpec(i, "node-a", float(i), b"", p.SOFT_AFFINITY | p.HELD, len(MB)) for i in range(6, 80)]
    t.client(p.Submit((*eager, *late)))  # the back of node-a's line, more than a victim's view, is held
    out = t.agent(b"node-b", p.Credit(1))
    out += t.tick(0.1)
    assert sent_tasks(out, b"node-b") == [5]  # the last one whose payload is here


def _unanswered_with_task_7_waiting_on_node_b() -> Transcript:
    """c1's task 1 heads node-a; on node-b, c2's task 6 goes before c1's task 7. Three FETCHes
    of 1 go unanswered; 6 is answered and runs; at 15 s c1 is taken for gone, with 7 still queued."""
    t = Transcript(heartbeat_interval_s=100.0, payload_budget=10 * len(MB), fetch_timeout_s=5.0)
    t.hello()
    t.hello(peer=b"other-peer", client_id="c2")
    t.client(held((1, "node-a", 0.0), (7, "node-b", 1.0)))
    t.client(p.Submit((p.TaskSpec(6, "node-b", 0.0, b"", p.HELD, len(MB)),)), peer=b"other-peer")
    t.register("node-a")
    t.register("node-b")
    t.tick(5.0)
    t.tick(10.0)
    assert sent_tasks(t.client(payloads(6), peer=b"other-peer", at=12.0), b"node-b") == [6]
    [rejected] = resolved(t.tick(15.0))
    assert rejected.task_id == 1 and "c1" in t.core._unanswered
    assert t.core.tasks[CLIENT_ID, 7].fetches == 3
    return t


def test_a_client_back_on_a_new_connection_is_asked_afresh_for_what_it_was_given_up_on() -> None:
    t = _unanswered_with_task_7_waiting_on_node_b()
    t.hello(peer=b"new-peer")
    out = t.agent(b"node-b", p.Results((p.TaskResult("c2", 6, p.Outcome.OK, b""),), credit=1), at=16.0)
    assert resolved(out, b"new-peer") == []
    assert fetches(out, peer=b"new-peer") == [7]  # not rejected: its FETCHes went to a connection now gone


def test_a_late_answer_is_taken_while_the_budget_has_room() -> None:
    t = _unanswered_with_task_7_waiting_on_node_b()
    t.client(payloads(7), at=15.5)
    assert t.core.tasks[CLIENT_ID, 7].payload == MB
    out = t.agent(b"node-b", p.Results((p.TaskResult("c2", 6, p.Outcome.OK, b""),), credit=1), at=16.0)
    assert sent_tasks(out, b"node-b") == [7]


def test_a_node_s_tasks_go_in_messages_its_agent_takes() -> None:
    t = Transcript(payload_budget=0)
    t.hello()
    half = b"x" * (p.COALESCE_BYTES // 2 + 1)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0), payload=half)
    t.submit((4, "node-a", 3.0), (5, "node-a", 4.0))  # small ones share the last
    out = t.register("node-a", slots=5)
    batches = [[a.task_id for a in m.tasks] for peer, m in to_agents(out) if isinstance(m, p.Tasks)]
    assert batches == [[1], [2], [3, 4, 5]]


def test_resolved_tasks_are_not_kept_by_an_empty_pools_heap() -> None:
    """Stale pool entries (REPIN, cancel, a reclaim) are dropped when a pump looks at the pool, so
    they never keep resolved records, and their payloads, beyond rule 13's account."""
    big = b"x" * 100_000
    t = Transcript()
    t.hello()
    t.submit(*((i, None, float(i)) for i in range(1, 11)), payload=big)  # no node yet: the pool
    t.client(p.Repin(tuple(p.Placement(i, "node-b", float(i)) for i in range(1, 11))))
    t.register("node-b", slots=10)
    t.agent(b"node-b", p.Results(tuple(p.TaskResult(CLIENT_ID, i, p.Outcome.OK, b"r") for i in range(1, 11)), 10))
    assert not t.core.tasks and t.core.payload_bytes == 0
    kept = [r for _, _, r in t.core.pool._heap]
    assert not kept, f"{len(kept)} stale pool entries keep resolved tasks"


def test_a_held_task_costs_its_size_until_it_is_first_asked_for() -> None:
    """A HELD record carries its size as a bare int (no Fetch) until a FETCH: a long queue of
    held tasks costs no more than a queue of inline ones beside their payloads."""
    t = Transcript(payload_budget=1000)
    t.hello()
    t.client(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"", p.HELD, 500),)))
    record = t.core.tasks[(CLIENT_ID, 1)]
    assert record.fetch == 500 and record.size == 500 and record.fetching is None and record.fetches == 0
    t.register("node-a", slots=1)  # its head: asked for now
    assert record.fetches == 1 and record.fetching is not None and record.size == 500
