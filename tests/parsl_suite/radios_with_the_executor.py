"""Parsl's own row-count check (``test_basic.row_counts_parametrized``) with the executor and a
radio a user may choose instead of the executor's own: UDP or the shared filesystem.

Parsl runs this check with HTEX and those radios in ``test_row_counts_base``, whose HTEX variants
first assert HTEX's radio; so the monitoring run (``test_parsl_suite.py``) collects this file
beside Parsl's tests, where Parsl's conftest and markers apply. Not named ``test_*``: the main
run does not collect it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from parsl.config import Config
from parsl.monitoring import MonitoringHub
from parsl.monitoring.radios.filesystem import FilesystemRadio
from parsl.monitoring.radios.udp import UDPRadio
from parsl.tests.test_monitoring.test_basic import row_counts_parametrized

from tests.parsl_suite.monitoring_plugin import executor

RADIOS = {
    "udp": lambda: UDPRadio(address="localhost", atexit_timeout=0),
    "filesystem": FilesystemRadio,
}


@pytest.mark.local
@pytest.mark.parametrize("radio", RADIOS)
def test_row_counts_with_the_executor_and_another_radio(tmpd_cwd: Path, radio: str) -> None:
    def fresh_config() -> Config:
        chosen: Any = RADIOS[radio]()
        return Config(executors=[executor(remote_monitoring_radio=chosen)], monitoring=MonitoringHub())

    row_counts_parametrized(tmpd_cwd, fresh_config)
