"""The executor's configuration: one frozen dataclass, validated once, every default written once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from parsl_adapter.window import WindowConfig


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    scheduler: str | Any = "HEFT"
    """A SAGA scheduler name (``placement.scheduler_names()``) or instance."""
    replan: bool = True
    """Re-plan a lost node's unfinished tasks on the survivors."""
    affinity: Literal["strict", "soft"] = "strict"
    window: WindowConfig = field(default_factory=WindowConfig)
    max_plan_tasks: int = 128
    """Outside ``plan()``, a window plans at most this many tasks (the oldest first): SAGA's list
    schedulers grow faster than linearly, so big windows would starve the stream."""
    plan_cache_size: int = 256
    history_size: int = 100_000
    """How many finished tasks keep their placement for ``planned_node``, ``ran_on`` and a retry
    (the oldest are forgotten, so a long run's memory stays flat)."""
    default_cost_s: float = 1.0
    default_output_bytes: float = 0.0
    bandwidth: float = 1e9
    cross_zone_bandwidth: float | None = None
    """Bytes/s between nodes in different Kubernetes zones (``topology.kubernetes.io/zone``, with
    the dispatcher's ``--watch-nodes``); None: ``bandwidth`` between any two nodes."""
    node_wait_timeout_s: float = 30.0
    plan_timeout_s: float = 600.0
    rejoin_grace_s: float = 3.0
    """After a dispatcher restart: how long nodes have to re-register before their work is re-planned."""
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.affinity not in ("strict", "soft"):
            raise ValueError(f"affinity must be 'strict' or 'soft', got {self.affinity!r}")
        for name in ("default_cost_s", "default_output_bytes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth}")
        if self.cross_zone_bandwidth is not None and not self.cross_zone_bandwidth > 0:
            raise ValueError(f"cross_zone_bandwidth must be > 0 bytes/s, got {self.cross_zone_bandwidth}")
        w = self.window
        for name in ("flush_idle_s", "plan_idle_s", "max_delay_s"):
            if not getattr(w, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(w, name)}")
        if w.max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {w.max_held}")
        if self.max_plan_tasks < 1:
            raise ValueError(f"max_plan_tasks must be >= 1, got {self.max_plan_tasks}")
        if self.history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {self.history_size}")
        if self.plan_cache_size < 0:
            raise ValueError(f"plan_cache_size must be >= 0, got {self.plan_cache_size}")
