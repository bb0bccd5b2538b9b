"""Rule 9 of the core: identities bound to keys, and what a reload of the allow-lists does.

Every step also runs to an injected failure first (``transcript.py``): the key state is part of
the fingerprint that must come out unchanged.
"""

from __future__ import annotations

import pytest

from dispatcher import protocol as p
from dispatcher.server.events import SendToAgent, SendToClient
from dispatcher.server.node import NodeState
from tests.unit.transcript import CLIENT, CLIENT_ID, Transcript, logs, resolved, sent_tasks, to_agents, to_client

pytestmark = pytest.mark.unit

SHARED, KEY_A, KEY_B, ALICE, BOB = "shared-key", "key-of-a", "key-of-b", "alice-key", "bob-key"
AGENTS = {SHARED: "", KEY_A: "node-a", KEY_B: "node-b"}


def keyed(agents: dict[str, str] = AGENTS, clients: frozenset[str] = frozenset({ALICE, BOB})) -> Transcript:
    t = Transcript()
    t.keys(agents, set(clients))
    return t


def register(t: Transcript, name: str, key: str, peer: bytes | None = None) -> list[p.Message]:
    peer = peer or f"{name}-{key}".encode()
    out = t.agent(peer, p.Register(name, f"agent-{name}-{key}", 1, 0, 1.0), key=key)
    return [m for who, m in to_agents(out) if who == peer]


def refusal(messages: list[p.Message]) -> str:
    (message,) = messages
    assert isinstance(message, p.Refused), message
    return message.reason


def test_a_node_key_registers_its_own_node_and_no_other() -> None:
    t = keyed()
    assert isinstance(register(t, "node-a", KEY_A)[0], p.Registered)
    assert "belongs to node node-a, not node-b" in refusal(register(t, "node-b", KEY_A))
    assert "node-b" not in t.core.nodes  # a refused registration leaves nothing behind
    assert t.core.agents_refused == 1


def test_a_node_with_a_key_of_its_own_refuses_the_shared_key_and_others_take_it() -> None:
    t = keyed()
    assert "has a key of its own" in refusal(register(t, "node-b", SHARED))
    assert isinstance(register(t, "node-c", SHARED)[0], p.Registered)  # no key of its own: the shared key
    assert "not on the dispatcher's allow-list" in refusal(register(t, "node-c", "stranger", b"x"))
    assert t.core.agents_refused == 2


def test_an_impostor_never_receives_the_pinned_work_of_the_node_it_claims() -> None:
    t = keyed()
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    out = t.client(p.Submit((p.TaskSpec(1, "node-b", 0.0, b"fn"),)), key=ALICE)
    out += t.agent(b"impostor", p.Register("node-b", "evil", 1, 0, 1.0), key=KEY_A)
    out += t.agent(b"impostor", p.Credit(1), key=KEY_A)
    assert sent_tasks(out, b"impostor") == []
    register(t, "node-b", KEY_B, b"real")
    out = t.agent(b"real", p.Credit(1), key=KEY_B)
    assert sent_tasks(out, b"real") == [1]


def test_without_keys_nothing_is_bound() -> None:
    t = Transcript()
    assert isinstance(register(t, "node-a", "")[0], p.Registered)
    t.hello(CLIENT)
    assert not resolved(t.submit((1, None, 0.0)))
    assert t.core.agents_refused == t.core.clients_refused == 0


