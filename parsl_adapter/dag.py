"""The task graph as Parsl registered it: ``dfk.tasks`` records and their ``depends`` futures.

Only tasks of this executor become graph nodes. A dependency on any other task — an internal one
(``future[...]``, file staging), a join app, a task of another executor — is looked through to
the tasks of ours it depends on, so ``A -> getitem -> B`` becomes ``A -> B``. A dependency that is
already done needs no edge: its data exists.

A task is *gating* when all its unfinished dependencies lead only through plain internal tasks
to tasks of ours. Only gating tasks can hold back later-ranked tasks on their node (see
``window.ReleaseOrder`` and :func:`holds_back`): a task that waits on a join app, on another
executor or on a bare Future may wait on work no plan knows about yet, and holding others behind
it could deadlock.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from parsl_adapter.costs import Hints, hints_or_default

INTERNAL: Final = "_parsl_internal"


@dataclass(frozen=True, slots=True)
class Captured:
    tid: int
    function: str
    hints: Hints
    parents: frozenset[int]
    gating: bool


def capture(records: Mapping[int, Mapping[str, Any]], label: str, tids: Iterable[int]) -> dict[int, Captured]:
    """Graph nodes for ``tids`` (tasks of executor ``label``), with their collapsed parents."""
    out: dict[int, Captured] = {}
    for tid in tids:
        record = records.get(tid)
        if record is None:
            continue
        parents, gating = _parents(records, label, record.get("depends", ()))
        out[tid] = Captured(
            tid,
            str(record.get("func_name", "?")),
            hints_or_default(record.get("resource_specification")),
            frozenset(parents),
            gating,
        )
    return out


def _parents(
    records: Mapping[int, Mapping[str, Any]], label: str, depends: Iterable[Future[Any]]
) -> tuple[set[int], bool]:
    parents: set[int] = set()
    gating = True
    seen: set[int] = set()
    stack = list(depends)
    while stack:
        future = stack.pop()
        if future.done():
            continue
        tid = getattr(future, "tid", None)
        record = records.get(tid) if isinstance(tid, int) else None
        if record is None:  # a bare Future, or a task of another DFK
            gating = False
            continue
        if tid in seen:
            continue
        seen.add(tid)  # type: ignore[arg-type]
        executor = record.get("executor")
        if executor == label:
            parents.add(tid)  # type: ignore[arg-type]
            continue
        if executor != INTERNAL or record.get("join"):
            gating = False
        stack.extend(record.get("depends", ()))
    return parents, gating


def holds_back(task: Captured, planning: Container[int], planned: Container[int]) -> bool:
    """Whether ``task``, once planned, holds later-ranked tasks of its plan on its node back until
    it launches (``planning``: the tasks of this plan; ``planned``: those of earlier plans).

    Only a task that still waits on tasks of ours does. One with nothing left to wait on is being
    launched by Parsl now, and SAGA's order among such tasks (equal costs, no edges) is arbitrary:
    holding a window's launched tasks behind the one Parsl happens to launch last would idle the
    node while Parsl launches the rest. A task that waits on one no plan holds yet (it will be
    planned later) does not either: that later plan's release order could wait on it.
    """
    return task.gating and bool(task.parents) and all(q in planning or q in planned for q in task.parents)
