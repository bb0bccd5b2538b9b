"""SagaDispatchExecutor under stock Parsl: whole-DAG placement, fidelity, order, errors."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl import Config, python_app

from chaos import workload
from dispatcher import DispatcherUnavailable, LocalCluster
from parsl_adapter import NoLiveNodes, PlanningError, SagaDispatchExecutor

from . import dag_apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

SPEEDS = [1.0, 1.0, 2.0, 4.0]


def load(executor: SagaDispatchExecutor, tmp_path: Path, **config: Any) -> Any:
    return parsl.load(
        Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), **{"initialize_logging": False, **config})
    )


def layered_dag(n: int, seed: int) -> list[tuple[int, list[int], float]]:
    return workload.dag(n, seed, width=(4, 40), cost_s=(0.0005, 0.004))


@pytest.mark.parametrize("scheduler", ["HEFT", "CPOP", "MinMin", "ETF"])
def test_1000_task_dag_runs_every_task_on_its_planned_node_in_rank_order(scheduler: str, tmp_path: Path) -> None:
    dag = layered_dag(1000, seed=7)
    ex = SagaDispatchExecutor(scheduler=scheduler, local_nodes=4, local_speeds=SPEEDS, workers_per_node=1)
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        futures: dict[int, Any] = {}
        with ex.plan():
            for t, parents, cost in dag:
                futures[t] = app(t, *[futures[p] for p in parents], parsl_resource_specification={"cost": cost})
        results = {t: f.result(timeout=300) for t, f in futures.items()}
        tids = {t: f.tid for t, f in futures.items()}
        planned = {t: ex.planned(tids[t]) for t in futures}
        first = {t: ex.first_planned_node(tids[t]) for t in futures}
        plans = list(ex.plans)
        timeline = {entry.task_id: entry for entry in ex.timeline()}
        t0 = ex._t0
    expected = workload.expected(dag)
    by_node: dict[str, list[tuple[int, float]]] = defaultdict(list)
    assert len(timeline) == len(dag)
    for t, (ran_on, value, started_ns) in results.items():
        assert value == expected[t], t
        p = planned[t]
        assert p is not None, t
        assert ran_on == p.node, f"task {t} planned on {p.node} ran on {ran_on}"
        by_node[ran_on].append((started_ns, p.rank))
        # The timeline says what planned() says, and what the worker reported.
        entry = timeline[tids[t]]
        assert (entry.planned_node, entry.planned_start_s, entry.planned_end_s) == (p.node, p.rank, p.end)
        assert entry.first_planned_node == first[t] == p.node and not entry.replanned and not entry.moved
        assert entry.node == ran_on and entry.ok and entry.epoch == p.epoch
        assert 0 <= entry.start_s <= entry.end_s < 600  # seconds since the executor started, as the ranks
        assert started_ns / 1e9 - t0 <= entry.end_s  # it started before its result reached the executor
        assert entry.start_s - (started_ns / 1e9 - t0) > -1.0  # its start: where the worker said it began
    for node, starts in by_node.items():
        ranks = [rank for _, rank in sorted(starts)]
        assert ranks == sorted(ranks), f"{node} started tasks out of rank order"
    assert len(by_node) >= 3, f"{scheduler} used only {sorted(by_node)}"
    assert plans[0]["tasks"] == 1000 and len(plans) == 1, plans


def test_the_dag_is_planned_whole_before_deep_tasks_can_run(tmp_path: Path) -> None:
    """A chain's last task is placed by the first plan, while its first task is still running."""
    ex = SagaDispatchExecutor(local_nodes=2, local_speeds=[1.0, 2.0])
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        gate: Future[tuple[str, int, int]] = Future()  # the chain is registered before it launches
        first = app(0, gate, parsl_resource_specification={"cost": 0.5})
        chain = [first]
        for i in range(1, 10):
            chain.append(app(i, chain[-1], parsl_resource_specification={"cost": 0.01}))
        gate.set_result(("gate", 0, 0))
        deadline = time.monotonic() + 30
        while ex.planned(chain[-1].tid) is None:
            assert time.monotonic() < deadline, "the deep task was never planned"
            time.sleep(0.01)
        assert not first.done(), "the first task finished before the deep one was planned"
        deep = ex.planned(chain[-1].tid)
        assert deep is not None and deep.epoch == 1
        assert ex.plans[0]["tasks"] == 10
        assert chain[-1].result(timeout=60)[1] == sum(range(10))
        assert len(ex.plans) == 1


