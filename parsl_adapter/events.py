"""What goes into the executor's state machine (events, past tense) and what comes out of it
(commands, imperative), and the records both carry.

Every event carries ``now`` (seconds on the shell's monotonic clock): the state never reads a
clock. Futures travel through the state as opaque values: it never calls them; the shell does.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from parsl_adapter.placement import Graph, Network, Plan
from parsl_adapter.plancache import Canonical


@dataclass(slots=True, eq=False)
class Launch:
    """A task Parsl launched (one per ``submit()`` call: a retry is a new Launch of the same tid)."""

    tid: int
    function: str
    payload: bytes
    future: Future[Any]
    """The future ``submit()`` returned to Parsl."""
    retry_on_node_loss: bool = True


@dataclass(frozen=True, slots=True)
class PlannedTask:
    node: str
    rank: float
    end: float
    cost_s: float
    epoch: int


@dataclass(frozen=True, slots=True, eq=False)
class PlanJob:
    """One request for the planning thread: plan ``graph`` on ``network`` (None: ask the
    dispatcher for the live nodes first), as SAGA's canonical form ``canon`` where it has one."""

    job_id: int
    kind: Literal["window", "replan"]
    graph: Graph
    network: Network | None
    canon: Canonical | None = None
    batch: tuple[Launch, ...] = ()
    """Window plans: the launches waiting for this plan."""
    gating: frozenset[int] = frozenset()
    lost: str = ""
    """Re-plans: the node whose work this is."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TaskLaunched:
    """Parsl called ``submit()`` (on its launch thread)."""

    launch: Launch
    now: float


@dataclass(frozen=True, slots=True)
class HoldingChanged:
    """A ``with executor.plan():`` block was entered (+1) or left (-1)."""

    delta: int
    now: float


@dataclass(frozen=True, slots=True)
class WindowGraphBuilt:
    """The shell built the graph a ``BuildWindowGraph`` asked for (``tids``: every task in it)."""

    batch: tuple[Launch, ...]
    tids: tuple[int, ...]
    graph: Graph
    gating: frozenset[int]
    now: float


@dataclass(frozen=True, slots=True)
class WindowGraphFailed:
    """The shell could not build a window's graph (e.g. the DFK's records were not what it expects)."""

    batch: tuple[Launch, ...]
    error: BaseException
    now: float


@dataclass(frozen=True, slots=True)
class ReplanGraphBuilt:
    """The shell built the re-plan graph of ``lost``'s unfinished tasks (empty: nothing to re-plan)."""

    lost: str
    tids: tuple[int, ...]
    graph: Graph
    now: float


@dataclass(frozen=True, slots=True)
class PlannerReturned:
    """The planning thread answered ``job``: ``plan`` is in the caller's names and clock, ``raw``
    what SAGA returned for ``canon`` (to memoize; None: not memoizable), ``network`` what it
    planned on."""

    job: PlanJob
    plan: Plan
    raw: Plan
    canon: Canonical | None
    network: Network
    saga_s: float
    plan_s: float
    now: float


@dataclass(frozen=True, slots=True)
class PlannerFailed:
    job: PlanJob
    error: BaseException
    now: float


@dataclass(frozen=True, slots=True)
class TaskResolved:
    """The dispatcher's future for ``launch`` resolved (``outcome``; on the client's I/O thread)."""

    launch: Launch
    outcome: Future[Any]
    node_name: str | None
    runtime_s: float | None
    now: float


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """The dispatcher said a node registered (``alive``), is draining, died or left."""

    node_name: str
    state: str
    speed: float
    now: float


@dataclass(frozen=True, slots=True)
class DispatcherRestarted:
    now: float


@dataclass(frozen=True, slots=True)
class NodesListed:
    """The live nodes, as the dispatcher listed them (asked by ``ListNodes``)."""

    alive: tuple[tuple[str, float], ...]
    now: float
    zones: tuple[tuple[str, str], ...] = ()
    """(node, zone) where the dispatcher knows one."""


@dataclass(frozen=True, slots=True)
class LaunchesEnded:
    """These planned tasks finished without ever launching (a dependency failed, a memo hit)."""

    tids: tuple[int, ...]
    now: float


@dataclass(frozen=True, slots=True)
class Ticked:
    """The conductor's clock: ``registered`` is how many tasks the DFK has registered so far."""

    now: float
    registered: int = 0


@dataclass(frozen=True, slots=True)
class ShutDown:
    now: float


@dataclass(frozen=True, slots=True)
class WindowAbandoned:
    """The shell failed on a step about this window (a bug): its launches end with ``error``."""

    batch: tuple[Launch, ...]
    error: BaseException
    now: float


Event = (
    TaskLaunched
    | HoldingChanged
    | WindowGraphBuilt
    | WindowGraphFailed
    | ReplanGraphBuilt
    | PlannerReturned
    | PlannerFailed
    | TaskResolved
    | NodeChanged
    | DispatcherRestarted
    | NodesListed
    | LaunchesEnded
    | Ticked
    | ShutDown
    | WindowAbandoned
)

# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class BuildWindowGraph:
    """Build the graph of ``batch`` and every registered, unplanned task of ours (at most ``cap``
    in all, oldest first) from the DFK; answer ``WindowGraphBuilt`` at once."""

    batch: tuple[Launch, ...]
    cap: int | None


@dataclass(frozen=True, slots=True)
class BuildReplanGraph:
    """Build the re-plan graph of those of ``tids`` that Parsl has not finished; answer
    ``ReplanGraphBuilt`` at once."""

    lost: str
    tids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RunPlanner:
    job: PlanJob


@dataclass(frozen=True, slots=True)
class ListNodes:
    """Ask the dispatcher which nodes are alive (off the conductor); answer ``NodesListed``."""


@dataclass(frozen=True, slots=True)
class Send:
    """Submit ``launch`` to the dispatcher, pinned to ``node`` with ``rank``."""

    launch: Launch
    node: str
    rank: float


@dataclass(frozen=True, slots=True)
class Repin:
    """Move these tasks, if still queued at the dispatcher, to their new (node, rank)."""

    moves: tuple[tuple[int, str, float], ...]


@dataclass(frozen=True, slots=True)
class Resolve:
    """Give Parsl's future for ``launch`` the outcome of its dispatcher future."""

    launch: Launch
    outcome: Future[Any]


@dataclass(frozen=True, slots=True)
class Fail:
    """Fail these launches' futures with ``error``."""

    launches: tuple[Launch, ...]
    error: BaseException


@dataclass(frozen=True, slots=True)
class Log:
    event: str
    level: Literal["debug", "info", "warning", "error"] = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Command = BuildWindowGraph | BuildReplanGraph | RunPlanner | ListNodes | Send | Repin | Resolve | Fail | Log
