"""Secure by default: which addresses need keys, for the dispatcher, agents and clients."""

from __future__ import annotations

import pytest

from dispatcher import Client
from dispatcher.runtime import exposure
from dispatcher.runtime.exposure import InsecureAddress
from worker_agent.config import AgentConfig

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert exposure.is_loopback(host)
    assert exposure.check_bind(host, keyed=False, insecure=False) is False


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "10.0.0.5", "::", "saga-dispatcher"])
def test_anything_wider_needs_keys_or_insecure(host: str) -> None:
    assert not exposure.is_loopback(host)
    with pytest.raises(InsecureAddress, match="without keys"):
        exposure.check_bind(host, keyed=False, insecure=False)
    assert exposure.check_bind(host, keyed=True, insecure=False) is False
    assert exposure.check_bind(host, keyed=False, insecure=True) is True  # the caller warns


def test_the_default_host_depends_on_keys() -> None:
    assert exposure.default_host(keyed=False) == "127.0.0.1"
    assert exposure.default_host(keyed=True) == "0.0.0.0"


def test_peers_refuse_a_keyless_dispatcher_beyond_loopback() -> None:
    assert exposure.check_connect("tcp://127.0.0.1:5561", keyed=False, insecure=False) is False
    assert exposure.check_connect("ipc:///tmp/x", keyed=False, insecure=False) is False
    with pytest.raises(InsecureAddress, match="without keys"):
        exposure.check_connect("tcp://saga-dispatcher:5561", keyed=False, insecure=False)
    assert exposure.check_connect("tcp://saga-dispatcher:5561", keyed=False, insecure=True) is True
    with pytest.raises(InsecureAddress):
        AgentConfig(dispatcher_url="tcp://10.1.2.3:5561", node_name="n1")
    AgentConfig(dispatcher_url="tcp://10.1.2.3:5561", node_name="n1", insecure=True)


def test_a_client_refuses_before_it_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_KEYS", raising=False)
    with pytest.raises(InsecureAddress, match=r"tcp://10\.1\.2\.3:5560"):
        Client("tcp://10.1.2.3:5560", connect_timeout_s=0.1)
