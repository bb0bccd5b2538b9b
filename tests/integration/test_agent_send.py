"""The agent when the dispatcher cannot be sent to at this moment: a non-blocking send on a
DEALER with no connection raises ``zmq.Again``. The agent must not crash (CI saw a rogue agent
die so, at its first REGISTER), and what it had to report must wait, not vanish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from dispatcher import protocol as p
from worker_agent.agent import Agent, Phase
from worker_agent.config import AgentConfig

pytestmark = pytest.mark.integration


class _Pool:
    """What the agent's send path reads of its pool."""

    def __init__(self) -> None:
        self.running: list[p.TaskKey] = []
        self.monitoring: list[tuple[str, int, bytes]] = [("c1", 1, b"m")]


@pytest.fixture
def agent() -> Iterator[Agent]:
    """An agent whose socket has no connection: IMMEDIATE, so no pipe exists until one is made,
    to an address nobody listens on."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("tcp://127.0.0.1:9")
    agent = Agent(AgentConfig(dispatcher_url="tcp://127.0.0.1:9", node_name="node-a", workers=1, insecure=True))
    agent._sock = sock
    agent._pool = _Pool()  # type: ignore[assignment]
    agent.phase = Phase.SERVING
    yield agent
    sock.close()


def test_a_send_the_socket_refuses_is_reported_not_raised(agent: Agent) -> None:
    assert agent._send(p.Heartbeat(), 1.0) is False
    assert agent._unsent == 1


def test_results_monitoring_and_credit_wait_for_a_send_that_goes(agent: Agent) -> None:
    result = p.TaskResult("c1", 1, p.Outcome.OK, b"r")
    agent._results = [result]
    agent._send_results_and_credit(1.0)
    assert agent._results == [result]
    assert agent._pool is not None and agent._pool.monitoring == [("c1", 1, b"m")]
    assert agent._granted == 0  # the credit it could not ask for is asked for again next turn


def test_results_past_the_message_limit_go_in_several_with_the_credit_on_the_last() -> None:
    """However large the results of one turn, no RESULTS is past what the dispatcher takes (it
    would drop the message, and the credit in it, and the node would wait forever)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    agent = Agent(AgentConfig(dispatcher_url="tcp://127.0.0.1:9", node_name="node-a", workers=1, insecure=True))
    agent._sock = sock
    pool = _Pool()
    pool.monitoring = []
    agent._pool = pool  # type: ignore[assignment]
    agent.phase = Phase.SERVING
    big = b"r" * (p.COALESCE_BYTES // 2 + 1)
    agent._results = [p.TaskResult("c1", i, p.Outcome.OK, big) for i in range(3)]
    try:
        sock.send(p.encode(p.Heartbeat()))  # the connection first: a send before it would be refused
        router.recv_multipart()
        agent._send_results_and_credit(1.0)
        got = []
        while len(got) < 3:
            assert router.poll(10_000)
            message = p.decode(router.recv_multipart()[1:])
            assert isinstance(message, p.Results)
            got.append(message)
            if sum(len(m.results) for m in got) == 3:
                break
        assert [[r.task_id for r in m.results] for m in got] == [[0], [1], [2]]
        assert [m.credit for m in got] == [0, 0, agent.capacity]
        assert agent._results == []
    finally:
        sock.close()
        router.close()
