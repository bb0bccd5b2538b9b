"""The dispatcher's configuration: one frozen dataclass per part, and every default written once.

The CLI (``server/main.py``) reads its flag defaults from here; the local cluster passes only
what it sets, so the dispatcher's defaults are these and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dispatcher import protocol as p
from dispatcher.runtime.cgroup import CGROUP, memory_limit
from dispatcher.server.nodewatch import WatchConfig

CLIENT_PORT = 5560
AGENT_PORT = 5561
MiB: Final = 1024 * 1024
FALLBACK_MAX_MEMORY: Final = 512 * MiB
"""``--max-memory`` where no container memory limit can be read."""
LIMIT_SHARE: Final = 0.75
"""Of a container's memory limit, the share ``--max-memory`` takes by default (the rest: headroom
for what a budget cannot see, such as the kernel's socket buffers)."""
PAYLOAD_SHARE: Final = 0.5
"""Of ``--max-memory``, the share task payloads may hold (the rest: the process, the task records,
ZeroMQ's buffers, the frames in transit)."""


def default_max_memory(cgroup: Path = CGROUP) -> int:
    """``--max-memory``'s default: a share of the container's memory limit, else 512 MiB."""
    limit = memory_limit(cgroup)
    return FALLBACK_MAX_MEMORY if limit is None else int(limit * LIMIT_SHARE)


def payload_budget(max_memory: int) -> int:
    """The payload bytes the core may hold under ``max_memory`` (rule 13 of ``core.py``)."""
    return int(max_memory * PAYLOAD_SHARE)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    dispatcher_id: str = ""
    """Changes every time the dispatcher starts; clients use it to notice a restart."""
    heartbeat_interval_s: float = 0.5
    liveness: int = 3
    """Missed heartbeat intervals before a node is declared dead."""
    pending_grace_s: float = 30.0
    """How long tasks wait for a node that was named but never registered."""
    max_nodes: int = 100_000
    steal_penalty_s: float = 0.01
    """What moving a task to another node costs (transfer, latency), in the stealing policy."""
    default_runtime_s: float = 0.1
    """Runtime assumed for a node that has not reported one yet."""
    bad_frame_log_every: int = 1000
    """Log the 1st bad frame and then every n-th, so garbage cannot flood the log."""
    max_task_bytes: int = 128 * 1024 * 1024
    """Largest task payload accepted: a larger one resolves REJECTED (frames beyond
    ``DispatcherConfig.max_frame_bytes`` are dropped by ZeroMQ before they are read)."""
    payload_budget: int = payload_budget(FALLBACK_MAX_MEMORY)
    """Payload bytes the task records may hold (0: no budget): past it a task is queued without
    its payload, which its client sends when asked (rule 13 of ``core.py``)."""
    fetch_timeout_s: float = 5.0
    """A FETCH unanswered this long is sent again."""
    metrics: bool = True
    """Count for ``/metrics`` (``metrics.py``). Off (``--no-metrics``) only to measure what
    counting costs: the core then issues no ``Count`` or ``Observe``."""

    @property
    def expiry_s(self) -> float:
        return self.heartbeat_interval_s * self.liveness


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    host: str | None = None
    """None: 127.0.0.1 without keys, every interface (0.0.0.0) with them (``runtime.exposure``)."""
    client_port: int = CLIENT_PORT
    """0 picks a free port (reported by :meth:`DispatcherService.bind`)."""
    agent_port: int = AGENT_PORT
    core: CoreConfig = field(default_factory=CoreConfig)
    """Liveness, grace and stealing settings; ``dispatcher_id`` is set at start."""
    tick_s: float = 0.05
    max_frame_bytes: int = p.MAX_FRAME_BYTES
    keys: Path | None = None
    """The key folder (``saga-dispatch keys generate``): CurveZMQ on both sockets. None: no keys,
    loopback only unless ``insecure``."""
    insecure: bool = False
    """Allow a non-loopback bind without keys (warned at every start)."""
    http_port: int | None = None
    """``/healthz`` and ``/readyz`` on this port (0: a free one); None: no HTTP server."""
    watch: WatchConfig = field(default_factory=WatchConfig)
    """The Node watch's timeouts and backoff (it runs when the service is given a Kubernetes
    configuration: ``--watch-nodes``)."""
