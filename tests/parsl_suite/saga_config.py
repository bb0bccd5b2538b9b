"""The Parsl config that Parsl's own test suite runs against (docs/parsl.md, "Parsl's test suite").

uv run pytest --pyargs parsl.tests --config tests/parsl_suite/saga_config.py ...
"""

from parsl.config import Config

from parsl_adapter import SagaDispatchExecutor


def fresh_config() -> Config:
    return Config(
        executors=[
            SagaDispatchExecutor(
                label="saga_dispatch",
                local_nodes=2,
                local_speeds=[1.0, 2.0],
                workers_per_node=2,
                flush_idle_s=0.005,
            )
        ],
    )
