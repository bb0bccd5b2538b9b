"""Planned against actual, per task: what ``SagaDispatchExecutor.timeline()`` returns.

One :class:`TimelineEntry` per finished planned task (its latest try), kept by the executor's
state as long as its history keeps the task. Times are seconds since the executor started, on
its clock: the planned start and end are SAGA's (the rank the task was sent with, and the
planned end); the actual end is when the result reached the executor, and the actual start is
that less the run time the worker reported, so both come from one clock and what the node said.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    task_id: int
    function: str
    planned_node: str
    """The node of the plan it ran under (after any re-plan)."""
    planned_start_s: float
    planned_end_s: float
    first_planned_node: str
    """The node the first plan gave it: differs from ``planned_node`` if it was re-planned."""
    node: str
    """The node that ran it ("" if it resolved without running: rejected, cancelled, lost)."""
    start_s: float
    end_s: float
    ok: bool
    """It returned (False: it raised, or failed to run)."""
    epoch: int
    """The plan it ran under (``executor.plans``)."""

    @property
    def replanned(self) -> bool:
        return self.planned_node != self.first_planned_node

    @property
    def moved(self) -> bool:
        """It ran elsewhere than planned: stolen by an idle node, or rescued from a dead one."""
        return bool(self.node) and self.node != self.planned_node

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replanned": self.replanned, "moved": self.moved}
