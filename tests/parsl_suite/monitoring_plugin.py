"""Parsl's own monitoring tests (``parsl.tests.test_monitoring``, and ``test_kill_monitoring``
of its shutdown tests) against SagaDispatchExecutor.

They are ``local`` tests: each builds its own config, with HTEX or a ThreadPoolExecutor, so the
main suite's ``--config`` never reaches them. Run in ``--config local`` mode with this plugin,
each config they build is the same config with SagaDispatchExecutor as its executor: the
functions that build them (in the test modules, and the ``htex_local_alternate`` test config
some import when they run) are swapped, after collection, for the ones below. They keep the
settings that apply to this executor: retries, the memoizer, the MonitoringHub and its resource
monitoring, the logging. They leave out the scaling strategy (the executor has no blocks), usage
tracking (no internet here), and other radios (the executor's own is the point). Every test
outside ``WITHOUT_EXECUTOR`` must start the executor, or it fails: a swap that stopped taking
effect, or a new test of Parsl's with a config of its own, cannot pass unseen. The assertions
are Parsl's, unchanged. docs/parsl.md lists the deselections; keep the two in step.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from typing import Any

import pytest
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernelLoader
from parsl.dataflow.memoization import BasicMemoizer
from parsl.logconfigs.json import JSONLogging
from parsl.monitoring import MonitoringHub

from parsl_adapter import SagaDispatchExecutor
from tests.parsl_suite.plugin import deselect

PACKAGE = "parsl.tests.test_monitoring"

DESELECTED: dict[str, str] = {
    "test_basic.py::test_row_counts_base[thread_config]": "ThreadPoolExecutor's own row counts: not the executor under test",
    "test_basic.py::test_row_counts_base[htex_filesystem_config]": (
        "asserts HTEX's radio as a precondition; the executor with FilesystemRadio runs through this "
        "module's row_counts_parametrized in radios_with_the_executor.py"
    ),
    "test_basic.py::test_row_counts_base[htex_udp_config]": (
        "asserts HTEX's radio as a precondition; the executor with UDPRadio runs through this "
        "module's row_counts_parametrized in radios_with_the_executor.py"
    ),
    "test_exit_helper.py::test_end_hung_process_no_sigint": (
        "races in the test: the spawned child must import Parsl and set its SIGTERM handler inside the 2 s "
        "join timeout, which a loaded machine misses (it is killed first); Parsl's process helper, no executor"
    ),
}
"""Test node id suffix -> reason."""

DESELECTED_MARKERS: dict[str, str] = {
    "workqueue": "needs a Work Queue installation (Parsl's marker)",
    "taskvine": "needs a TaskVine installation (Parsl's marker)",
}
"""Parsl's own markers for tests of other executors -> reason."""

IGNORED_MODULES: dict[str, str] = {
    "test_htex_fuzz_zmq.py": "fuzzes HTEX's interchange-to-hub ZeroMQ channel: HTEX's, not the executor's",
    "test_htex_init_blocks_vs_monitoring.py": "HTEX's blocks as monitoring records them: the executor has no blocks",
}

WITHOUT_EXECUTOR = ("test_exit_helper.py", "test_radio_filesystem.py", "test_radio_multiprocessing.py",
                    "test_radio_udp.py", "test_radio_zmq.py", "test_viz_colouring.py")  # fmt: skip
"""Modules that build no config (Parsl's process helper, its radios alone, its plots): every
test elsewhere must start SagaDispatchExecutor, so a new module of Parsl's that builds its own
HTEX config fails here until it is swapped too."""

_started = 0


class _Counted(SagaDispatchExecutor):
    """The executor, counting its starts (the check that the swap took effect)."""

    def start(self) -> None:
        global _started
        _started += 1
        super().start()


def executor(**options: Any) -> SagaDispatchExecutor:
    """The executor every swapped config uses (as ``saga_config.py``'s)."""
    return _Counted(label="saga_dispatch", local_nodes=2, local_speeds=[1.0, 2.0], workers_per_node=2, **options)


def alternate_config() -> Config:
    """``htex_local_alternate.fresh_config`` but the executor (and no usage tracking: no internet)."""
    return Config(
        executors=[executor()],
        memoizer=BasicMemoizer(memoize=True, checkpoint_mode="task_exit"),
        retries=2,
        monitoring=MonitoringHub(monitoring_debug=False, resource_monitoring_interval=1),
        project_name="saga-dispatch: parsl htex_local_alternate test configuration",
        initialize_logging=JSONLogging(level=1),
    )


def stdouterr_config(run_dir: Any) -> Config:
    """``test_stdouterr.fresh_config`` but the executor."""
    return Config(run_dir=str(run_dir), executors=[executor()], monitoring=MonitoringHub())


def memoization_config(*, config_run_dir: str) -> Config:
    """``test_memoization_representation.fresh_config`` but the executor (and its radio)."""
    return Config(
        run_dir=config_run_dir, executors=[executor()], monitoring=MonitoringHub(resource_monitoring_interval=0)
    )


def log_config(*, run_dir: Any) -> Config:
    """``test_log_config.config`` but the executor."""
    return Config(executors=[executor()], monitoring=MonitoringHub(), run_dir=str(run_dir))


def log_config_with(*, run_dir: Any, log_config: Any) -> Config:
    """``test_log_config.config_log`` but the executor."""
    return Config(
        executors=[executor()], monitoring=MonitoringHub(), run_dir=str(run_dir), initialize_logging=log_config
    )


SWAPS: dict[str, dict[str, Any]] = {
    "parsl.tests.configs.htex_local_alternate": {"fresh_config": alternate_config},
    f"{PACKAGE}.test_app_names": {"fresh_config": alternate_config},
    f"{PACKAGE}.test_stdouterr": {"fresh_config": stdouterr_config},
    f"{PACKAGE}.test_memoization_representation": {"fresh_config": memoization_config},
    f"{PACKAGE}.test_log_config": {"config": log_config, "config_log": log_config_with},
    "parsl.tests.test_shutdown.test_kill_monitoring": {"fresh_config": alternate_config},
}
"""Module -> the config builders in it, and what replaces each."""


@pytest.hookimpl(tryfirst=True)
def pytest_ignore_collect(collection_path: Any) -> bool | None:
    if collection_path.name in IGNORED_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for module, names in SWAPS.items():
        loaded = importlib.import_module(module)
        for name, replacement in names.items():
            assert callable(getattr(loaded, name, None)), f"{module}.{name} is gone: the swap needs updating"
            setattr(loaded, name, replacement)
    deselect(config, items, DESELECTED_MARKERS, DESELECTED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    before = _started
    result = yield
    if DataFlowKernelLoader._dfk is not None:
        # Parsl's cleanup() logs and swallows what it raised (wrap_with_logs), leaving its DFK
        # loaded: every later test would fail at parsl.load. Fail this one, with its log.
        DataFlowKernelLoader.clear()
        pytest.fail(f"{item.nodeid} left its DataFlowKernel loaded: its cleanup failed (see the captured log)")
    if item.path.name not in WITHOUT_EXECUTOR and _started == before:
        pytest.fail(f"{item.nodeid} ran without starting SagaDispatchExecutor: a config swap did not take effect")
    return result
