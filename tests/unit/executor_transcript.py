"""A transcript harness for the executor's state machine: events in, commands out, the rules
checked after every step (``ExecutorState.validate_state``)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from parsl_adapter import events as e
from parsl_adapter.config import ExecutorConfig
from parsl_adapter.placement import Edge, Graph, Network, Placed, Plan, Task
from parsl_adapter.state import ExecutorState


class Transcript:
    def __init__(self, **config: Any) -> None:
        self.state = ExecutorState(ExecutorConfig(**config))

    def __call__(self, event: e.Event) -> list[e.Command]:
        out = self.state.handle(event)
        self.state.validate_state()
        return out


def launch(tid: int, function: str = "f") -> e.Launch:
    return e.Launch(tid, function, f"payload {tid}".encode(), Future())


def graph(tids: Iterable[int], edges: Iterable[tuple[int, int]] = (), cost_s: float = 1.0) -> Graph:
    return Graph(tuple(Task(str(t), cost_s) for t in tids), tuple(Edge(str(a), str(b), 0.0) for a, b in edges))


def plan(placed: dict[int, tuple[str, float, float]], scheduler: str = "HEFT") -> Plan:
    spots = {str(tid): Placed(node, start, end) for tid, (node, start, end) in placed.items()}
    return Plan(spots, max((p.end_s for p in spots.values()), default=0.0), scheduler)


def network(*nodes: str) -> Network:
    return Network(tuple((n, 1.0) for n in sorted(nodes)), 1e9)


def resolved(value: object = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def kinds(commands: list[e.Command]) -> list[str]:
    """The commands' class names, logs left out."""
    return [type(c).__name__ for c in commands if not isinstance(c, e.Log)]


def only[C](commands: list[e.Command], kind: type[C]) -> list[C]:
    return [c for c in commands if isinstance(c, kind)]
