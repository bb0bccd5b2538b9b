"""Parsl's own test suite (shipped in its wheel) against SagaDispatchExecutor, in a subprocess.

The deselections and their reasons are in ``plugin.py`` and docs/parsl.md. Parsl's monitoring
tests build their own configs (``local`` tests): ``monitoring_plugin.py`` runs them with the
executor in those configs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
COMMAND = [
    sys.executable, "-m", "pytest",
    "-p", "tests.parsl_suite.plugin", "-p", "parsl.tests.conftest",
    "--pyargs", "parsl.tests",
    "--config", str(HERE / "saga_config.py"),
    "-p", "no:cacheprovider", "-o", "addopts=", "--timeout", "120", "-q", "-rfE",
]  # fmt: skip


MONITORING = [
    sys.executable, "-m", "pytest",
    "-p", "tests.parsl_suite.monitoring_plugin", "-p", "parsl.tests.conftest",
    "--pyargs", "parsl.tests.test_monitoring", "parsl.tests.test_shutdown.test_kill_monitoring",
    str(HERE / "radios_with_the_executor.py"),
    "--config", "local",
    "-p", "no:cacheprovider", "-o", "addopts=", "--timeout", "120", "-q", "-rfE",
]  # fmt: skip


def _as_from_a_terminal() -> None:
    """In the suite's process: SIGINT and SIGQUIT as a terminal leaves them. A CI job started in
    the background inherits them ignored, Python keeps an ignored SIGINT ignored, and so does the
    monitoring process Parsl spawns, which ``test_kill_monitoring`` then cannot stop with SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_parsl_s_monitoring_tests_pass_with_the_executor_in_their_configs(tmp_path: Path) -> None:
    proc = subprocess.run(
        MONITORING,
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        preexec_fn=_as_from_a_terminal,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, f"Parsl's monitoring tests failed: {summary}\n{_first_failure(proc.stdout)}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 45, summary
    assert "failed" not in summary and "error" not in summary, summary


def _first_failure(out: str, size: int = 12000) -> str:
    """The start of pytest's failures section (the first failure explains the ones after it), and its summary."""
    start = out.find("= FAILURES =")
    head = out[start : start + size] if start >= 0 else out[-size:]
    return f"{head}\n...\n{out[-3000:]}"


def test_parsl_test_suite_passes_against_saga_dispatch_executor(tmp_path: Path) -> None:
    # Run from a scratch directory: Parsl's suite writes pytest-parsl/, runinfo/ and files where it runs.
    proc = subprocess.run(COMMAND, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1200, check=False)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, f"Parsl's suite failed: {summary}\n{_first_failure(proc.stdout)}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 140, summary
    assert "failed" not in summary and "error" not in summary, summary
