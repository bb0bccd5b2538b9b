"""The plan cache: a hit is exactly what SAGA returns for the same canonical input."""

from __future__ import annotations

import random

import pytest

from parsl_adapter.placement import Edge, Graph, Network, Placed, Task, graph_from, plan
from parsl_adapter.plancache import PlanCache, canonical, restore, rounded

pytestmark = pytest.mark.unit

NET = Network((("a", 1.0), ("b", 2.0), ("c", 4.0)), 1e6)


def _dag(names: list[str], seed: int, min_start_s: float) -> Graph:
    rng = random.Random(seed)
    tasks = tuple(Task(n, rng.choice([0.5, 1.0, 2.0])) for n in names)
    edges = tuple(
        Edge(names[i], names[j], rng.choice([0.0, 1e6]))
        for j in range(len(names))
        for i in range(j)
        if rng.random() < 0.3
    )
    return Graph(tasks, edges, min_start_s=min_start_s)


@pytest.mark.parametrize("scheduler", ["HEFT", "CPOP", "MinMin"])
def test_a_hit_is_saga_on_the_canonical_graph_renamed_and_shifted(scheduler: str) -> None:
    cache = PlanCache()
    first = _dag([str(i) for i in range(10, 22)], seed=3, min_start_s=5.0)
    canon = canonical(first, NET, scheduler)
    assert canon is not None and cache.get(canon) is None
    cache.put(canon, plan(canon.graph, NET, scheduler))
    # Same shape, other task ids, later clock: served from the cache...
    later = _dag([str(i) for i in range(100, 112)], seed=3, min_start_s=40.0)
    hit = cache.get(canonical(later, NET, scheduler))
    assert hit is not None and cache.hits == 1
    # ... and equal to SAGA asked afresh for that canonical input, renamed and shifted.
    later_canon = canonical(later, NET, scheduler)
    assert later_canon is not None
    fresh = restore(plan(later_canon.graph, NET, scheduler), later_canon)
    assert hit == fresh
    assert min(p.start_s for p in hit.placed.values()) >= 40.0
    assert set(hit.placed) == {t.name for t in later.tasks}


def test_costs_are_rounded_so_estimates_that_jitter_share_a_plan() -> None:
    assert rounded(0.0123456) == 0.012
    assert rounded(1234.5) == 1200.0
    a = canonical(graph_from([("1", 0.0101)]), NET, "HEFT")
    b = canonical(graph_from([("2", 0.0104)]), NET, "HEFT")
    c = canonical(graph_from([("3", 0.02)]), NET, "HEFT")
    assert a is not None and b is not None and c is not None
    assert a.key == b.key != c.key


def test_what_is_not_memoized() -> None:
    fixed = Graph((Task("2", 1.0),), (Edge("1", "2", 0.0),), {"1": Placed("a", 0.0, 1.0)}, {"1": 1.0})
    assert canonical(fixed, NET, "HEFT") is None  # anchored to an earlier plan
    assert canonical(graph_from([("1", 1.0)]), NET, object()) is None  # a scheduler instance
    assert canonical(graph_from([("1", 1.0)]), Network((("a", 1.0),), 1e6), "HEFT") != canonical(
        graph_from([("1", 1.0)]), NET, "HEFT"
    )  # another network is another key


def test_the_cache_is_bounded_lru() -> None:
    cache = PlanCache(size=2)
    canons = [canonical(graph_from([(str(i), float(k))]), NET, "HEFT") for i, k in enumerate([1, 2, 3])]
    for canon in canons:
        assert canon is not None
        cache.put(canon, plan(canon.graph, NET, "HEFT"))
    assert cache.get(canons[0]) is None
    assert cache.get(canons[2]) is not None
    assert PlanCache(size=0).get(canons[2]) is None
