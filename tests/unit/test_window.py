"""The executor's policies as tables: when to plan, and release order per node."""

from __future__ import annotations

import pytest

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


def test_non_gating_tasks_neither_wait_nor_hold_back() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 0.0), (2, "a", 1.0), (3, "a", 2.0)], gating={1, 3})
    assert order.ready(2) == [2]
    assert order.ready(3) == []
    assert order.ready(1) == [1, 3]


def test_plans_do_not_wait_for_each_other_and_retries_leave_at_once() -> None:
    order = ReleaseOrder()
    order.add_plan(1, [(1, "a", 5.0)], gating={1})
    order.add_plan(2, [(2, "a", 0.0), (3, "a", 1.0)], gating={2, 3})
    assert order.ready(2) == [2]
    assert order.ready(1) == [1]
    assert order.ready(1) == [1]  # a retry of a released task
    assert order.ready(99) == [99]  # never planned here
