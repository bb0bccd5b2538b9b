"""Which Parsl task is this? Recovering the task id in ``executor.submit()`` from stock Parsl.

The ParslExecutor API passes ``submit(func, resource_specification, *args, **kwargs)`` and no
task id. What stock Parsl (2026.10.26) guarantees, and this module relies on:

1. ``DataFlowKernel.launch_task`` passes ``task_record['resource_specification']`` itself — the
   same dict object stored in the task record — as the ``resource_specification`` argument.
2. Records are registered in ``dfk.tasks`` (keyed by task id, ids counted by ``dfk.task_count``)
   before they can launch.
3. Launches happen on one thread (``dfk._task_launch_pool`` has one worker), inside
   ``with task_record['task_launch_lock']`` while the record is still ``States.pending``.

So the record being launched is the one whose resource specification *is* the dict we received;
when one dict is shared by several tasks (the app's default, or a dict the user reuses), it is
the one of those whose launch lock is held. The index from dict identity to task ids is built
incrementally from new records, so a lookup is O(1) amortised.

If a Parsl upgrade breaks any of this, :class:`ParslCompatibilityError` says so at the first
task, and ``tests/integration/test_parsl_taskid.py`` fails loudly.
"""

from __future__ import annotations

import inspect
from typing import Any

from parsl.dataflow.states import States


class ParslCompatibilityError(RuntimeError):
    """This Parsl release does not behave as the task-id recovery needs (see parsl_adapter.taskid)."""


def find_dfk(executor: object) -> Any | None:
    """The DataFlowKernel that is starting ``executor`` (called from ``start()``), else the loaded one.

    ``DataFlowKernel.add_executors`` stores the executor in ``dfk.executors`` and then calls
    ``executor.start()``; the DFK is ``self`` in that caller's frame. This only reads frames.
    """
    from parsl.dataflow.dflow import DataFlowKernel, DataFlowKernelLoader

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, DataFlowKernel) and any(e is executor for e in candidate.executors.values()):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    try:
        loaded = DataFlowKernelLoader.dfk()
    except Exception:
        return None
    return loaded if any(e is executor for e in loaded.executors.values()) else None


class TaskIdResolver:
    """Maps the ``resource_specification`` passed to ``submit()`` back to its Parsl task id."""

    def __init__(self, dfk: Any, label: str) -> None:
        self.dfk = dfk
        self.label = label
        self._by_spec: dict[int, list[int]] = {}
        self._cursor = 0

    def _index_new_records(self) -> None:
        tasks = self.dfk.tasks
        end = self.dfk.task_count
        for tid in range(self._cursor, end):
            record = tasks.get(tid)
            if record is not None and record["executor"] == self.label:
                self._by_spec.setdefault(id(record["resource_specification"]), []).append(tid)
        self._cursor = end

    def resolve(self, resource_specification: object) -> int:
        self._index_new_records()
        tasks = self.dfk.tasks
        key = id(resource_specification)
        tids = [
            t
            for t in self._by_spec.get(key, ())
            if (r := tasks.get(t)) is not None and r["resource_specification"] is resource_specification
        ]
        if tids:
            self._by_spec[key] = tids  # forget finished records (garbage-collected by the DFK)
        else:
            self._by_spec.pop(key, None)
        if len(tids) == 1:
            return tids[0]
        launching = [t for t in tids if tasks[t]["task_launch_lock"].locked() and tasks[t]["status"] == States.pending]
        if len(launching) == 1:
            return launching[0]
        raise ParslCompatibilityError(
            f"cannot tell which Parsl task is being launched: {len(tids)} records share this resource "
            f"specification and {len(launching)} of them are launching (see parsl_adapter/taskid.py)"
        )
