"""Parsl integration: ``SagaDispatchExecutor`` places the task DAG with a SAGA scheduler."""

from parsl_adapter.executor import NoLiveNodes, PlannedTask, SagaDispatchExecutor
from parsl_adapter.placement import PlanningError, scheduler_names
from parsl_adapter.taskid import ParslCompatibilityError

__all__ = [
    "NoLiveNodes",
    "ParslCompatibilityError",
    "PlannedTask",
    "PlanningError",
    "SagaDispatchExecutor",
    "scheduler_names",
]
