"""The dispatcher's Prometheus metrics: what the core counted, what its state holds, one scrape.

Three sources, one owner. The core says what happened as ``Count`` and ``Observe`` commands
(a step that is undone counts nothing); the loop thread adds them to :class:`Metrics`. What
the state *is* (queues, in flight, nodes by state, what agents reported) is read from the core
when a scrape asks, on the loop thread too: the HTTP thread posts a :class:`Scrape` to the
loop's inbox and waits for the :class:`Snapshot` it fills in, so no other thread ever reads the
core (and a loop that is stuck answers no scrape: 503, as ``/healthz`` would). The snapshot is
plain data; :func:`render` turns it into the text exposition with the official client's
families and ``generate_latest``, on the HTTP thread.

Names follow Prometheus' conventions: one prefix (``saga_dispatch_``), base units (seconds),
``_total`` on counters (the client adds it), and bounded labels: node names, states, outcomes
and reasons from fixed sets, never a task id. A node the core forgets (a deleted Node's entry
swept) takes its series with it. ``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import bisect
import platform
import threading
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

from dispatcher import protocol as p
from dispatcher.server.events import FRAME_KINDS, NO_NODE, POOL_LABEL, Count, Observe
from dispatcher.server.node import NodeState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dispatcher.server.access import AccessCounters
    from dispatcher.server.core import DispatcherCore

PREFIX: Final = "saga_dispatch_"
OUTCOMES: Final = (*(outcome.name.lower() for outcome in p.Outcome), "revoked")
"""``tasks_resolved``'s outcomes: the protocol's, and a revoked client's tasks (resolved to no one)."""
DEATH_CAUSES: Final = ("heartbeat", "not_ready", "never_registered", "replaced", "key_revoked", "k8s_deleted", "bye")
"""Why a node's agent incarnation ended: silent, silent while its Node was not Ready, never came,
another agent took its routing id, its key was revoked, its Node was deleted, it said bye."""
DRAIN_CAUSES: Final = ("agent", "cordoned", "not-in-api")
"""Why a node stopped taking work: its agent drains (SIGTERM), its Node was cordoned, its Node is
not listed."""
FRAME_REASONS: Final = FRAME_KINDS
MONITORING_FATES: Final = ("forwarded", "dropped")
"""What became of a monitoring message from a node (rule 12 of the core)."""

_NODE: Final = ("node",)
COUNTERS: Final[Mapping[str, tuple[tuple[str, ...], str]]] = {
    "tasks_submitted": (
        _NODE,
        "Tasks submitted, by the node they were pinned to ((pool): any; (none): rejected at once).",
    ),
    "tasks_dispatched": (_NODE, "Tasks sent to a node's agent (again, after a node death or a steal)."),
    "tasks_resolved": (
        ("node", "outcome"),
        "Tasks resolved, by the node that ran them ((none): none did) and outcome.",
    ),
    "node_deaths": (("node", "reason"), "Node agent incarnations ended, by reason (bye: it left cleanly)."),
    "node_drains": (("node", "reason"), "Nodes that stopped taking work while their agent lived, by reason."),
    "tasks_stolen": (_NODE, "Tasks taken from a live node by soft-affinity stealing, by that node."),
    "duplicates_dropped": (_NODE, "Results for tasks already resolved (another copy won), by the node that sent them."),
    "results_refused": (_NODE, "Results for tasks never sent to the node that sent them ((none): an unknown peer)."),
    "monitoring_messages": (
        ("node", "fate"),
        "Parsl monitoring messages from a node's workers: forwarded to the task's client, or dropped.",
    ),
    "payloads_deferred": (
        _NODE,
        "Tasks queued without their payload (it would have taken payloads past the budget), by their node.",
    ),
    "payloads_fetched": (_NODE, "Payloads asked back from clients (FETCH), for the node about to run them."),
    "frames_rejected": (("side", "reason"), "Frames dropped undecoded: frames, version, malformed, direction."),
    "peers_refused": (("side", "reason"), "Registrations and HELLOs refused, by reason."),
}
HISTOGRAMS: Final[Mapping[str, tuple[tuple[str, ...], str]]] = {
    "task_wait_seconds": (
        _NODE,
        "From a task's first queueing in the dispatcher to its start on the node that ran it.",
    ),
    "task_run_seconds": (_NODE, "Run time of a task on its worker, as its agent reported it."),
}
BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0)
"""Upper bounds (seconds), one to three per decade: millisecond no-ops to half-hour tasks."""
_SPECIAL: Final = frozenset({NO_NODE, POOL_LABEL})


