"""The soft-affinity stealing policy as a table: views in, moves out."""

from __future__ import annotations

import pytest

from dispatcher.server.stealing import Move, ThiefView, VictimView, gain_s, plan_steals

pytestmark = pytest.mark.unit


def victim(name: str, backlog: int, *, speed: float = 1.0, slots: int = 1, runtime_s: float = 1.0) -> VictimView:
    return VictimView(
        name, speed, slots, runtime_s,
        [(("c", 100 - i), "queued") for i in range(backlog)], waiting=backlog,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("backlog", "thief_speed", "penalty_s", "expected_moves"),
    [
        (0, 1.0, 0.01, 0),  # nothing waiting
        (1, 1.0, 0.01, 0),  # next in line: starting it elsewhere gains nothing
        (2, 1.0, 0.01, 1),  # one waits a whole runtime: worth moving the last one
        (5, 1.0, 0.01, 2),  # the thief has 2 free slots
        (5, 0.25, 0.01, 1),  # a 4x slower thief: only the very last task is worth it
        (5, 1.0, 10.0, 0),  # transfer dearer than the wait
    ],
)
def test_how_many_tasks_move(backlog: int, thief_speed: float, penalty_s: float, expected_moves: int) -> None:
    moves = plan_steals([victim("busy", backlog)], [ThiefView("idle", thief_speed, 2)], penalty_s)
    assert len(moves) == expected_moves


def test_moves_take_the_back_of_the_line_first() -> None:
    moves = plan_steals([victim("busy", 4)], [ThiefView("idle", 1.0, 2)], 0.0)
    assert moves == [Move(("c", 100), "busy", "idle", "queued"), Move(("c", 99), "busy", "idle", "queued")]


def test_the_busiest_victim_is_relieved_first() -> None:
    moves = plan_steals([victim("a", 2), victim("b", 6)], [ThiefView("idle", 1.0, 2)], 0.0)
    assert [m.victim for m in moves] == ["b", "b"]


def test_a_node_never_robs_itself() -> None:
    assert plan_steals([victim("a", 6)], [ThiefView("a", 1.0, 3)], 0.0) == []


def test_gain_accounts_for_relative_speed() -> None:
    slow, fast = victim("slow", 3, speed=1.0), ThiefView("fast", 4.0, 1)
    assert gain_s(slow, fast, 1, 0.0) == pytest.approx(1.0 - 0.25)
