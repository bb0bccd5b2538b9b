"""Where an agent's node name comes from, and what its config refuses."""

from __future__ import annotations

import socket

import pytest

from worker_agent.config import AgentConfig, resolve_node_name

pytestmark = pytest.mark.unit


def test_downward_api_node_name_wins_over_the_flag() -> None:
    assert resolve_node_name("from-flag", {"NODE_NAME": "ip-10-0-0-7.ec2.internal"}) == "ip-10-0-0-7.ec2.internal"


def test_flag_is_used_when_node_name_env_is_unset_or_blank() -> None:
    assert resolve_node_name("from-flag", {}) == "from-flag"
    assert resolve_node_name("from-flag", {"NODE_NAME": "  "}) == "from-flag"


def test_hostname_is_the_last_resort_lower_cased() -> None:
    assert resolve_node_name(None, {}) == socket.gethostname().lower()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_name": "Bad_Name"}, "not a valid Kubernetes node name"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"prefetch": -1}, "prefetch must be >= 0"),
        ({"speed": 0.0}, "speed must be > 0"),
    ],
)
def test_bad_agent_config_is_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"dispatcher_url": "tcp://127.0.0.1:5561", "node_name": "node-a"}
    with pytest.raises(ValueError, match=message):
        AgentConfig(**{**base, **kwargs})  # type: ignore[arg-type]
