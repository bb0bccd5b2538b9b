"""What of Parsl's own test suite we do not run against SagaDispatchExecutor, and why.

Loaded with ``-p tests.parsl_suite.plugin`` ahead of Parsl's conftest (whose
``pytest_ignore_collect`` returns False and so overrides ``--ignore``). docs/parsl.md lists the
same entries; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

IGNORED_MODULES: dict[str, str] = {
    "test_monitoring/test_app_names.py": "monitoring: builds its own config at import; run with the executor in it by monitoring_plugin.py",
    "test_shutdown/test_kill_monitoring.py": "monitoring: builds its own config at import; run with the executor in it by monitoring_plugin.py",
}

DESELECTED: dict[str, str] = {
    "test_staging/test_docs_1.py::test": "fetches ftp://ftp.iana.org: needs the internet (unmarked cleannet)",
    "test_staging/test_staging_stdout.py::test_stdout_stderr_staging_zip": (
        "races in the test: it reads the zip without Parsl's file lock right after the stdout stage-out, while "
        "the stderr stage-out appends to the same zip (BadZipFile: bad magic number for central directory, "
        "about 1 run in 8 on a loaded machine)"
    ),
}
"""Test node id suffix -> reason."""

DESELECTED_MARKERS: dict[str, str] = {
    "cleannet": "staging from ftp/https servers on the internet; this machine has no internet",
    "unix_filesystem_permissions_required": "expects a non-root user to be refused /bad/dir; CI runs as root",
}
"""Parsl's own markers for environment-dependent tests -> reason."""


@pytest.hookimpl(tryfirst=True)
def pytest_ignore_collect(collection_path: Path) -> bool | None:
    path = collection_path.as_posix()
    if any(path.endswith(suffix) for suffix in IGNORED_MODULES):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect(config, items, DESELECTED_MARKERS, DESELECTED)


def deselect(config: pytest.Config, items: list[pytest.Item], markers: Iterable[str], suffixes: Iterable[str]) -> None:
    """Drop the items with one of ``markers`` or a node id ending in one of ``suffixes``, reported as deselected."""
    keep, drop = [], []
    suffixes = tuple(suffixes)
    for item in items:
        marked = any(item.get_closest_marker(m) is not None for m in markers)
        # --pyargs of a module drops the path from node ids: match the file's folder/name too
        named = (item.nodeid, f"{item.path.parent.name}/{item.path.name}::{item.name}")
        (drop if marked or any(n.endswith(suffixes) for n in named) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