def test_recovered_task_ids_match_parsl_ids_even_with_shared_resource_specs(tmp_path: Path) -> None:
    """Guards parsl_adapter/taskid.py: if a Parsl upgrade breaks the mechanism, this fails loudly."""
    ex = SagaDispatchExecutor(local_nodes=2)
    shared = {"cost": 0.001}
    with load(ex, tmp_path, garbage_collect=False) as dfk:
        app = python_app(workload.task, executors=[ex.label])
        futures = [app(i, parsl_resource_specification=shared) for i in range(30)]  # one dict, 30 tasks
        futures += [app(i) for i in range(30, 60)]  # the app's shared default
        futures += [app(i, futures[i], parsl_resource_specification={"cost": 0.001}) for i in range(30)]
        for f in futures:
            f.result(timeout=60)
        for f in futures:
            record = dfk.tasks[f.tid]
            assert record["exec_fu"].parsl_executor_task_id == f.tid
            assert ex.ran_on(f.tid) == f.result()[0] == ex.planned_node(f.tid)


def test_result_inside_plan_block_does_not_deadlock(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=2, plan_idle_s=0.2)
    with load(ex, tmp_path):
        add = python_app(dag_apps.add, executors=[ex.label])
        with ex.plan():
            assert add(1, 2).result(timeout=30) == 3


def test_tasks_registered_after_a_plan_are_placed_incrementally(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=2, local_speeds=[1.0, 2.0])
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        first = [app(i, parsl_resource_specification={"cost": 0.01}) for i in range(5)]
        assert [f.result(timeout=30)[1] for f in first] == list(range(5))
        later = app(100, *first, parsl_resource_specification={"cost": 0.01})
        assert later.result(timeout=30)[1] == 100 + sum(range(5))
        early_plan, late_plan = ex.planned(first[0].tid), ex.planned(later.tid)
        assert early_plan is not None and late_plan is not None
        assert late_plan.epoch > early_plan.epoch
        assert late_plan.rank >= max(p.end for f in first if (p := ex.planned(f.tid)) is not None)


def test_remote_exceptions_reraise_as_in_parsl(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=1)
    with load(ex, tmp_path):
        boom = python_app(dag_apps.boom, executors=[ex.label])
        with pytest.raises(ArithmeticError, match="kaput"):
            boom("kaput").result(timeout=30)


@pytest.mark.parametrize("bad", [-1, "fast", float("nan"), True])
def test_a_bad_cost_hint_fails_that_task_with_a_clear_error(bad: object, tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=1)
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        good = app(1, parsl_resource_specification={"cost": 0.001})
        with pytest.raises(ValueError, match=r"parsl_resource_specification\['cost'\] must be a non-negative number"):
            app(2, parsl_resource_specification={"cost": bad}).result(timeout=30)
        assert good.result(timeout=30)[1] == 1


def test_an_unknown_scheduler_name_fails_in_the_config() -> None:
    with pytest.raises(PlanningError, match="unknown SAGA scheduler 'HEFTY'"):
        SagaDispatchExecutor(scheduler="HEFTY")


