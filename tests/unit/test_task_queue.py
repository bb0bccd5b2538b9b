"""TaskQueue's lookups against brute force, on heaps with stale entries in them."""

from __future__ import annotations

import random

import pytest

from dispatcher.server.tasks import TaskQueue, TaskRecord

pytestmark = pytest.mark.unit


def brute_next_held(queue: TaskQueue, n: int, asked_before: float) -> list[TaskRecord]:
    live = sorted(queue.records(), key=lambda r: (r.rank, r.seq))
    held = [r for r in live if r.payload is None and (r.fetching is None or r.fetching <= asked_before)]
    return held[:n]


@pytest.mark.parametrize("seed", range(20))
def test_next_held_is_the_first_n_held_tasks_in_rank_order(seed: int) -> None:
    rng = random.Random(seed)
    queue, other = TaskQueue("q"), TaskQueue("other")
    records = []
    for i in range(rng.randint(0, 300)):
        payload = b"x" if rng.random() < 0.5 else None
        record = TaskRecord(("c", i), None, float(rng.randint(0, 40)), payload)  # ties: arrival order
        if payload is None and rng.random() < 0.3:
            record.fetching = rng.choice((1.0, 9.0))
        queue.push(record)
        records.append(record)
    for record in rng.sample(records, len(records) // 3):  # stale entries: moved, popped, re-pushed
        match rng.randrange(3):
            case 0:
                other.push(record)
            case 1:
                queue.discard(record)
            case _:
                queue.push(record)
    for n in (0, 1, 5, 1000):
        assert queue.next_held(n, 5.0) == brute_next_held(queue, n, 5.0)