def test_a_client_id_belongs_to_the_key_that_said_hello_with_it_first() -> None:
    t = keyed()
    register(t, "node-a", KEY_A, b"a")
    t.agent(b"a", p.Credit(1), key=KEY_A)
    assert isinstance(to_client(t.client(p.Hello(CLIENT_ID), key=ALICE))[0], p.Welcome)
    out = t.client(p.Hello(CLIENT_ID), peer=b"bob-peer", key=BOB)
    (error,) = to_client(out, b"bob-peer")
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.REFUSED
    assert t.core._clients[CLIENT_ID] == CLIENT  # results still go to alice
    t.client(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"fn"),)), key=ALICE)
    out = t.agent(b"a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),)), key=KEY_A)
    assert [r.task_id for r in resolved(out, CLIENT)] == [1]
    assert resolved(out, b"bob-peer") == []
    assert t.core.clients_refused == 1
    # bob under an id of his own is fine
    assert isinstance(to_client(t.client(p.Hello("bob"), peer=b"bob-peer", key=BOB), b"bob-peer")[0], p.Welcome)


def test_revoking_a_client_key_forgets_the_client_and_its_tasks_and_cancels_what_runs() -> None:
    t = keyed()
    register(t, "node-a", KEY_A, b"a")
    t.agent(b"a", p.Credit(1), key=KEY_A)
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    t.client(p.Hello("bob"), peer=b"bob-peer", key=BOB)
    out = t.client(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"fn"), p.TaskSpec(2, "node-a", 1.0, b"fn"))), key=ALICE)
    assert sent_tasks(out, b"a") == [1]
    out = t.keys(AGENTS, {BOB})
    assert (b"a", p.CancelTasks((p.TaskRef(CLIENT_ID, 1),))) in to_agents(out)
    assert "client_revoked" in logs(out)
    assert not t.core.tasks and CLIENT_ID not in t.core._clients
    assert resolved(out, CLIENT) == []  # it is told nothing
    # its late result is a duplicate; its id stays bound to the revoked key
    out = t.agent(b"a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),)), key=KEY_A)
    assert resolved(out, CLIENT) == [] and t.core.duplicates_dropped == 1
    out = t.client(p.Hello(CLIENT_ID), peer=b"other", key=BOB)
    assert to_client(out, b"other")[0].code is p.ErrorCode.REFUSED  # type: ignore[union-attr]
    # the node still serves the others
    out = t.client(p.Submit((p.TaskSpec(7, "node-a", 0.0, b"fn"),)), peer=b"bob-peer", key=BOB)
    out += t.agent(b"a", p.Credit(1), key=KEY_A)
    assert sent_tasks(out, b"a") == [7]


def test_revoking_a_node_key_or_giving_a_node_its_own_key_drops_its_agent_and_moves_its_work() -> None:
    t = keyed({SHARED: "", KEY_A: "node-a"})
    register(t, "node-a", KEY_A, b"a")
    register(t, "node-b", SHARED, b"b")
    t.agent(b"a", p.Credit(1), key=KEY_A)
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    out = t.client(p.Submit((p.TaskSpec(1, "node-b", 0.0, b"fn"),)), key=ALICE)
    out += t.agent(b"b", p.Credit(1), key=SHARED)
    assert sent_tasks(out, b"b") == [1]
    out = t.keys({SHARED: "", KEY_A: "node-a", KEY_B: "node-b"}, {ALICE})  # node-b gets its own key
    assert t.core.nodes["node-b"].state is NodeState.DEAD
    assert t.core.nodes["node-a"].state is NodeState.ALIVE
    assert sent_tasks(out, b"a") == [1]  # its work moved to the live node
    assert "has a key of its own" in refusal(register(t, "node-b", SHARED, b"b2"))
    assert isinstance(register(t, "node-b", KEY_B, b"b3")[0], p.Registered)
    t.keys({SHARED: ""}, {ALICE})  # node-a's key revoked
    assert t.core.nodes["node-a"].state is NodeState.DEAD


def test_an_unchanged_reload_changes_nothing() -> None:
    t = keyed()
    register(t, "node-a", KEY_A, b"a")
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    out = t.keys(AGENTS, {ALICE, BOB})
    assert [log for log in logs(out) if log != "keys_changed"] == []
    assert t.core.nodes["node-a"].state is NodeState.ALIVE and CLIENT_ID in t.core._clients


def test_a_task_above_the_size_limit_is_rejected_and_the_rest_of_its_batch_runs() -> None:
    t = Transcript(max_task_bytes=100)
    t.register("node-a")
    t.hello()
    out = t.client(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"x" * 101), p.TaskSpec(2, "node-a", 1.0, b"x" * 100))))
    (rejected,) = resolved(out)
    assert rejected.task_id == 1 and rejected.outcome is p.Outcome.REJECTED
    assert b"101 bytes exceeds the dispatcher's limit of 100" in rejected.payload
    assert sent_tasks(out, b"node-a") == [2]


