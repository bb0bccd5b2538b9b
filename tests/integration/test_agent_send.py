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
