"""Which Parsl task is this? Recovering the task id in ``executor.submit()`` from stock Parsl.

The ParslExecutor API passes ``submit(func, resource_specification, *args, **kwargs)`` and no
task id. What stock Parsl (2026.10.26) guarantees, and this module relies on:

1. ``DataFlowKernel.launch_task`` passes ``task_record['resource_specification']`` itself — the
   same dict object stored in the task record — as the ``resource_specification`` argument.
2. Records are registered in ``dfk.tasks`` (keyed by task id, ids counted by ``dfk.task_count``)
   before they can launch.
3. Launches happen on one thread (``dfk._task_launch_pool`` has one worker), inside
   ``with task_record['task_launch_lock']`` while the record is still ``States.pending``.

One subtlety: ``dfk.submit`` counts ``task_count`` up *before* it stores the record, so a scan can
meet an id whose record is still being built. The scan never moves its cursor past a missing
record among the newest ``_IN_FLIGHT_WINDOW`` ids (an older missing record was garbage-collected
after finishing), and a lookup that misses rescans everything once before giving up.

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

_IN_FLIGHT_WINDOW = 256


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


def new_records(dfk: Any, cursor: int) -> tuple[list[tuple[int, Any]], int]:
    """Records registered from task id ``cursor`` on, and where the next scan should start.

    The cursor never passes a missing record among the newest ``_IN_FLIGHT_WINDOW`` ids (it may
    still be being stored: ``dfk.submit`` counts ``task_count`` up first); an older missing
    record finished and was garbage-collected."""
    tasks = dfk.tasks
    end = dfk.task_count
    stop = end
    out = []
    for tid in range(cursor, end):
        record = tasks.get(tid)
        if record is None:
            if tid >= end - _IN_FLIGHT_WINDOW:
                stop = min(stop, tid)  # maybe still being registered: look again next time
            continue
        out.append((tid, record))
    return out, stop


class TaskIdResolver:
    """Maps the ``resource_specification`` passed to ``submit()`` back to its Parsl task id."""

    def __init__(self, dfk: Any, label: str) -> None:
        self.dfk = dfk
        self.label = label
        self._by_spec: dict[int, list[int]] = {}
        self._cursor = 0

    def _index(self, tid: int, record: Any) -> None:
        if record["executor"] == self.label:
            tids = self._by_spec.setdefault(id(record["resource_specification"]), [])
            if tid not in tids:
                tids.append(tid)

    def _index_new_records(self) -> None:
        records, self._cursor = new_records(self.dfk, self._cursor)
        for tid, record in records:
            self._index(tid, record)

    def _matches(self, resource_specification: object) -> list[int]:
        tasks = self.dfk.tasks
        return [
            t
            for t in self._by_spec.get(id(resource_specification), ())
            if (r := tasks.get(t)) is not None and r["resource_specification"] is resource_specification
        ]

    def resolve(self, resource_specification: object) -> int:
        self._index_new_records()
        tids = self._matches(resource_specification)
        if not tids:  # should not happen; be robust to an unforeseen ordering before giving up
            for tid, record in list(self.dfk.tasks.items()):
                if record["resource_specification"] is resource_specification:
                    self._index(tid, record)
            tids = self._matches(resource_specification)
        key = id(resource_specification)
        if tids:
            self._by_spec[key] = tids  # forget finished records (garbage-collected by the DFK)
        else:
            self._by_spec.pop(key, None)
        if len(tids) == 1:
            return tids[0]
        tasks = self.dfk.tasks
        launching = [  # a record may be dropped meanwhile: its task finished on another thread
            t
            for t in tids
            if (r := tasks.get(t)) is not None and r["task_launch_lock"].locked() and r["status"] == States.pending
        ]
        if len(launching) == 1:
            return launching[0]
        raise ParslCompatibilityError(
            f"cannot tell which Parsl task is being launched: {len(tids)} records share this resource "
            f"specification and {len(launching)} of them are launching (see parsl_adapter/taskid.py)"
        )