def test_a_routing_id_taken_over_by_another_key_is_a_stranger() -> None:
    """libzmq lets a new connection reuse a vanished peer's routing id: identity is the key too."""
    t = keyed()
    register(t, "node-a", KEY_A, b"a")
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    out = t.client(p.NodesQuery(1), key=BOB)  # alice's routing id, bob's key
    (error,) = to_client(out)
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.UNKNOWN_CLIENT
    out = t.agent(b"a", p.Credit(1), key=SHARED)  # node-a's routing id, the shared key
    assert to_agents(out) == [(b"a", p.Reregister())]
    assert t.core.nodes["node-a"].credit == 0


def test_an_agent_cannot_resolve_work_that_is_not_its_own() -> None:
    t = keyed()
    register(t, "node-a", KEY_A, b"a")
    register(t, "node-b", KEY_B, b"b")
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    t.client(p.Submit((p.TaskSpec(1, "node-b", 0.0, b"fn"), p.TaskSpec(2, "node-b", 1.0, b"fn"))), key=ALICE)
    out = t.agent(b"b", p.Credit(1), key=KEY_B)
    assert sent_tasks(out, b"b") == [1]
    forged = p.Results(
        (p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"pickle"), p.TaskResult(CLIENT_ID, 2, p.Outcome.OK, b"pickle"))
    )
    out = t.agent(b"a", forged, key=KEY_A)  # one in flight on node-b, one queued there
    assert resolved(out) == [] and t.core.results_refused == 2
    assert to_agents(out) == []  # and node-b's copy is not cancelled
    out = t.agent(b"b", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),)), key=KEY_B)
    assert [(r.task_id, r.node_name) for r in resolved(out)] == [(1, "node-b")]


def test_revoking_agents_and_clients_together_sends_nothing_to_any_of_them() -> None:
    t = keyed({SHARED: "", KEY_B: "node-b"})
    register(t, "node-a", SHARED, b"a")
    register(t, "node-c", SHARED, b"c")
    register(t, "node-b", KEY_B, b"b")
    t.client(p.Hello(CLIENT_ID), key=ALICE)
    t.client(p.Hello("bob"), peer=b"bob-peer", key=BOB)
    t.agent(b"a", p.Credit(1), key=SHARED)
    out = t.client(p.Submit((p.TaskSpec(1, None, 0.0, b"fn"),)), key=ALICE)  # runs on node-a
    out += t.client(p.Submit((p.TaskSpec(5, None, 0.0, b"fn"),)), peer=b"bob-peer", key=BOB)  # waits in the pool
    t.agent(b"c", p.Credit(1), key=SHARED)  # node-c hungry: it would take bob's task... if it were not revoked
    out = t.keys({KEY_B: "node-b"}, {ALICE})  # the shared agent key and bob revoked at once
    sent_to = {c.peer for c in out if isinstance(c, SendToAgent | SendToClient)}
    assert sent_to.isdisjoint({b"a", b"c", b"bob-peer"}), sent_to
    assert t.core.nodes["node-a"].state is NodeState.DEAD and t.core.nodes["node-c"].state is NodeState.DEAD
    assert resolved(out, CLIENT) == []  # alice's task waits for a live node; it is not lost
    assert (CLIENT_ID, 1) in t.core.tasks and t.core.nodes["node-b"].state is NodeState.ALIVE
    out = t.agent(b"b", p.Credit(1), key=KEY_B)
    assert sent_tasks(out, b"b") == [1]  # and bob's task is gone with bob


def test_a_node_whose_own_key_is_revoked_cannot_come_back_under_the_shared_key() -> None:
    t = keyed()
    register(t, "node-b", KEY_B, b"b")
    t.keys({SHARED: "", KEY_A: "node-a"}, {ALICE})
    assert t.core.nodes["node-b"].state is NodeState.DEAD
    assert "has a key of its own" in refusal(register(t, "node-b", SHARED, b"b2"))
