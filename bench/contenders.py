"""Parsl configs for each contender, built fresh for every round (a DFK cannot be reused)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import parsl
from parsl import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from parsl_adapter import SagaDispatchExecutor


class Factory(Protocol):
    def __call__(self, workers: int, *, logging: bool) -> Config: ...


def saga(workers: int, *, logging: bool, **kwargs: Any) -> Config:
    ex = SagaDispatchExecutor(label="bench", local_nodes=1, workers_per_node=workers, **kwargs)
    return Config(executors=[ex], initialize_logging=logging)


def saga_insecure(workers: int, *, logging: bool) -> Config:
    """saga-dispatch without CurveZMQ (``insecure=True``): what the encryption costs, side by side."""
    return saga(workers, logging=logging, insecure=True)


def htex(workers: int, *, logging: bool) -> Config:
    # HTEX caps workers at the core count unless cores_per_worker is lowered.
    cores = os.cpu_count() or 1
    ex = HighThroughputExecutor(
        label="bench",
        max_workers_per_node=workers,
        cores_per_worker=min(1.0, cores / workers),
        address="127.0.0.1",
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),  # type: ignore[no-untyped-call]
    )
    return Config(executors=[ex], initialize_logging=logging)


def threads(workers: int, *, logging: bool) -> Config:
    return Config(executors=[ThreadPoolExecutor(label="bench", max_threads=workers)], initialize_logging=logging)


CONTENDERS: dict[str, Factory] = {
    "saga-dispatch": saga,
    "saga-dispatch (no CURVE)": saga_insecure,
    "htex": htex,
    "threadpool": threads,
}
_selected: list[str] = list(CONTENDERS)


def select(names: list[str] | None) -> None:
    """Run only these contenders (``--contenders``; for profiling, not for the tables)."""
    _selected[:] = list(CONTENDERS) if not names else [n for n in CONTENDERS if n in names]


def selected() -> list[str]:
    return list(_selected)


@contextmanager
def loaded(config: Config) -> Iterator[Any]:
    """A DFK for one round, in a scratch run_dir; always cleaned up.

    The ``parsl`` logger's level is put back afterwards: Parsl's logging set-up sets it to DEBUG
    and its clean-up removes only the file handler, so every later round with
    ``initialize_logging=False`` would still build a LogRecord for each of Parsl's debug calls."""
    parsl_logger = logging.getLogger("parsl")
    level = parsl_logger.level
    with tempfile.TemporaryDirectory(prefix="saga-bench-") as run_dir:
        config.run_dir = run_dir
        dfk = parsl.load(config)
        try:
            yield dfk
        finally:
            dfk.cleanup()
            parsl.clear()
            parsl_logger.setLevel(level)
