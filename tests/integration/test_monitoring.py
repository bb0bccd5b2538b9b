"""Parsl's MonitoringHub with SagaDispatchExecutor: the DFK's own records of the workflow, its
tasks and every try reach the monitoring database (resource monitoring off: its radio over the
executor's channel is not built yet, docs/observability.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import parsl
import pytest
from parsl import Config, python_app
from parsl.monitoring import MonitoringHub

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