class Metrics:
    """What the core counted and observed. The loop thread's: changed by :meth:`record` only."""

    __slots__ = ("counts", "histograms")

    def __init__(self) -> None:
        self.counts: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in COUNTERS}
        self.histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {name: {} for name in HISTOGRAMS}

    def record(self, command: Count | Observe) -> None:
        """Add one measure. A metric not declared above (a bug; the unit tests check every name
        and label the core emits) is ignored rather than allowed to stop the loop."""
        if type(command) is Count:
            series = self.counts.get(command.metric)
            if series is not None:
                series[command.labels] = series.get(command.labels, 0) + command.n
        elif type(command) is Observe:
            histograms = self.histograms.get(command.metric)
            if histograms is None:
                return
            histogram = histograms.get(command.labels)
            if histogram is None:
                histogram = histograms[command.labels] = _Histogram()
            histogram.observe(command.values)

    def forget_nodes(self, known: Container[str]) -> None:
        """Drop the series of nodes the core no longer has (bounded by the nodes it holds)."""
        for name, (labels, _) in COUNTERS.items():
            if labels[0] == "node":
                _prune(self.counts[name], known)
        for name in HISTOGRAMS:  # every histogram is per node
            _prune(self.histograms[name], known)


def _prune(table: dict[tuple[str, ...], Any], known: Container[str]) -> None:
    for key in [key for key in table if key[0] not in known and key[0] not in _SPECIAL]:
        del table[key]


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        """Per bucket (not cumulative), the last one +Inf."""
        self.sum = 0.0
        self.count = 0

    def observe(self, values: tuple[float, ...]) -> None:
        buckets = self.buckets
        for value in values:
            buckets[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += sum(values)
        self.count += len(values)


# --------------------------------------------------------------------------- one scrape


@dataclass(frozen=True, slots=True)
class NodeGauges:
    name: str
    state: str
    reason: str
    queued: int
    in_flight: int
    slots: int
    credit: int
    speed: float
    busy_workers: int
    worker_respawns: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class WatchGauges:
    synced: bool
    restarts: Mapping[str, int]
    since_contact_s: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows, copied on the loop thread."""

    counts: Mapping[str, Mapping[tuple[str, ...], int]]
    histograms: Mapping[str, Mapping[tuple[str, ...], tuple[tuple[int, ...], float, int]]]
    nodes: tuple[NodeGauges, ...]
    pool_queued: int
    unresolved: int
    clients: int
    events_rejected: int
    access: Mapping[str, Mapping[tuple[str, ...], int]]
    watch: WatchGauges | None
    build: Mapping[str, str] = field(default_factory=dict)


def snapshot(
    metrics: Metrics, core: DispatcherCore, access: AccessCounters, watch: WatchGauges | None, events_rejected: int
) -> Snapshot:
    """On the loop thread: the state as it is now, and a copy of what was counted."""
    metrics.forget_nodes(core.nodes)
    nodes = tuple(
        NodeGauges(
            n.name,
            n.state.value,
            n.reason,
            len(n.queue),
            len(n.in_flight),
            n.slots,
            n.credit,
            n.speed,
            n.busy_workers,
            n.worker_respawns,
            n.incarnation,
        )
        for n in core.nodes.values()
    )
    return Snapshot(
        counts={name: dict(series) for name, series in metrics.counts.items()},
        histograms={
            name: {labels: (tuple(h.buckets), h.sum, h.count) for labels, h in series.items()}
            for name, series in metrics.histograms.items()
        },
        nodes=nodes,
        pool_queued=len(core.pool),
        unresolved=len(core.tasks),
        clients=core.client_count,
        events_rejected=events_rejected,
        access={
            "connections": {(side,): n for side, n in access.accepted.items()},
            "handshakes": {(side,): n for side, n in access.authenticated.items()},
            "handshakes_failed": {(side, reason): n for (side, reason), n in access.handshakes_failed.items()},
            "frames_unauthorized": {(side,): n for side, n in access.frames_unauthorized.items()},
            "keys_reloads": {(): access.reloads},
            "keys_reload_failures": {(): access.reload_failures},
        },
        watch=watch,
        build=build_info(),
    )


def build_info() -> dict[str, str]:
    try:
        version = metadata.version("saga-dispatch")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return {"version": version, "protocol": str(p.PROTOCOL_VERSION), "python": platform.python_version()}


class Scrape:
    """One scrape's request, posted by the HTTP thread to the loop; the loop fills it in."""

    __slots__ = ("_done", "result")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Snapshot | None = None

    def fulfil(self, result: Snapshot) -> None:
        self.result = result
        self._done.set()

    def wait(self, timeout_s: float) -> Snapshot | None:
        self._done.wait(timeout_s)
        return self.result


# --------------------------------------------------------------------------- the exposition


_ACCESS: Final = {
    "connections": (("side",), "TCP connections accepted, per socket."),
    "handshakes": (("side",), "CURVE handshakes that succeeded, per socket."),
    "handshakes_failed": (
        ("side", "reason"),
        "CURVE handshakes refused (authentication failures), by libzmq's reason.",
    ),
    "frames_unauthorized": (("side",), "Messages dropped because their key was revoked after they connected."),
    "keys_reloads": ((), "Allow-list reloads."),
    "keys_reload_failures": ((), "Allow-list reloads that failed (the old lists stay)."),
}
_NODE_GAUGES: Final = {
    "node_queued_tasks": ("queued", "Tasks waiting in the node's own queue."),
    "node_in_flight_tasks": ("in_flight", "Tasks sent to the node's agent and not resolved (running or prefetched)."),
    "node_slots": ("slots", "Worker slots its agent advertised."),
    "node_credit": ("credit", "Tasks its agent has asked for and not been sent."),
    "node_speed": ("speed", "Its relative speed (the agent's, else its Node's label, else 1)."),
    "node_busy_workers": ("busy_workers", "Workers running a task, as its agent last reported."),
    "node_incarnation": ("incarnation", "Agent registrations under this name (a new agent, a new incarnation)."),
    "node_worker_respawns": (
        "worker_respawns",
        "Worker processes its agent replaced after a crash, as it last reported (0 until a new agent reports).",
    ),
}  # fmt: skip


def render(snap: Snapshot) -> bytes:
    """The text exposition (``text/plain; version=0.0.4``) of one snapshot."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    return generate_latest(registry)


class _Collector:
    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self._snap
        info = GaugeMetricFamily(f"{PREFIX}build_info", "The dispatcher's version, protocol version and Python.",
                                 labels=sorted(snap.build))  # fmt: skip
        info.add_metric([snap.build[k] for k in sorted(snap.build)], 1)
        yield info
        for name, (labels, doc) in COUNTERS.items():
            family = CounterMetricFamily(f"{PREFIX}{name}", doc, labels=labels)
            for values, n in sorted(snap.counts.get(name, {}).items()):
                family.add_metric(values, n)
            yield family
        for name, (labels, doc) in _ACCESS.items():
            family = CounterMetricFamily(f"{PREFIX}{name}", doc, labels=labels)
            for values, n in sorted(snap.access.get(name, {}).items()):
                family.add_metric(values, n)
            yield family
        rejected = CounterMetricFamily(
            f"{PREFIX}events_rejected", "Events the core raised on (a bug; each changed nothing)."
        )
        rejected.add_metric([], snap.events_rejected)
        yield rejected
        for name, (labels, doc) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(f"{PREFIX}{name}", doc, labels=labels)
            for values, (buckets, total, _count) in sorted(snap.histograms.get(name, {}).items()):
                cumulative, running = [], 0
                for bound, n in zip((*map(str, BUCKETS), "+Inf"), buckets, strict=True):
                    running += n
                    cumulative.append((bound, running))
                histogram.add_metric(values, cumulative, total)
            yield histogram
        yield from self._state()
        yield from self._watch()

    def _state(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        snap = self._snap
        by_state = GaugeMetricFamily(f"{PREFIX}nodes", "Nodes by state.", labels=["state"])
        counts = dict.fromkeys((s.value for s in NodeState), 0)
        for node in snap.nodes:
            counts[node.state] += 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        node_state = GaugeMetricFamily(f"{PREFIX}node_state", "1 for the state each node is in (reason: why, if the "
                                       "cluster or its agent said).", labels=["node", "state", "reason"])  # fmt: skip
        for node in snap.nodes:
            node_state.add_metric([node.name, node.state, node.reason], 1)
        yield node_state
        for name, (attribute, doc) in _NODE_GAUGES.items():
            family = GaugeMetricFamily(f"{PREFIX}{name}", doc, labels=["node"])
            for node in snap.nodes:
                family.add_metric([node.name], getattr(node, attribute))
            yield family
        for name, value, doc in (
            ("pool_queued_tasks", snap.pool_queued, "Tasks waiting in the shared pool (any node may take them)."),
            ("unresolved_tasks", snap.unresolved, "Tasks submitted and not yet resolved."),
            ("clients", snap.clients, "Client ids that said HELLO since the dispatcher started (one that left stays)."),
        ):
            gauge = GaugeMetricFamily(f"{PREFIX}{name}", doc)
            gauge.add_metric([], value)
            yield gauge

    def _watch(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        watch = self._snap.watch
        if watch is None:
            return
        synced = GaugeMetricFamily(f"{PREFIX}node_watch_synced", "1 once the Node watch has listed the Nodes.")
        synced.add_metric([], int(watch.synced))
        yield synced
        restarts = CounterMetricFamily(f"{PREFIX}node_watch_restarts", "Times the Node watch started over: expired "
                                       "(410 Gone) or error (the API away, 5xx, a dropped or hung stream).",
                                       labels=["reason"])  # fmt: skip
        for reason, n in sorted(watch.restarts.items()):
            restarts.add_metric([reason], n)
        yield restarts
        lag = GaugeMetricFamily(f"{PREFIX}node_watch_lag_seconds", "Seconds since the Node watch last heard from the "
                                "API server (an event, a bookmark, a list, or the server ending a watch): how stale "
                                "the dispatcher's view of the Nodes may be.")  # fmt: skip
        if watch.since_contact_s is not None:
            lag.add_metric([], watch.since_contact_s)
        yield lag