def test_a_missing_dispatcher_is_a_clear_error_at_load(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(address="tcp://127.0.0.1:9", connect_timeout_s=1.0)
    with pytest.raises(DispatcherUnavailable, match=re.escape("no dispatcher answered at tcp://127.0.0.1:9")):
        load(ex, tmp_path)
    parsl.clear()


def test_no_live_node_fails_held_tasks_explicitly(tmp_path: Path) -> None:
    with LocalCluster(1, start_agents=False, log_dir=tmp_path / "logs") as cluster:
        ex = SagaDispatchExecutor(address=cluster.client_url, node_wait_timeout_s=1.0, keys=str(cluster.keys_dir))
        with load(ex, tmp_path):
            add = python_app(dag_apps.add, executors=[ex.label])
            with pytest.raises(NoLiveNodes, match="no node registered with the dispatcher within 1 s"):
                add(1, 2).result(timeout=30)


def test_submit_never_blocks_while_a_plan_is_running(tmp_path: Path) -> None:
    """The DFK calls submit() under its global lock: it must return at once even mid-plan."""
    ex = SagaDispatchExecutor(local_nodes=2)
    with load(ex, tmp_path):
        add = python_app(dag_apps.add, executors=[ex.label])
        slowest = 0.0
        lock = threading.Lock()
        original = ex.submit

        def timed(*args: Any, **kwargs: Any) -> Any:
            nonlocal slowest
            started = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                with lock:
                    slowest = max(slowest, time.monotonic() - started)

        ex.submit = timed  # type: ignore[method-assign]
        futures = [add(i, i) for i in range(2000)]
        assert [f.result(timeout=120) for f in futures] == [2 * i for i in range(2000)]
    assert slowest < 0.25, f"submit() took {slowest:.3f} s"


@pytest.mark.parametrize("recipe", ["montage", "epigenomics"])
def test_demo_command_reports_full_fidelity(recipe: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "dispatcher", "demo", "--recipe", recipe, "--tasks", "60"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "placement fidelity: " in proc.stdout
    ran, total = proc.stdout.split("placement fidelity: ")[1].split(" ")[0].split("/")
    assert ran == total
    assert "makespan: planned" in proc.stdout


def test_a_killed_node_s_work_is_replanned_and_finishes_elsewhere(tmp_path: Path) -> None:
    dag = layered_dag(300, seed=3)
    ex = SagaDispatchExecutor(local_nodes=4, local_speeds=SPEEDS, workers_per_node=1)
    with load(ex, tmp_path):
        assert ex.cluster is not None
        app = python_app(workload.task, executors=[ex.label])
        futures: dict[int, Any] = {}
        with ex.plan():
            for t, parents, cost in dag:
                futures[t] = app(t, *[futures[p] for p in parents], parsl_resource_specification={"cost": cost * 4})
        victim = "local-3"  # the fastest node: HEFT gives it the most work
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures.values()) < 60:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        planned_before = {t: ex.planned_node(f.tid) for t, f in futures.items()}
        ex.cluster.kill_agent(victim)
        results = {t: f.result(timeout=120) for t, f in futures.items()}
        replans = [p for p in ex.plans if p.get("replan_of") == victim]
        timeline = {entry.task_id: entry for entry in ex.timeline()}
        tids = {t: f.tid for t, f in futures.items()}
        assert ex.duplicate_resolutions == 0
        assert ex.client is not None and ex.client.status().bad_frames == 0  # every REPIN was accepted
        assert ex.client is not None and ex.client.resolutions_ignored == 0
    expected = workload.expected(dag)
    assert {t: r[1] for t, r in results.items()} == expected
    moved = [t for t, r in results.items() if planned_before[t] == victim and r[0] != victim]
    assert moved, "nothing planned on the dead node ran elsewhere"
    for t in moved:  # re-planned: the timeline marks it, and says where it ran
        entry = timeline[tids[t]]
        assert entry.first_planned_node == victim and entry.node == results[t][0]
        assert entry.replanned or entry.moved
    assert replans and replans[0]["tasks"] > 0, ex.plans
    for t, (ran_on, _, _) in results.items():  # strict affinity: live nodes' tasks stayed home
        if planned_before[t] != victim:
            assert ran_on == planned_before[t], (t, planned_before[t], ran_on)


def test_a_no_retry_task_on_a_dying_node_fails_node_lost(tmp_path: Path) -> None:
    from dispatcher import NodeLost

    ex = SagaDispatchExecutor(local_nodes=2, local_speeds=[1.0, 1.0], workers_per_node=1)
    with load(ex, tmp_path):
        assert ex.cluster is not None
        app = python_app(workload.task, executors=[ex.label])
        future = app(1, parsl_resource_specification={"cost": 30.0, "retry_on_node_loss": False})
        deadline = time.monotonic() + 30
        while True:  # until the dispatcher has it in flight on its planned node
            node = ex.planned_node(future.tid)
            nodes = ex.client.nodes() if ex.client is not None else ()
            if node is not None and any(n.node_name == node and n.in_flight == 1 for n in nodes):
                break
            assert time.monotonic() < deadline, "the task never went out to its node"
            time.sleep(0.01)
        ex.cluster.kill_agent(node)
        with pytest.raises(NodeLost, match=f"node {node} died while running it"):
            future.result(timeout=30)


def test_a_lone_task_is_planned_at_once_and_repeated_shapes_come_from_the_plan_cache(tmp_path: Path) -> None:
    # Windows that would hold a task for a minute: only Nagle's rule (idle executor: plan now)
    # lets these sequential tasks through within their timeouts.
    ex = SagaDispatchExecutor(local_nodes=2, local_speeds=[1.0, 4.0], flush_idle_s=60.0, max_delay_s=60.0)
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        results = [app(i, parsl_resource_specification={"cost": 0.001}).result(timeout=20) for i in range(20)]
        plans = list(ex.plans)
    assert [value for _, value, _ in results] == list(range(20))
    assert {node for node, _, _ in results} == {"local-1"}  # HEFT: the fast node finishes a lone task first
    assert len(plans) == 20 and all(p["tasks"] == 1 for p in plans)
    assert not plans[0]["cached"] and all(p["cached"] for p in plans[1:])
    assert ex.plan_cache.hits == 19


def test_a_stream_is_planned_in_windows_of_at_most_max_plan_tasks(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=2, max_plan_tasks=50, workers_per_node=2)
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        futures = [app(i) for i in range(1000)]
        results = [f.result(timeout=120) for f in futures]
        planned = [ex.planned(f.tid) for f in futures]
        plans = list(ex.plans)
    assert [value for _, value, _ in results] == list(range(1000))
    assert all(p is not None and p.node == node for p, (node, _, _) in zip(planned, results, strict=True))
    assert sum(p["tasks"] for p in plans) == 1000
    assert max(p["tasks"] for p in plans) <= 50


def test_finished_tasks_are_forgotten_beyond_history_size(tmp_path: Path) -> None:
    """A long run's per-task state stays bounded: only the latest finished tasks keep theirs."""
    ex = SagaDispatchExecutor(local_nodes=2, history_size=5)
    with load(ex, tmp_path):
        app = python_app(workload.task, executors=[ex.label])
        futures = [app(i) for i in range(20)]
        nodes = [f.result(timeout=60)[0] for f in futures]  # each resolves after its history entry
        remembered = [(ex.planned_node(f.tid), ex.ran_on(f.tid)) for f in futures]
    assert sum(1 for r in remembered if r != (None, None)) == 5
    kept = [i for i, r in enumerate(remembered) if r != (None, None)]
    assert all(remembered[i] == (nodes[i], nodes[i]) for i in kept)


def test_a_retried_task_counts_once_in_the_history(tmp_path: Path) -> None:
    """A task that finishes twice (failed, then retried by Parsl) keeps its place in the history
    until ``history_size`` other tasks have finished after its last run."""
    ex = SagaDispatchExecutor(local_nodes=2, history_size=3)
    with load(ex, tmp_path, retries=1):
        retried = python_app(dag_apps.fail_once, executors=[ex.label])(str(tmp_path / "marker"))
        node = retried.result(timeout=60)
        app = python_app(workload.task, executors=[ex.label])
        for i in range(2):  # two more: three distinct tasks in the history, four resolutions
            app(i).result(timeout=60)
        assert ex.ran_on(retried.tid) == node
        app(2).result(timeout=60)  # now three others finished after it: forgotten
        assert ex.ran_on(retried.tid) is None


def test_a_node_that_joins_before_the_first_plan_does_not_hide_the_others(tmp_path: Path) -> None:
    # The executor learns the network by asking the dispatcher once, then from NODE_CHANGED
    # notices. A notice that arrives before that first question must not become the network.
    with LocalCluster(3, start_agents=False, log_dir=tmp_path / "logs") as cluster:
        for name in cluster.node_names[:2]:
            cluster.start_agent(name)
        cluster.wait_for_nodes(2)
        ex = SagaDispatchExecutor(address=cluster.client_url, keys=str(cluster.keys_dir))
        with load(ex, tmp_path):
            cluster.start_agent(cluster.node_names[2])
            deadline = time.monotonic() + 30
            while cluster.node_names[2] not in ex.state.speeds:  # the notice reached the executor
                assert time.monotonic() < deadline, "no NODE_CHANGED for the new node"
                time.sleep(0.01)
            app = python_app(workload.task, executors=[ex.label])
            with ex.plan():
                futures = [app(i, parsl_resource_specification={"cost": 0.01}) for i in range(30)]
            assert [f.result(timeout=120)[1] for f in futures] == list(range(30))
            planned = {ex.planned_node(f.tid) for f in futures}
    assert planned == set(cluster.node_names)


def test_a_dag_registered_while_it_runs_is_planned_in_windows_without_deadlock(tmp_path: Path) -> None:
    # Windows close while Parsl is still registering the DAG: a scan can meet the newest task
    # before its record is stored, and a child can be planned before its parent. Neither may
    # stall the per-node release order (this hung before the cursor and gating fixes).
    dag = workload.dag(2000, seed=2)
    ex = SagaDispatchExecutor(local_nodes=4, max_plan_tasks=64)
    with load(ex, tmp_path, initialize_logging=True):  # Parsl's own logging slows registration
        app = python_app(workload.task, executors=[ex.label])
        futures: dict[int, Any] = {}
        for t, parents, cost in dag:
            futures[t] = app(t, *[futures[p] for p in parents], parsl_resource_specification={"cost": cost})
        results = {t: f.result(timeout=120) for t, f in futures.items()}
        planned = {t: ex.planned(f.tid) for t, f in futures.items()}
        plans = list(ex.plans)
    expected = workload.expected(dag)
    assert all(results[t][1] == expected[t] for t in futures)
    assert all(planned[t] is not None and planned[t].node == results[t][0] for t in futures)  # type: ignore[union-attr]
    assert len(plans) > 1 and max(p["tasks"] for p in plans) <= 64
