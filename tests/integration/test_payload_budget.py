"""The dispatcher's payload budget (core rule 13) with real processes: large tasks past the budget
wait with their client and are fetched when their node is about to run them; nothing is lost,
nothing runs twice, each node starts its tasks in rank order, and a dispatcher restart in the
middle changes none of that."""

from __future__ import annotations

import random
import signal
from collections import defaultdict
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

from dispatcher import LocalCluster

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

SIZE = 200_000
BUDGET = ["--max-memory", "4M"]
"""Payloads may hold 2 MB (10 tasks); a client may send 0.5 MB (2 tasks) ahead: the rest go HELD."""


def _check(futures: list[Future[Any]], placed: list[tuple[str, int]]) -> None:
    _, not_done = wait(futures, timeout=240)
    assert not not_done, f"{len(not_done)} futures unresolved"
    starts: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (future, (node, rank)) in enumerate(zip(futures, placed, strict=True)):
        ran_on, value, started_ns, size = future.result()
        assert (ran_on, value, size) == (node, i, SIZE)
        starts[node].append((started_ns, rank))
    for node, started in starts.items():
        in_start_order = [rank for _, rank in sorted(started)]
        assert in_start_order == sorted(in_start_order), f"{node} started tasks out of rank order"


def test_tasks_past_the_budget_are_fetched_and_run_on_their_node_in_rank_order(logs: Path) -> None:
    rng = random.Random(7)
    n = 120
    blob = b"b" * SIZE
    with (
        LocalCluster(2, workers=1, prefetch=1, start_agents=False, log_dir=logs, dispatcher_args=BUDGET) as cluster,
        cluster.client() as client,
    ):
        ranks = list(range(n))
        rng.shuffle(ranks)
        placed = [(cluster.node_names[i % 2], ranks[i]) for i in range(n)]
        futures = [
            client.submit(apps.where_blob, i, blob, node=node, rank=rank) for i, (node, rank) in enumerate(placed)
        ]
        for name in cluster.node_names:
            cluster.start_agent(name)
        _check(futures, placed)
        status = client.status()
        assert client.held_sent > 0, "no task went HELD: the budget was not exercised"
        assert client.payloads_fetched >= client.held_sent
        assert client.resolutions_ignored == 0
    assert status.tasks_submitted == status.tasks_resolved == n
    assert status.duplicates_dropped == 0


def test_a_dispatcher_killed_while_tasks_wait_with_their_client_loses_none(logs: Path) -> None:
    n = 80
    blob = b"b" * SIZE
    with (
        LocalCluster(1, workers=1, log_dir=logs, dispatcher_args=BUDGET) as cluster,
        cluster.client() as client,
    ):
        node = cluster.node_names[0]
        futures = [client.submit(apps.where_blob, i, blob, node=node, rank=i) for i in range(n)]
        futures[n // 4].result(timeout=120)
        client_port = int(cluster.client_url.rsplit(":", 1)[1])
        agent_port = int(cluster.agent_url.rsplit(":", 1)[1])
        cluster.kill_dispatcher(signal.SIGKILL)
        cluster.start_dispatcher(client_port, agent_port)
        _, not_done = wait(futures, timeout=240)
        assert not not_done, f"{len(not_done)} futures unresolved"
        for i, future in enumerate(futures):
            ran_on, value, _, size = future.result()
            assert (ran_on, value, size) == (node, i, SIZE)
        assert client.resends >= 1
        assert client.held_sent > 0
        assert client.resolutions_ignored == 0
