"""A Parsl program as a user runs it in a pod: ``SagaDispatchExecutor(address=..., keys=...)``
against the dispatcher of the container end-to-end test. Prints one JSON line: per task, its
value, the node that ran it (``NODE_NAME`` as the worker saw it), and what the executor says it
planned and where it ran.

    python workflow.py TASKS SLEEP_S      (SAGA_ADDRESS, SAGA_KEYS from the environment)
"""

from __future__ import annotations

import json
import os
import sys

import parsl
from parsl import Config, python_app

from parsl_adapter import SagaDispatchExecutor


@python_app
def work(
    i: int, sleep_s: float, *after: object, parsl_resource_specification: dict[str, float] | None = None
) -> tuple[int, str]:
    import os
    import time

    time.sleep(sleep_s)
    return i * i, os.environ["NODE_NAME"]


def main() -> None:
    tasks, sleep_s = int(sys.argv[1]), float(sys.argv[2])
    executor = SagaDispatchExecutor(address=os.environ["SAGA_ADDRESS"], keys=os.environ["SAGA_KEYS"])
    with parsl.load(Config(executors=[executor], run_dir="/scratch/runinfo")):
        hint = {"cost": max(sleep_s, 0.01)}
        with executor.plan():
            roots = [work(i, sleep_s, parsl_resource_specification=hint) for i in range(tasks // 2)]
            leaves = [
                work(len(roots) + j, sleep_s, roots[j % len(roots)], parsl_resource_specification=hint)
                for j in range(tasks - len(roots))
            ]
        out = []
        for i, future in enumerate(roots + leaves):
            value, node = future.result(timeout=600)
            out.append(
                {
                    "i": i,
                    "value": value,
                    "node": node,
                    "ran_on": executor.ran_on(future.tid),
                    "planned": executor.planned_node(future.tid),
                    "first_planned": executor.first_planned_node(future.tid),
                }
            )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
