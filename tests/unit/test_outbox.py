"""The Client's hand-off to its I/O thread: the wake-up rule, step by step.

Each test is a transcript of the two sides' calls in one order; the box's lock makes each call
one step, so these orders are the only ones there are."""

from __future__ import annotations

import pytest

from dispatcher.client.errors import DispatcherUnavailable
from dispatcher.client.outbox import Outbox

pytestmark = pytest.mark.unit


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def box(coalesce_tasks: int = 4) -> tuple[Outbox[str], Wakes]:
    wakes = Wakes()
    return Outbox(wakes, coalesce_tasks), wakes


def test_the_first_post_wakes_and_a_stream_of_posts_wakes_once() -> None:
    outbox, wakes = box()
    outbox.put("a")
    outbox.put("b")
    assert wakes.count == 1
    assert outbox.take() == ["a", "b"]


def test_a_post_after_the_io_thread_found_nothing_wakes_it() -> None:
    """The lost wake-up: the I/O thread finds the box empty, then a post comes. The post must
    write a wake-up byte, or the task waits for the next poll timeout. Finding nothing and no
    longer listening is one step (``take``), so no post can come between them."""
    outbox, wakes = box()
    outbox.put("a")
    assert outbox.take() == ["a"]
    assert outbox.take() == []  # found nothing: the I/O thread goes back to poll
    outbox.put("b")
    assert wakes.count == 2
    assert outbox.take() == ["b"]


def test_held_tasks_stay_armed_until_a_frame_is_worth_sending() -> None:
    outbox, wakes = box(coalesce_tasks=3)
    outbox.put("a")
    assert outbox.take(hold=lambda n: True) is None  # Nagle's rule holds them
    outbox.put("b")
    assert wakes.count == 1  # the I/O thread has a timer for held tasks: no byte
    outbox.put("c")  # the third makes a frame worth sending at once
    assert wakes.count == 2
    assert outbox.take(hold=lambda n: n < 3) == ["a", "b", "c"]


def test_an_urgent_post_is_never_held() -> None:
    outbox, wakes = box()
    outbox.put("task")
    assert outbox.take(hold=lambda n: True) is None
    outbox.put("cancel", urgent=True)
    outbox.put("repin", urgent=True)
    assert wakes.count == 2  # the first urgent post wakes; the next finds it already urgent
    assert outbox.take(hold=lambda n: True) == ["task", "cancel", "repin"]  # in order, not held
    outbox.put("task 2")
    assert outbox.take(hold=lambda n: True) is None  # urgency ended with the take


def test_close_hands_over_what_is_left_and_refuses_later_posts() -> None:
    outbox, _ = box()
    outbox.put("a")
    outbox.put("b", urgent=True)
    assert outbox.close("the I/O thread failed") == ["a", "b"]
    assert outbox.closed == "the I/O thread failed"
    with pytest.raises(DispatcherUnavailable, match="the I/O thread failed"):
        outbox.put("c")
    assert outbox.take() == []
    assert outbox.posted_tasks == 1  # the refused post is not counted


def test_posted_tasks_counts_only_tasks() -> None:
    outbox, _ = box()
    outbox.put("task")
    outbox.put("query", urgent=True)
    outbox.put("task")
    assert outbox.posted_tasks == 2
