"""Which thread does what in the executor's shell: Parsl's futures resolve on the conductor, not
on the client's I/O thread, and a failing step does not stop the conductor."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from dispatcher.runtime.errors import DispatchError
from parsl_adapter import SagaDispatchExecutor
from parsl_adapter import events as e

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def _started(tmp_path: Path, **kwargs: Any) -> SagaDispatchExecutor:
    ex = SagaDispatchExecutor(local_nodes=2, **kwargs)
    ex.run_dir = str(tmp_path)  # what Parsl's DFK sets before start()
    ex.start()
    return ex


def test_parsl_futures_resolve_on_the_conductor_not_on_the_zeromq_io_thread(tmp_path: Path) -> None:
    """Parsl's completion callbacks (its DFK's, the user's) run where the future resolves: on
    the client's I/O thread they would stall every send behind them."""
    ex = _started(tmp_path)
    try:
        seen: list[str] = []
        futures = [ex.submit(apps.square, {}, i) for i in range(20)]
        for future in futures:
            future.add_done_callback(lambda _: seen.append(threading.current_thread().name))
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(20)]
    finally:
        ex.shutdown()
    callbacks_run_late = [name for name in seen if name != threading.current_thread().name]
    assert callbacks_run_late, "every future was done before its callback was added: nothing was checked"
    assert set(callbacks_run_late) == {f"{ex.label}-conductor"}


def test_an_event_the_state_fails_on_fails_its_task_and_the_conductor_goes_on(tmp_path: Path) -> None:
    ex = _started(tmp_path)
    try:
        handle = ex.state.handle
        broken = threading.Event()

        def failing_once(event: e.Event) -> list[e.Command]:
            if isinstance(event, e.TaskLaunched) and not broken.is_set():
                broken.set()
                raise RuntimeError("injected fault")
            return handle(event)

        ex.state.handle = failing_once  # type: ignore[method-assign]
        doomed = ex.submit(apps.square, {}, 2)
        with pytest.raises(DispatchError, match="injected fault"):
            doomed.result(timeout=60)
        assert ex.submit(apps.square, {}, 3).result(timeout=60) == 9  # the conductor still runs
        assert ex._conductor is not None and ex._conductor.is_alive()
    finally:
        ex.shutdown()


def test_shutdown_resolves_every_parsl_future(tmp_path: Path) -> None:
    ex = _started(tmp_path)
    futures: list[Future[Any]] = [ex.submit(apps.slow_where, {}, i, 5.0) for i in range(6)]
    ex.shutdown()
    assert all(f.done() for f in futures)
    assert all(f.exception() is not None for f in futures)
