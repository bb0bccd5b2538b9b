"""The agent's configuration, and where its node name comes from."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.protocol import is_node_name
from dispatcher.runtime import exposure
from dispatcher.runtime.cgroup import CGROUP, cpu_quota
from dispatcher.runtime.keys import PeerKeys

NODE_NAME_ENV = "NODE_NAME"
"""Set from the Downward API (``spec.nodeName``) in the DaemonSet; also what workers see."""
NODE_SPEED_ENV = "NODE_SPEED"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    dispatcher_url: str
    node_name: str
    workers: int = field(default_factory=lambda: default_workers())  # noqa: PLW0108 - defined below
    """Worker processes (default: the container's CPU limit, its cgroup quota rounded up, else
    the machine's cores, as HTEX's ``max_workers_per_node``)."""
    prefetch: int | None = None
    """Tasks held beyond the worker count, so a worker never waits for a round trip (default:
    as many as there are workers)."""
    pipeline: int = 1
    """Tasks written ahead into a busy worker's pipe when every worker is busy (0: none)."""
    speed: float | None = None
    """Relative speed advertised to the planner (1.0 = reference node); None: the agent gives
    none, and its Node's ``saga-dispatch.io/speed`` label (else 1.0) is its speed."""
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    worker_start_timeout_s: float = 60.0
    """Registration waits for the workers' imports, so the first task is not a cold start."""
    drain_timeout_s: float = 30.0
    """How long SIGTERM waits for running tasks (keep below terminationGracePeriodSeconds)."""
    zygote: str | None = None
    """A worker zygote's socket to fork workers from (the embedded mode's, shared by its agents);
    None: each worker is spawned."""
    keys: PeerKeys | None = None
    """The agent's CURVE pair and the dispatcher's public key it pins (``keys.for_agent``);
    None: no CURVE, so a loopback dispatcher only, unless ``insecure``."""
    insecure: bool = False
    """Allow a keyless dispatcher beyond loopback (warned at every start)."""
    http_port: int | None = None
    """``/healthz`` (the loop turns) and ``/readyz`` (registered) on this port; None: off."""
    http_host: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if self.prefetch is None:
            object.__setattr__(self, "prefetch", self.workers)
        if not is_node_name(self.node_name):
            raise ValueError(f"{self.node_name!r} is not a valid Kubernetes node name (RFC 1123 subdomain)")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.prefetch_tasks < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.pipeline < 0:
            raise ValueError(f"pipeline must be >= 0, got {self.pipeline}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        exposure.check_connect(self.dispatcher_url, keyed=self.keys is not None, insecure=self.insecure)

    @property
    def prefetch_tasks(self) -> int:
        """``prefetch``, resolved (never None after construction)."""
        assert self.prefetch is not None
        return self.prefetch


def default_workers(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its cgroup's CPU quota (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``), rounded up and at most the cores; the cores where there is none."""
    cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def resolve_node_name(cli_value: str | None, env: Mapping[str, str] = os.environ) -> str:
    """``NODE_NAME`` (Downward API) first, then ``--node-name``, then the hostname (lower-cased)."""
    from_env = env.get(NODE_NAME_ENV, "").strip()
    if from_env:
        return from_env
    if cli_value:
        return cli_value
    return socket.gethostname().lower()
