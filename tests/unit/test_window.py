"""The executor's policies as tables: when to plan, and release order per node."""

from __future__ import annotations

import pytest

from parsl_adapter.costs import hints_or_default
from parsl_adapter.dag import Captured, holds_back
from parsl_adapter.window import ReleaseOrder, WindowConfig, should_plan

pytestmark = pytest.mark.unit

CFG = WindowConfig(flush_idle_s=0.02, plan_idle_s=1.0, max_held=100, max_delay_s=0.005)


@pytest.mark.parametrize(
    ("now", "held", "oldest", "last_activity", "holding", "busy", "expected"),
    [
        (10.0, 0, 0.0, 0.0, False, False, False),  # nothing held
        (10.0, 1, 10.0, 10.0, False, False, True),  # idle executor: a lone task goes at once
        (10.0, 5, 9.999, 9.999, False, True, False),  # a stream: batch it
        (10.0, 5, 9.994, 9.999, False, True, True),  # ... but the oldest waited max_delay_s
        (10.0, 5, 9.999, 9.97, False, True, True),  # registrations paused for flush_idle_s
        (10.0, 5, 9.0, 9.5, True, False, False),  # inside plan(): hold, even when idle
        (10.0, 5, 9.0, 9.0, True, True, True),  # inside plan() but idle for plan_idle_s: a .result() inside the block
        (10.0, 100, 10.0, 10.0, True, True, True),  # too many held
    ],
)
def test_when_to_plan(
    now: float, held: int, oldest: float, last_activity: float, holding: bool, busy: bool, expected: bool
) -> None:
    assert (
        should_plan(
            now, held=held, oldest_held_at=oldest, last_activity=last_activity, holding=holding, busy=busy, config=CFG
        )
        is expected
    )


def test_ready_tasks_leave_in_rank_order_per_node() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 0.0), (2, "a", 1.0), (3, "a", 2.0), (4, "b", 0.5)], gating={1, 2, 3, 4})
    assert order.ready(3) == []  # 1 and 2 first
    assert order.ready(4) == [4]  # another node is not held back
    assert order.ready(1) == [1]
    assert order.blocking() == [2]
    assert order.ready(2) == [2, 3]
    assert order.waiting == 0


def test_a_task_that_will_never_launch_stops_holding_others_back() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 0.0), (2, "a", 1.0)], gating={1, 2})
    assert order.ready(2) == []
    assert order.gone(1) == [2]


def test_non_gating_tasks_wait_their_turn_but_hold_nobody_back() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 0.0), (2, "a", 1.0), (3, "a", 2.0), (4, "a", 3.0)], gating={1, 4})
    assert order.ready(2) == []  # behind 1
    assert order.ready(1) == [1, 2]
    assert order.ready(4) == [4]  # 3 (non-gating, not launched yet) is not waited for
    assert order.ready(3) == [3]


def test_plans_do_not_wait_for_each_other_and_retries_leave_at_once() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 5.0)], gating={1})
    order.add_plan(2, [(2, "a", 0.0), (3, "a", 1.0)], gating={2, 3})
    assert order.ready(2) == [2]
    assert order.ready(1) == [1]
    assert order.ready(1) == [1]  # a retry of a released task
    assert order.ready(99) == [99]  # never planned here


def _captured(tid: int, parents: set[int], gating: bool = True) -> Captured:
    return Captured(tid, "f", hints_or_default(None), frozenset(parents), gating)


def test_only_tasks_still_waiting_on_planned_tasks_of_ours_hold_others_back() -> None:
    planning, planned = {1, 2, 3, 4}, {10}
    assert holds_back(_captured(2, {1}), planning, planned)  # waits on a task of this plan
    assert holds_back(_captured(3, {10}), planning, planned)  # on one of an earlier plan
    # Nothing left to wait on: Parsl launches it now, in whatever order SAGA's ties fall.
    assert not holds_back(_captured(1, set()), planning, planned)
    assert not holds_back(_captured(4, {99}), planning, planned)  # its parent is not planned yet
    assert not holds_back(_captured(4, {1}, gating=False), planning, planned)  # waits on a join app


def test_a_launched_independent_task_is_not_held_behind_an_unlaunched_one() -> None:
    """SAGA ranks independent equal-cost tasks in an arbitrary order (here 2 before 1): the one
    Parsl launched first leaves at once instead of waiting for the window's last launch; but
    it still waits behind an earlier-ranked task that waits on its parent (3, rank 0.5)."""
    planning = {1, 2, 3, 4, 5}
    tasks = {
        1: _captured(1, set()),
        2: _captured(2, set()),
        3: _captured(3, {9}),
        4: _captured(4, set()),
        5: _captured(5, set()),
    }
    gating = {t for t, c in tasks.items() if holds_back(c, planning | {9}, set())}
    assert gating == {3}
    order = ReleaseOrder()
    order.add_plan(1, [(2, "a", 0.0), (1, "a", 1.0), (4, "b", 0.0), (5, "b", 1.0)], gating)
    assert order.ready(1) == [1]
    assert order.ready(5) == [5]
    order.add_plan(2, [(2, "a", 0.0), (3, "a", 0.5), (1, "a", 1.0)], gating)
    assert order.ready(2) == [2]
    assert order.ready(1) == []  # behind 3, which waits on its parent
    assert order.blocking() == [3]
    assert order.ready(3) == [3, 1]
    assert order.ready(2) == [2]  # a retry leaves at once
