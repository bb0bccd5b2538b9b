"""Parsl integration: ``SagaDispatchExecutor`` places the task DAG with a SAGA scheduler.

The names below load on first use (PEP 562): the planning process imports
``parsl_adapter.placement`` (SAGA) without loading Parsl, and Parsl's process imports the
executor without loading SAGA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.runtime.lazy import lazy_exports

if TYPE_CHECKING:
    from parsl_adapter.executor import NoLiveNodes, PlannedTask, SagaDispatchExecutor
    from parsl_adapter.placement import PlanningError, scheduler_names
    from parsl_adapter.taskid import ParslCompatibilityError

_EXPORTS = {
    "NoLiveNodes": "parsl_adapter.executor",
    "PlannedTask": "parsl_adapter.executor",
    "SagaDispatchExecutor": "parsl_adapter.executor",
    "PlanningError": "parsl_adapter.placement",
    "scheduler_names": "parsl_adapter.placement",
    "ParslCompatibilityError": "parsl_adapter.taskid",
}

__all__ = [
    "NoLiveNodes",
    "ParslCompatibilityError",
    "PlannedTask",
    "PlanningError",
    "SagaDispatchExecutor",
    "scheduler_names",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
