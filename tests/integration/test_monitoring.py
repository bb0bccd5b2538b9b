"""Parsl's MonitoringHub with SagaDispatchExecutor: the DFK's own records of the workflow, its
tasks and every try reach the monitoring database; with resource monitoring on, so do the
workers' messages (each try's node, its resource use), over the executor's own channel
(``worker_agent.radio``), in embedded and in cluster mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl import Config, python_app
from parsl.monitoring import MonitoringHub

from dispatcher.local import NODE_PREFIX, LocalCluster
from parsl_adapter import SagaDispatchExecutor

from . import dag_apps

pytestmark = pytest.mark.integration


def test_a_monitoring_db_written_through_the_executor_holds_every_task_and_try(tmp_path: Path) -> None:
    db = tmp_path / "monitoring.db"
    ex = SagaDispatchExecutor(local_nodes=2, workers_per_node=1)
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_enabled=False)
    config = Config(executors=[ex], monitoring=hub, retries=1, run_dir=str(tmp_path / "runinfo"))
    with parsl.load(config) as dfk:
        add = python_app(dag_apps.add, executors=[ex.label])
        boom = python_app(dag_apps.boom, executors=[ex.label])
        values = [add(i, i) for i in range(8)]
        failing = boom("always")
        assert [f.result(timeout=60) for f in values] == [2 * i for i in range(8)]
        with pytest.raises(ArithmeticError, match="always"):
            failing.result(timeout=60)
        run_id = dfk.run_id
    with sqlite3.connect(db) as con:
        [(workflows,)] = con.execute("select count(*) from workflow where run_id = ?", (run_id,)).fetchall()
        tasks = dict(con.execute("select task_id, task_func_name from task where run_id = ?", (run_id,)).fetchall())
        tries = con.execute("select task_id, try_id, task_executor from try where run_id = ?", (run_id,)).fetchall()
    assert workflows == 1
    assert len(tasks) == 9 and set(tasks.values()) == {"add", "boom"}
    expected = {(t, 0) for t in tasks} | {(failing.tid, 1)}  # the failing task was tried twice
    assert {(t, n) for t, n, _ in tries} == expected
    assert {executor for _, _, executor in tries} == {ex.label}


def _run_monitored(tmp_path: Path, ex: SagaDispatchExecutor) -> tuple[str, dict[int, str], Any]:
    """A workload under resource monitoring: tasks that say where they ran, one that fails once."""
    db = tmp_path / "monitoring.db"
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=0.05)
    config = Config(executors=[ex], monitoring=hub, retries=1, run_dir=str(tmp_path / "runinfo"))
    with parsl.load(config) as dfk:
        where = python_app(dag_apps.node_after, executors=[ex.label])
        once = python_app(dag_apps.fail_once, executors=[ex.label])
        futures = [where(0.2 if i % 2 else 0.0) for i in range(6)]
        retried = once(str(tmp_path / "marker"))
        ran = {f.tid: f.result(timeout=120) for f in futures}
        ran[retried.tid] = retried.result(timeout=120)
        run_id = dfk.run_id
    return run_id, ran, sqlite3.connect(db)


def _check_workers_messages(run_id: str, ran: dict[int, str], con: sqlite3.Connection) -> None:
    with con:
        tries = con.execute(
            "select task_id, try_id, hostname, task_try_time_running from try where run_id = ?", (run_id,)
        ).fetchall()
        resources = con.execute(
            "select task_id, try_id, count(*) from resource where run_id = ? group by task_id, try_id", (run_id,)
        ).fetchall()
    retried = max(ran)
    assert {(t, n) for t, n, _, _ in tries} == {(t, 0) for t in ran} | {(retried, 1)}
    # Every try's node came from its worker (the K8s node name, not the machine's), and the one
    # that returned a value is the node that ran it.
    assert {host for _, _, host, _ in tries} <= {f"{NODE_PREFIX}0", f"{NODE_PREFIX}1"}, tries
    last = {t: host for t, n, host, _ in tries if n == (1 if t == retried else 0)}
    assert last == ran
    assert all(running is not None for *_, running in tries), tries
    # The resource monitor forked from the worker sent at least its final message for every try.
    assert {(t, n) for t, n, _ in resources} == {(t, n) for t, n, _, _ in tries}


def test_resource_monitoring_reaches_the_db_over_the_executor_s_channel_with_each_try_s_node(tmp_path: Path) -> None:
    ex = SagaDispatchExecutor(local_nodes=2, workers_per_node=2)
    run_id, ran, con = _run_monitored(tmp_path, ex)
    _check_workers_messages(run_id, ran, con)


def test_resource_monitoring_through_a_standalone_dispatcher(tmp_path: Path) -> None:
    """Cluster mode: the executor is a client of a dispatcher it did not start."""
    with LocalCluster(2, workers=2, log_dir=tmp_path / "cluster") as cluster:
        keys = str(cluster.keys_dir) if cluster.keys_dir is not None else None
        ex = SagaDispatchExecutor(address=cluster.client_url, keys=keys)
        run_id, ran, con = _run_monitored(tmp_path, ex)
    _check_workers_messages(run_id, ran, con)
