"""The standalone Client's sending rules, against a real dispatcher and agent.

Nagle's rule for frames (``client.send_now``): a task posted when no result has come back since
the last frame waits up to ``coalesce_s`` to share a frame, unless a result comes back first; a
client's first task, or one posted after everything came back, leaves at once. Whatever is held,
a Cancel or Repin posted after a task goes after it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dispatcher import LocalCluster, TaskCancelled

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def test_tasks_posted_while_others_run_share_a_frame(logs: Path) -> None:
    with LocalCluster(1, workers=1, log_dir=logs) as cluster, cluster.client(coalesce_s=0.3) as client:
        node = cluster.node_names[0]
        long = client.submit(apps.slow_where, -1, 1.0, node=node)
        while client.submit_frames == 0:  # nothing was in flight: it left at once
            time.sleep(0.001)
        frames = client.submit_frames
        futures = []
        for i in range(20):  # a trickle: each alone would be a frame without the rule
            futures.append(client.submit(apps.square, i, node=node))
            time.sleep(0.002)
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(20)]
        assert long.result(timeout=30)[:2] == (node, -1)
        assert client.submit_frames - frames <= 2, f"20 trickled tasks took {client.submit_frames - frames} frames"


def test_a_lone_task_is_not_held(logs: Path) -> None:
    with LocalCluster(1, workers=1, log_dir=logs) as cluster, cluster.client(coalesce_s=5.0) as client:
        for x in (7, 8):  # the first frame ever, then one after everything came back
            started = time.monotonic()
            assert client.submit(apps.square, x).result(timeout=30) == x * x
            assert time.monotonic() - started < 2.5, f"task {x}, posted with nothing in flight, was held"


def test_a_result_coming_back_lets_held_tasks_go(logs: Path) -> None:
    with LocalCluster(1, workers=2, log_dir=logs) as cluster, cluster.client(coalesce_s=5.0) as client:
        client.submit(apps.square, 1).result(timeout=30)
        started = time.monotonic()
        running = client.submit(apps.slow_where, 0, 0.3)  # a result came back: it leaves at once
        while client.submit_frames < 2:
            time.sleep(0.001)
        held = client.submit(apps.square, 3)  # none since that frame: held until one does (or 5 s)
        assert held.result(timeout=30) == 9
        assert running.done()
        assert time.monotonic() - started < 2.5, "a held task waited for coalesce_s though a result came back"


def test_a_cancel_posted_after_its_task_reaches_the_dispatcher_after_it(logs: Path) -> None:
    """The task is held (another is in flight); the Cancel must not overtake it, or the
    dispatcher would ignore the Cancel (unknown task) and then run the task. No prefetch: the task
    stays in the dispatcher's queue while the worker is busy, where a Cancel can still drop it."""
    with LocalCluster(1, workers=1, prefetch=0, log_dir=logs) as cluster, cluster.client(coalesce_s=5.0) as client:
        node = cluster.node_names[0]
        running = client.submit(apps.slow_where, 0, 0.5, node=node)
        while client.submit_frames == 0:
            time.sleep(0.001)
        doomed = client.submit(apps.square, 4, node=node)
        client.cancel(doomed)
        with pytest.raises(TaskCancelled):
            doomed.result(timeout=30)
        assert running.result(timeout=30)[:2] == (node, 0)
        assert client.submit(apps.square, 5, node=node).result(timeout=30) == 25
