"""The dispatcher's sans-I/O core: ``handle(event) -> list[command]``, time passed in as data.

Rules (the invariants ``validate_state()`` checks after every step in tests):

1. Every unresolved task is in exactly one place: queued in one node's queue, queued in the
   shared pool, or in flight on exactly one node. Resolved tasks are forgotten.
2. A task pinned to a PENDING or ALIVE node waits in that node's queue; a task with no node, or
   pinned to a node that is DEAD, GONE or DRAINING, waits in the shared pool.
3. A node receives tasks only while ALIVE and only up to its credit; credit plus in-flight never
   exceeds ``slots + prefetch``. It takes the lowest rank first from its own queue and the pool.
4. The first result for a task id resolves it and goes to the client that submitted it; every
   later result for that id is dropped (counted in ``duplicates_dropped``). A result counts only
   from a node the task was given to, or could have been (``_may_resolve``); any other is
   refused (``results_refused``): an agent cannot resolve another node's work.
5. A node silent for ``heartbeat_interval_s x liveness`` is DEAD: its queued and in-flight tasks
   move to the pool (in-flight ones run again elsewhere: at-least-once execution), except
   in-flight tasks flagged NO_RETRY_ON_NODE_LOSS, which resolve NODE_LOST. A PENDING node never
   registered within ``pending_grace_s`` is DEAD the same way. Every client hears NODE_CHANGED
   when a node registers, drains, dies or leaves, so it can re-plan (REPIN moves queued tasks).
7. A result from a copy other than the one the dispatcher holds in flight (a partition healed)
   wins if the task is unresolved; the other copy is cancelled on its node where still possible.
8. Soft affinity: a task flagged SOFT_AFFINITY may also leave a *live* node when an idle node
   would finish it sooner (``stealing.plan_steals``). Queued in the dispatcher, it moves at once;
   prefetched by the victim's agent, it moves in two phases: STEAL_REQUEST with a request id,
   and only the tasks the agent confirms it had not started, and that are still in flight on
   that agent, leave it. A reply to an unknown or stale request changes nothing else, so a task
   is never dispatched twice by a race. Strict tasks (the default) leave only a dead node.
9. Identities are bound to keys (with CurveZMQ; without keys every key is "" and nothing is
   refused). A client id belongs to the key that first said HELLO with it. An agent key bound to
   a node name (``agents/agent-NAME.key``) registers that node only, and a node with a key of
   its own is no longer accepted under the shared agent key (nor after its own key is revoked).
   Every later message must come with the key its peer registered or said HELLO with. When the
   allow-lists change (``KeysChanged``), a node whose agent's key no longer fits is dropped
   (DEAD: its work moves on), and a client whose key was revoked is forgotten with its tasks:
   it gets nothing more.
10. The cluster's word (the Node watch: ``NodesListed``, ``NodeObserved``, ``NodeDeleted``;
   without it nothing here applies). A cordoned Node holds its ALIVE node in DRAINING
   ("cordoned"): running tasks finish; its queued tasks, and those its agent prefetched but has
   not started (asked back in two phases, as a steal), go to the pool; uncordoned, it is ALIVE
   again (an agent that is itself draining stays draining). A Node not Ready makes its node
   suspect: dead at its first missed heartbeat. A deleted Node's node is GONE at once (its
   in-flight work runs again elsewhere, first result wins) and its agent is refused until a
   Node of that name is listed again; the entry is dropped once no task names it. An agent
   whose Node is not listed (once a first list has come) waits, held ("not-in-api"), until it
   is. Heartbeats stay the ground truth for liveness: the API being away changes nothing.
11. A task pinned to a node whose agent's runtime versions differ from its client's (Python
   major.minor, Parsl, dill: ``runtime.versions``) resolves REJECTED, saying which differ.
12. A monitoring message (MONITOR) goes, unread, to the client of its task while that task is
   unresolved and ran on the node that sent it (in flight there, or there before: a result held
   over a reconnect, a dead incarnation's late word), in the order the node sent it, and so
   ahead of the task's RESOLVED from that node. Any other is dropped and counted: an agent can
   send a client monitoring only of the work it was given.
13. Payloads have a budget (``payload_budget``): a task whose payload would take the payloads held
   and asked for past it, or that its client sent HELD (saying its size), is queued without it
   (its client keeps every payload it sent until the task resolves). When such a task is next on
   a node with credit, the node waits and its client is asked for the payload of it and of the
   next ones in that queue's rank order that the budget has room for (FETCH; again after
   ``fetch_timeout_s``); the rank order is never skipped. A payload nobody asked for, or of
   another size than its task's, is not taken. A client that leaves a FETCH unanswered
   ``FETCH_TRIES`` times has its held tasks at the head of a queue resolved REJECTED until it
   speaks again, so a client that is gone blocks no node. At the budget, a dispatched task's
   payload is let go (its agent has it; run again elsewhere, it is fetched again). A client
   whose protocol has no FETCH keeps all its payloads here, and may not come back as one.
6. Bad input never raises out of ``handle``: malformed frames are counted, unknown peers are told
   to register or say hello, invalid submissions resolve as REJECTED. A step that raises all the
   same (a bug) is undone whole by the journal before the exception leaves ``handle``: the
   state is as it was and no command was issued.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Final, assert_never

from dispatcher import protocol as p
from dispatcher.protocol import TaskKey
from dispatcher.runtime.smoothing import ema
from dispatcher.runtime.throttle import log_due
from dispatcher.runtime.versions import mismatch
from dispatcher.server.config import CoreConfig
from dispatcher.server.events import (
    NO_NODE,
    POOL_LABEL,
    AgentMessageReceived,
    ClientMessageReceived,
    ClusterNode,
    Command,
    Count,
    Event,
    FrameRejected,
    KeysChanged,
    Log,
    LogLevel,
    NodeDeleted,
    NodeObserved,
    NodesListed,
    Observe,
    SendToAgent,
    SendToClient,
    Ticked,
)
from dispatcher.server.journal import Journal
from dispatcher.server.node import ACCEPTS_PINS, CONNECTED, HELD, NodeActor, NodeState
from dispatcher.server.stealing import ThiefView, plan_steals, victim_view
from dispatcher.server.tasks import POOL, Fetch, TaskQueue, TaskRecord

_SPOKEN: Final = " and ".join(map(str, p.SUPPORTED_VERSIONS))
SWEEP_S: Final = 1.0
"""How often deleted Nodes' entries are looked at, to drop those no task names any more."""
FETCH_SINCE: Final = 5
"""The protocol version that has HELD, FETCH and PAYLOADS: a client of an older one keeps no payload
for the dispatcher to ask back, so the dispatcher holds all of its."""
_HELD_FLAG: Final = p.HELD
_SOFT_FLAG: Final = p.SOFT_AFFINITY
_COALESCE_BYTES: Final = p.COALESCE_BYTES
_Assignment: Final = p.TaskAssignment
FETCH_TRIES: Final = 3
"""FETCHes of one payload left unanswered (``fetch_timeout_s`` each) before its client is taken
for gone (rule 13)."""


class DispatcherCore:
    """All dispatcher state. Change it only through :meth:`handle`."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.journal = Journal()
        """Notes every change of a step, so a step that raises leaves the state as it was."""
        self.nodes: dict[str, NodeActor] = {}
        self.pool = TaskQueue(POOL, self.journal)
        self.tasks: dict[TaskKey, TaskRecord] = {}
        self._agents: dict[bytes, NodeActor] = {}
        """Routing id -> node, for the latest incarnation of each node."""
        self._hungry: dict[str, NodeActor] = {}
        """ALIVE nodes with credit > 0, in the order they asked."""
        self._clients: dict[str, bytes] = {}
        self._client_ids: dict[bytes, str] = {}
        self.tasks_submitted = 0
        self.tasks_resolved = 0
        self.duplicates_dropped = 0
        self.bad_frames = 0
        self.tasks_stolen = 0
        self._soft = 0
        """Unresolved tasks flagged SOFT_AFFINITY (no stealing round without any)."""
        self._steals: dict[int, tuple[str, str, list[TaskKey]]] = {}
        """Pending two-phase steals: request id -> (victim, thief, tasks asked for)."""
        self._steal_ids = 0
        self._out: list[Command] = []
        self._now = 0.0
        self._agent_keys: Mapping[str, str] | None = None
        """Allowed agent keys -> the node name each is bound to ("" for the shared key); None: no keys."""
        self._bound_names: frozenset[str] = frozenset()
        """Nodes that have a key of their own: the shared agent key cannot register them."""
        self._client_key_set: frozenset[str] | None = None
        self._node_keys: dict[str, str] = {}
        """Node name -> the key its current agent registered with."""
        self._client_keys: dict[str, str] = {}
        """Client id -> the key that first said HELLO with it (kept after a revocation, so the id
        stays taken)."""
        self.clients_refused = 0
        """HELLOs refused: the client id belongs to another key."""
        self.agents_refused = 0
        """Registrations refused for a key that does not fit the node name (impersonation)."""
        self.results_refused = 0
        """Results from a node a task was never sent to (forged, or from an unknown peer): dropped."""
        self._client_versions: dict[str, str] = {}
        """Client id -> the runtime versions its HELLO said (rule 11)."""
        self._client_protocols: dict[str, int] = {}
        """Client id -> the protocol version its last HELLO spoke (rule 13: FETCH only to those that know it)."""
        self._api: dict[str, ClusterNode] | None = None
        """The Nodes the API lists, by name; None until the Node watch's first list (rule 10)."""
        self._deleted: dict[str, None] = {}
        """Nodes deleted in the API and not listed since: their agents are refused."""
        self._swept = 0.0
        self._metrics = config.metrics
        self.payload_bytes = 0
        """Bytes of the payloads the task records hold (rule 13)."""
        self.fetch_bytes = 0
        """Bytes of the payloads asked for (FETCH) and not yet here (rule 13)."""
        self._waiting: dict[str, NodeActor] = {}
        """Nodes with credit whose next task's payload was asked for (FETCH), not yet here."""
        self._unanswered: dict[str, None] = {}
        """Clients that left a FETCH unanswered FETCH_TRIES times and have not spoken since."""

    # ------------------------------------------------------------------ entry point

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; return what the shell must do, in order.

        Atomic: if handling raises, every change it made is undone (``journal.py``) and the
        exception propagates; the state is as it was and no command was issued."""
        self._out = out = list[Command]()
        journal = self.journal
        before = (self._now, self._counters(), self._agent_keys, self._bound_names, self._client_key_set,
                  self._api, self._swept)  # fmt: skip
        journal.begin()
        self._now = event.now
        try:
            match event:
                case AgentMessageReceived():
                    self._agent_message(event)
                case ClientMessageReceived():
                    self._client_message(event)
                case Ticked():
                    self._handle_ticked(event)
                case FrameRejected():
                    self._handle_frame_rejected(event)
                case KeysChanged():
                    self._handle_keys_changed(event)
                case NodesListed():
                    self._handle_nodes_listed(event)
                case NodeObserved():
                    self._handle_node_observed(event)
                case NodeDeleted():
                    self._handle_node_deleted(event)
                case _:  # pragma: no cover - the Event union is closed
                    assert_never(event)
            self._check_step()
        except BaseException:
            journal.rollback()
            (self._now, counters, self._agent_keys, self._bound_names, self._client_key_set,
             self._api, self._swept) = before  # fmt: skip
            self._set_counters(counters)
            self._out = []
            raise
        journal.commit()
        self._out = []
        return out

    def _check_step(self) -> None:
        """Called at the end of every step, before it is committed: tests make it raise to check
        that a failed step leaves nothing behind."""

    def _counters(self) -> tuple[int, ...]:
        return (
            self.tasks_submitted, self.tasks_resolved, self.duplicates_dropped, self.bad_frames,
            self.tasks_stolen, self._soft, self._steal_ids, self.clients_refused, self.agents_refused,
            self.results_refused, self.payload_bytes, self.fetch_bytes,
        )  # fmt: skip

    def _set_counters(self, counters: tuple[int, ...]) -> None:
        (
            self.tasks_submitted, self.tasks_resolved, self.duplicates_dropped, self.bad_frames,
            self.tasks_stolen, self._soft, self._steal_ids, self.clients_refused, self.agents_refused,
            self.results_refused, self.payload_bytes, self.fetch_bytes,
        ) = counters  # fmt: skip

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------------ small helpers

    def _log(self, event: str, level: LogLevel = "info", **fields: object) -> None:
        self._out.append(Log(event, level, fields))

    def _count(self, metric: str, *labels: str, n: int = 1) -> None:
        """A fact for the metrics (``metrics.py``); like every command, only if the step commits."""
        if self._metrics:
            self._out.append(Count(metric, labels, n))

    def _to_agent(self, node: NodeActor, message: p.Message) -> None:
        assert node.peer is not None
        self.journal.save(node)
        node.last_sent = self._now
        self._out.append(SendToAgent(node.peer, message))

    def _broadcast(self, node: NodeActor) -> None:
        """Tell every client a node changed state (they may re-plan)."""
        notice = p.NodeChanged(node.name, node.state.value, node.incarnation, node.speed)
        for peer in self._clients.values():
            self._out.append(SendToClient(peer, notice))

    def _resolve(self, by_client: dict[str, list[p.Resolution]]) -> None:
        """Send each client its resolutions, counted per node and outcome (every task resolves
        through here but a revoked client's, counted in ``_revoke_client``)."""
        counts: dict[tuple[str, p.Outcome], int] = defaultdict(int)
        for client_id, results in by_client.items():
            for resolution in results:
                counts[resolution.node_name, resolution.outcome] += 1
            peer = self._clients.get(client_id)
            if peer is not None:
                self._out.append(SendToClient(peer, p.Resolved(tuple(results))))
        for (node_name, outcome), n in counts.items():
            self._count("tasks_resolved", node_name or NO_NODE, outcome.name.lower(), n=n)

    def _forget(self, record: TaskRecord) -> None:
        """Remove ``record`` from wherever it is; it is resolved."""
        journal = self.journal
        journal.keep(self.tasks, record.key)
        del self.tasks[record.key]
        payload = record.payload
        if payload is not None:
            self.payload_bytes -= len(payload)
        elif record.fetching is not None:
            self.fetch_bytes -= record.size
        if record.flags & _SOFT_FLAG:
            self._soft -= 1
        if record.queue is not None:
            record.queue.discard(record)
        elif record.holder is not None:
            holder = self.nodes[record.holder]
            journal.keep(holder.in_flight, record.key)
            del holder.in_flight[record.key]
            journal.save(record)
            record.holder = None
        self.tasks_resolved += 1

    # ------------------------------------------------------------------ placement and flow

    def _home(self, record: TaskRecord) -> TaskQueue:
        """Where a queued task waits (rule 2)."""
        if record.node_name is not None:
            node = self.nodes.get(record.node_name)
            if node is not None and node.state in ACCEPTS_PINS:
                return node.queue
        return self.pool

    def _pump(self, node: NodeActor) -> None:
        """Send ``node`` as many tasks as its credit allows, lowest rank first (rule 3)."""
        if node.state is not NodeState.ALIVE or node.credit <= 0:
            self._unhungry(node)
            return
        own, pool = node.queue, self.pool
        batch: list[p.TaskAssignment] = []
        batch_bytes = 0
        blocked: TaskQueue | None = None
        budget = self.config.payload_budget
        at_budget = bool(budget) and self.payload_bytes >= budget  # kept as the loop lowers payload_bytes
        gone: dict[str, list[p.Resolution]] | None = None
        from_pool = pool.peek() is not None  # (dropping stale entries) nothing enters it in this loop
        in_flight, name = node.in_flight, node.name
        self.journal.save(node)  # its credit and in-flight tasks change below
        while node.credit > 0:
            own_next, pool_next = own.peek(), pool.peek() if from_pool else None
            if own_next is None and pool_next is None:
                break
            if pool_next is None or (own_next is not None and own_next.rank <= pool_next.rank):
                source, head = own, own_next
            else:
                source, head = pool, pool_next
            assert head is not None
            if head.payload is None:  # rule 13: wait for it, in rank order
                client_id = head.key[0]
                expired = head.fetching is None or head.fetching <= self._now - self.config.fetch_timeout_s
                if (expired and head.fetches >= FETCH_TRIES) or client_id in self._unanswered:
                    if head.fetching is not None and client_id not in self._unanswered:
                        self._unanswering(client_id)
                    why = f"its client did not send its payload ({FETCH_TRIES} FETCHes unanswered)"
                    self._forget(head)
                    gone = gone if gone is not None else defaultdict(list)
                    gone[client_id].append(p.Resolution(head.key[1], p.Outcome.REJECTED, why.encode(), ""))
                    continue
                blocked = source
                if expired:
                    self._fetch(node, source, head)
                break
            record = source.start_next(in_flight, name)  # NodeActor.start_next, inline (saved above)
            node.credit -= 1
            payload = record.payload
            assert payload is not None
            size = len(payload)
            if batch_bytes + size > _COALESCE_BYTES and batch:  # no TASKS past what its agent takes
                self._assign(node, batch)
                batch, batch_bytes = [], 0
            key = record.key
            batch.append(_Assignment(key[0], key[1], record.rank, payload))
            batch_bytes += size
            fetch = record.fetch
            refill = fetch is not None and type(fetch) is Fetch and fetch.refill
            if at_budget or refill:
                self.journal.save(record)
                if refill:
                    record.refill = False
                    self._fetch(node, source, None)
                if at_budget and self._fetchable(key[0]):  # its agent has it; fetched again to run elsewhere
                    self.payload_bytes -= record.drop_payload()
                    at_budget = self.payload_bytes >= budget
        if blocked is not None:
            if node.name not in self._waiting:
                self.journal.keep(self._waiting, node.name)
                self._waiting[node.name] = node
        else:
            self._unwait(node)
        if batch:
            self._assign(node, batch)
        if gone:
            self._resolve(gone)
        if node.credit > 0:
            if node.name not in self._hungry:
                self.journal.keep(self._hungry, node.name)
                self._hungry[node.name] = node
        else:
            self._unhungry(node)

    def _assign(self, node: NodeActor, batch: list[p.TaskAssignment]) -> None:
        """One TASKS to ``node``'s agent, counted."""
        self._to_agent(node, p.Tasks(tuple(batch)))
        self._count("tasks_dispatched", node.name, n=len(batch))

    def _unwait(self, node: NodeActor) -> None:
        if node.name in self._waiting:
            self.journal.keep(self._waiting, node.name)
            del self._waiting[node.name]

    def _fetchable(self, client_id: str) -> bool:
        """Whether the client holds its payloads for the dispatcher to ask back (rule 13)."""
        return self._client_protocols.get(client_id, 0) >= FETCH_SINCE

    def _fetch(self, node: NodeActor, source: TaskQueue, head: TaskRecord | None) -> None:
        """Ask the clients for the payloads of ``source``'s next held tasks (rule 13): up to twice
        what ``node`` can hold (the middle one, dispatched, asks for the next batch; only its
        credit's worth at the budget), as many as the budget has room for beside what it holds
        and has asked for; and ``head``, the task the node waits for, even past the budget's room
        while there is some room or nothing else is asked for (so payloads held behind a held head
        never deadlock it, and heads of many nodes do not all overshoot at once)."""
        budget, timeout = self.config.payload_budget, self.config.fetch_timeout_s
        n = 2 * node.capacity if not budget or self.payload_bytes < budget else max(node.credit, 1)
        room = budget - self.payload_bytes - self.fetch_bytes if budget else None
        records = []
        for record in source.next_held(n, self._now - timeout):
            counted = record.fetching is not None  # its earlier FETCH is in fetch_bytes already
            cost = 0 if counted else record.size
            if room is not None and cost > room and (record is not head or (room <= 0 and self.fetch_bytes)):
                break  # a head left waiting goes on when payloads come or the tick pumps it again
            if room is not None:
                room -= cost
            records.append(record)
        by_client: dict[str, list[int]] = defaultdict(list)
        middle = len(records) // 2 if len(records) > 1 else -1
        for i, record in enumerate(records):
            self.journal.save(record)
            fetch = record.asked()
            if fetch.fetching is None:
                self.fetch_bytes += fetch.size
            record.fetch = fetch._replace(fetching=self._now, fetches=fetch.fetches + 1, refill=i == middle)
            by_client[record.key[0]].append(record.key[1])
        for client_id, ids in by_client.items():
            peer = self._clients.get(client_id)
            if peer is not None:
                self._out.append(SendToClient(peer, p.Fetch(tuple(ids))))
            self._count("payloads_fetched", node.name, n=len(ids))

    def _handle_payloads(self, client_id: str, message: p.Payloads) -> None:
        """The payloads FETCH asked for: each waiting task takes its own, and the nodes waiting
        for them go on (rule 13). One nobody asked for (or already here) is not taken, nor a late
        one (its FETCH given up on) the budget has no room for; one of another size than its task
        said, or above the size limit, resolves its task REJECTED.
        A task its client no longer holds is dropped: it resolved or was cancelled there, so no
        one waits for it."""
        journal, tasks, max_bytes = self.journal, self.tasks, self.config.max_task_bytes
        budget = self.config.payload_budget
        rejected: list[p.Resolution] = []
        for item in message.items:
            record = tasks.get((client_id, item.task_id))
            if record is None or record.payload is not None or record.queue is None:
                continue  # resolved, cancelled or already here: nothing waits for this one
            if record.fetching is None and not (
                record.fetches and (not budget or self.payload_bytes + self.fetch_bytes + record.size <= budget)
            ):
                continue  # never asked for, or asked for, given up on, and now without room
            if len(item.payload) > max_bytes or len(item.payload) != record.size:
                why = (
                    f"task of {len(item.payload)} bytes exceeds the dispatcher's limit of {max_bytes} bytes"
                    if len(item.payload) > max_bytes
                    else f"payload of {len(item.payload)} bytes for a task sent as {record.size}"
                )
                self._forget(record)
                rejected.append(p.Resolution(item.task_id, p.Outcome.REJECTED, why.encode(), ""))
                continue
            journal.save(record)
            if record.fetching is not None:
                self.fetch_bytes -= record.size
            record.payload = item.payload
            record.fetch = record.asked()._replace(fetching=None, fetches=0)
            self.payload_bytes += record.size
        for task_id in message.missing:
            record = tasks.get((client_id, task_id))
            if record is not None and record.payload is None and record.fetching is not None:
                self._forget(record)
                gone = b"its client no longer holds its payload"
                rejected.append(p.Resolution(task_id, p.Outcome.REJECTED, gone, ""))
        if rejected:
            self._resolve({client_id: rejected})
        self._pump_waiting()

    def _pump_waiting(self) -> None:
        for node in list(self._waiting.values()):
            self._pump(node)

    def _unhungry(self, node: NodeActor) -> None:
        self._unwait(node)
        if node.name in self._hungry:
            self.journal.keep(self._hungry, node.name)
            del self._hungry[node.name]

    def _pump_pool(self) -> None:
        for node in list(self._hungry.values()):
            if not self.pool:
                return
            self._pump(node)

    def _requeue(self, records: list[TaskRecord]) -> None:
        for record in records:
            self._home(record).push(record)

    def _declare_dead(self, node: NodeActor, reason: str, cause: str, state: NodeState = NodeState.DEAD) -> None:
        """The node's agent is gone: its queued and in-flight work moves to the pool (rule 5).
        ``cause`` is ``reason`` as a bounded label (``metrics.DEATH_CAUSES``)."""
        in_flight = len(node.in_flight)
        queued = len(node.queue)
        self._unhungry(node)
        running = set(node.in_flight)
        work = node.detach(state)
        why = f"node {node.name} died while running it ({reason if state is NodeState.DEAD else 'it left: ' + reason})"
        lost: dict[str, list[p.Resolution]] = defaultdict(list)
        requeue = []
        journal = self.journal
        for record in work:
            journal.save(record)
            record.steal_id = 0
            if record.key in running and record.flags & p.NO_RETRY_ON_NODE_LOSS:
                journal.keep(self.tasks, record.key)
                del self.tasks[record.key]
                self.tasks_resolved += 1
                if record.payload is not None:
                    self.payload_bytes -= len(record.payload)
                if record.flags & p.SOFT_AFFINITY:
                    self._soft -= 1
                lost[record.key[0]].append(p.Resolution(record.key[1], p.Outcome.NODE_LOST, why.encode(), node.name))
            else:
                requeue.append(record)
        self._requeue(requeue)
        self._resolve(lost)
        self._broadcast(node)
        for request_id in [i for i, (victim, _, _) in self._steals.items() if victim == node.name]:
            journal.keep(self._steals, request_id)
            del self._steals[request_id]
        self._count("node_deaths", node.name, cause)
        self._log(
            "node_dead" if state is NodeState.DEAD else "node_left",
            "warning" if state is NodeState.DEAD else "info",
            node=node.name,
            incarnation=node.incarnation,
            reason=reason,
            requeued_in_flight=in_flight,
            requeued_queued=queued,
        )
        self._pump_pool()

    # ------------------------------------------------------------------ agent side

    def _agent_message(self, event: AgentMessageReceived) -> None:
        message = event.message
        if type(message) is p.Register:
            self._handle_register(event.peer, message, event.key)
            return
        node = self._agents.get(event.peer)
        if node is not None and self._node_keys.get(node.name, "") != event.key:
            node = None  # a routing id taken over by another connection, with another key
        if node is None or node.state not in CONNECTED:
            # A peer we do not know, or an incarnation we declared dead. Its results are still
            # welcome (first result wins); anything else is answered with "register again".
            if type(message) is p.Results:
                self._handle_results(node, message)
            elif type(message) is p.Monitor:  # a dead incarnation's, ahead of its late results
                self._handle_monitor(node, message)
            if type(message) is not p.Bye:
                self._out.append(SendToAgent(event.peer, p.Reregister()))
            return
        self.journal.save(node)
        node.last_seen = self._now
        match message:
            case p.Credit():
                node.grant(message.n)
                self._pump(node)
            case p.Results():
                self._handle_results(node, message)
                if message.credit:  # the slots these results freed: after them, as version 1's CREDIT was
                    node.grant(message.credit)
                    self._pump(node)
            case p.Drain():
                self._handle_drain(node, message)
            case p.StealReply():
                self._handle_steal_reply(node, message)
            case p.Bye():
                self._handle_bye(node)
            case p.Monitor():
                self._handle_monitor(node, message)
            case p.AgentStatus():
                node.worker_respawns = message.worker_respawns
                node.busy_workers = message.busy_workers
            case p.Heartbeat():
                pass  # being heard from is all it says
            case p.Register():  # pragma: no cover - handled above
                raise AssertionError(message)
            case _:  # pragma: no cover - the AgentMessage union is closed
                assert_never(message)

    def _handle_register(self, peer: bytes, message: p.Register, key: str) -> None:
        name = message.node_name
        refusal = None
        node = self.nodes.get(name)
        cause = "version"
        if message.protocol_version not in p.SUPPORTED_VERSIONS:
            refusal = f"protocol version {message.protocol_version}; the dispatcher speaks {_SPOKEN}"
        elif not p.is_node_name(name):
            refusal, cause = f"{name!r} is not a valid Kubernetes node name (RFC 1123 subdomain)", "name"
        elif (refusal := _key_refusal(self._agent_keys, self._bound_names, name, key)) is not None:
            self.agents_refused += 1
            cause = "key"
        elif name in self._deleted:
            refusal = f"the Kubernetes Node {name} was deleted: refused until a Node of that name is listed again"
            cause = "deleted"
        elif node is not None and node.state in CONNECTED and node.agent_id != message.agent_id:
            refusal, cause = f"node {name} is already registered by live agent {node.agent_id}", "taken"
        elif node is None and len(self.nodes) >= self.config.max_nodes:
            refusal, cause = f"dispatcher is at its limit of {self.config.max_nodes} nodes", "limit"
        if refusal is not None:
            self._count("peers_refused", "agent", cause)
            self._log("agent_refused", "warning", node=name, agent_id=message.agent_id, reason=refusal)
            self._out.append(SendToAgent(peer, p.Refused(refusal)))
            return
        previous = self._agents.get(peer)
        if previous is not None and previous.name != name and previous.state in CONNECTED:
            self._declare_dead(previous, f"its agent re-registered as {name}", "replaced")
        journal = self.journal
        if node is None:
            node = self._new_node(name)
        journal.save(node)
        if node.state in CONNECTED:  # the same agent again, on a new socket after losing its connection
            if node.peer != peer:
                self._drop_agent(node.peer)
                node.peer = peer
            node.last_seen = self._now
            self._resync(node, {(ref.client_id, ref.task_id) for ref in message.running})
        else:
            self._drop_agent(node.peer)
            slots, prefetch, speed = message.slots, message.prefetch, message.speed
            node.attach(
                peer, message.agent_id, slots=slots, prefetch=prefetch, speed=speed, now=self._now,
                versions=message.versions,
            )  # fmt: skip
            self._learn_speed(node)
            self._reclaim(node)
            self._refuse_mismatched(node)
            self._broadcast(node)
            self._log(
                "node_registered",
                node=name,
                agent_id=message.agent_id,
                incarnation=node.incarnation,
                slots=message.slots,
                speed=message.speed,
                queued=len(node.queue),
            )
        journal.keep(self._agents, peer)
        self._agents[peer] = node
        if self._node_keys.get(name) != key:
            journal.keep(self._node_keys, name)
            self._node_keys[name] = key
        cfg = self.config
        self._to_agent(
            node,
            p.Registered(name, node.incarnation, cfg.dispatcher_id, cfg.heartbeat_interval_s, cfg.liveness),
        )
        self._apply_cluster(node)

    def _refuse_mismatched(self, node: NodeActor) -> None:
        """Rule 11 for what was queued before this agent said its versions (a node pinned to
        while PENDING, or an agent replaced by a rolling update): tasks whose client's versions
        differ resolve REJECTED now, instead of failing to unpickle there."""
        if not node.versions or not node.queue:
            return
        rejected: dict[str, list[p.Resolution]] = defaultdict(list)
        for record in node.queue.records():
            client_id = record.key[0]
            why = _version_refusal(self._client_versions.get(client_id, ""), node)
            if why is not None:
                self._forget(record)
                rejected[client_id].append(p.Resolution(record.key[1], p.Outcome.REJECTED, why.encode(), ""))
        if rejected:
            self._log("tasks_refused", "warning", node=node.name, tasks=sum(map(len, rejected.values())),
                      reason="runtime versions differ")  # fmt: skip
            self._resolve(rejected)

    def _new_node(self, name: str) -> NodeActor:
        self.journal.keep(self.nodes, name)
        node = self.nodes[name] = NodeActor(name, self._now, self.journal)
        return node

    def _drop_agent(self, peer: bytes | None) -> None:
        if peer is not None and peer in self._agents:
            self.journal.keep(self._agents, peer)
            del self._agents[peer]

    def _resync(self, node: NodeActor, running: set[TaskKey]) -> None:
        """The agent started over: it runs ``running`` and nothing else we sent it (it dropped what it
        had not started, and frames sent to its old socket were lost). The rest goes back to its queue."""
        lost = [record for key, record in node.in_flight.items() if key not in running]
        journal = self.journal
        for record in lost:
            journal.keep(node.in_flight, record.key)
            del node.in_flight[record.key]
            journal.save(record)
            record.release()
            record.steal_id = 0
        self._requeue(lost)
        journal.save(node)
        node.credit = 0  # it grants afresh
        self._unhungry(node)
        if lost:
            self._log("agent_resynced", node=node.name, requeued=len(lost), running=len(node.in_flight))

    def _reclaim(self, node: NodeActor) -> None:
        """A node is back: its pinned tasks still waiting in the pool return to its queue."""
        if self.pool:
            pinned = [record for record in self.pool.records() if record.node_name == node.name]
            for record in sorted(pinned, key=_arrival):  # their order as they were queued (rule 3)
                node.queue.push(record)

    def _handle_results(self, node: NodeActor | None, message: p.Results) -> None:
        ran_on = node.name if node is not None else ""
        if node is not None:  # also a dead incarnation's late results: they still count there
            self.journal.save(node)
        refused = duplicates = 0
        by_client: dict[str, list[p.Resolution]] = defaultdict(list)
        cancels: dict[str, list[p.TaskRef]] = defaultdict(list)
        tasks = self.tasks
        now, metrics = self._now, self._metrics
        waits: list[float] = []
        runs: list[float] = []
        ok, resolution_of, forget = p.Outcome.OK, p.Resolution, self._forget
        runtime = node.runtime_s if node is not None else None
        for result in message.results:
            record = tasks.get((result.client_id, result.task_id))
            if record is None:
                duplicates += 1
                continue
            if record.holder != ran_on and not _may_resolve(record, ran_on):
                self.results_refused += 1
                refused += 1
                continue
            if metrics:  # queued -> started: the start is when it ended less its run
                runs.append(result.runtime_s)
                waits.append(max(0.0, now - result.runtime_s - record.queued_at))
            if record.holder is not None and record.holder != ran_on:  # another copy is out there
                cancels[record.holder].append(p.TaskRef(*record.key))
            forget(record)
            if result.outcome is ok:
                runtime = ema(runtime, result.runtime_s)
            resolution = resolution_of(result.task_id, result.outcome, result.payload, ran_on, result.runtime_s)
            by_client[result.client_id].append(resolution)
        if node is not None:
            node.runtime_s = runtime
        label = ran_on or NO_NODE
        if duplicates:
            self.duplicates_dropped += duplicates
            self._count("duplicates_dropped", label, n=duplicates)
        if refused:
            self._count("results_refused", label, n=refused)
        if runs:
            self._out.append(Observe("task_run_seconds", (label,), tuple(runs)))
            self._out.append(Observe("task_wait_seconds", (label,), tuple(waits)))
        if refused and log_due(self.results_refused, refused, self.config.bad_frame_log_every):
            self._log("results_refused", "warning", node=ran_on or None, refused=refused, total=self.results_refused,
                      reason="results for tasks never sent to this node")  # fmt: skip
        if node is not None:
            node.done += sum(len(v) for v in by_client.values())
        self._resolve(by_client)
        for holder, refs in cancels.items():
            other = self.nodes[holder]
            if other.state in CONNECTED:
                self._to_agent(other, p.CancelTasks(tuple(refs)))

    def _handle_monitor(self, node: NodeActor | None, message: p.Monitor) -> None:
        """Rule 12. ``node``: the sender's node, connected or a dead incarnation (None: unknown)."""
        by_client: dict[str, list[p.MonitoredItem]] = defaultdict(list)
        tasks, clients = self.tasks, self._clients
        name = node.name if node is not None else ""
        dropped = 0
        for item in message.items:
            record = tasks.get((item.client_id, item.task_id))
            if (
                not name
                or record is None
                or (record.holder != name and name not in record.earlier)
                or item.client_id not in clients
            ):
                dropped += 1
                continue
            by_client[item.client_id].append(p.MonitoredItem(item.task_id, item.payload))
        forwarded = 0
        for client_id, items in by_client.items():
            self._out.append(SendToClient(clients[client_id], p.Monitored(tuple(items))))
            forwarded += len(items)
        label = name or NO_NODE
        if forwarded:
            self._count("monitoring_messages", label, "forwarded", n=forwarded)
        if dropped:
            self._count("monitoring_messages", label, "dropped", n=dropped)

    def _handle_drain(self, node: NodeActor, message: p.Drain) -> None:
        journal = self.journal
        node.state = NodeState.DRAINING
        node.reason = "draining"  # its agent's word: the cluster cannot undo it
        node.credit = 0
        self._unhungry(node)
        self._broadcast(node)
        keys = [(ref.client_id, ref.task_id) for ref in message.returned]
        returned = []
        for key in keys:
            if key in node.in_flight:
                journal.keep(node.in_flight, key)
                returned.append(node.in_flight.pop(key))
        for record in returned:
            journal.save(record)
            record.release()
        self._requeue(returned + node.queue.take_all())
        self._count("node_drains", node.name, "agent")
        self._log("node_draining", node=node.name, returned=len(returned), running=len(node.in_flight))
        self._pump_pool()

    def _handle_bye(self, node: NodeActor) -> None:
        self._drop_agent(node.peer)
        self._declare_dead(node, "agent said bye", "bye", NodeState.GONE)
        node.peer = None

    # ------------------------------------------------------------------ client side

    def _client_message(self, event: ClientMessageReceived) -> None:
        message = event.message
        if type(message) is p.Hello:
            self._handle_hello(event.peer, message, event.key)
            return
        client_id = self._client_ids.get(event.peer)
        if client_id is not None and self._client_keys.get(client_id) != event.key:
            client_id = None  # a routing id taken over by another connection, with another key
        if client_id is None:
            error = p.Error(p.ErrorCode.UNKNOWN_CLIENT, "say HELLO first (the dispatcher may have restarted)")
            self._out.append(SendToClient(event.peer, error))
            return
        if client_id in self._unanswered:  # it speaks: FETCH it again (rule 13)
            self.journal.keep(self._unanswered, client_id)
            del self._unanswered[client_id]
        match message:
            case p.Submit():
                self._handle_submit(client_id, message)
            case p.Cancel():
                self._handle_cancel(client_id, message)
            case p.Repin():
                self._handle_repin(client_id, message)
            case p.Payloads():
                self._handle_payloads(client_id, message)
            case p.NodesQuery():
                self._out.append(SendToClient(event.peer, p.Nodes(message.request_id, self.node_infos())))
            case p.StatusQuery():
                self._out.append(SendToClient(event.peer, self._status(message.request_id)))
            case p.Heartbeat():
                self._out.append(SendToClient(event.peer, p.Heartbeat()))
            case p.Hello():  # pragma: no cover - handled above
                raise AssertionError(message)
            case _:  # pragma: no cover - the ClientMessage union is closed
                assert_never(message)

    def _handle_hello(self, peer: bytes, message: p.Hello, key: str) -> None:
        if message.protocol_version not in p.SUPPORTED_VERSIONS:
            text = f"protocol version {message.protocol_version}; the dispatcher speaks {_SPOKEN}"
            self._out.append(SendToClient(peer, p.Error(p.ErrorCode.VERSION_MISMATCH, text)))
            self._count("peers_refused", "client", "version")
            return
        journal = self.journal
        bound = self._client_keys.get(message.client_id)
        if bound is not None and bound != key:  # another key: it may not take over this id's results
            self.clients_refused += 1
            self._count("peers_refused", "client", "key")
            self._log("client_refused", "warning", client_id=message.client_id, reason="id bound to another key")
            text = f"client id {message.client_id} belongs to another key: choose another id"
            self._out.append(SendToClient(peer, p.Error(p.ErrorCode.REFUSED, text)))
            return
        spoke = self._client_protocols.get(message.client_id, 0)
        if spoke >= FETCH_SINCE > message.protocol_version:  # its held payloads could never be fetched
            text = (
                f"client id {message.client_id} spoke protocol version {spoke}, so the dispatcher may wait for "
                f"payloads it holds: it cannot come back as version {message.protocol_version}; choose another id"
            )
            self._out.append(SendToClient(peer, p.Error(p.ErrorCode.REFUSED, text)))
            self._count("peers_refused", "client", "version")
            return
        if bound is None:
            journal.keep(self._client_keys, message.client_id)
            self._client_keys[message.client_id] = key
        if self._client_protocols.get(message.client_id) != message.protocol_version:
            journal.keep(self._client_protocols, message.client_id)
            self._client_protocols[message.client_id] = message.protocol_version
        if self._client_versions.get(message.client_id) != message.versions:
            journal.keep(self._client_versions, message.client_id)
            self._client_versions[message.client_id] = message.versions
        old_peer = self._clients.get(message.client_id)
        if old_peer is not None and old_peer != peer and old_peer in self._client_ids:
            journal.keep(self._client_ids, old_peer)
            del self._client_ids[old_peer]
        journal.keep(self._clients, message.client_id)
        self._clients[message.client_id] = peer
        journal.keep(self._client_ids, peer)
        self._client_ids[peer] = message.client_id
        if old_peer != peer:
            self._log("client_connected", client_id=message.client_id)
        if message.client_id in self._unanswered:
            journal.keep(self._unanswered, message.client_id)
            del self._unanswered[message.client_id]
        if old_peer is not None and old_peer != peer:
            self._refetch(message.client_id)
        cfg = self.config
        window = cfg.payload_budget // 4
        self._out.append(SendToClient(peer, p.Welcome(cfg.dispatcher_id, cfg.heartbeat_interval_s, window)))

    def _refetch(self, client_id: str) -> None:
        """The client has a new connection: the FETCHes sent to its old one are lost, so its
        payloads being fetched are asked for again, now (rule 13)."""
        self._drop_fetches(client_id, lost=True)
        self._pump_waiting()

    def _unanswering(self, client_id: str) -> None:
        """The client left a FETCH unanswered FETCH_TRIES times: until it speaks, its held tasks
        resolve REJECTED as they come next, and what it was asked for leaves the budget's room."""
        self.journal.keep(self._unanswered, client_id)
        self._unanswered[client_id] = None
        self._log("client_unanswered", "warning", client_id=client_id, tries=FETCH_TRIES)
        self._drop_fetches(client_id, lost=False)

    def _drop_fetches(self, client_id: str, *, lost: bool) -> None:
        """Forget the FETCHes outstanding to ``client_id``; ``lost``: every FETCH it was sent went
        to a connection it no longer has, so none counts as unanswered. O(tasks): called when a
        client reconnects or goes silent."""
        for record in self.tasks.values():
            if record.key[0] != client_id or (record.fetching is None and not (lost and record.fetches)):
                continue
            self.journal.save(record)
            if record.fetching is not None:
                record.fetching = None
                self.fetch_bytes -= record.size
            if lost:
                record.fetches = 0

    def _handle_submit(self, client_id: str, message: p.Submit) -> None:
        tasks = self.tasks
        touched: dict[str, NodeActor] = {}
        rejected: list[p.Resolution] = []
        max_bytes = self.config.max_task_bytes
        versions = self._client_versions.get(client_id, "")
        submitted: dict[str, int] = defaultdict(int)
        budget, fetchable = self.config.payload_budget, self._fetchable(client_id)
        room = budget - self.payload_bytes - self.fetch_bytes if budget and fetchable else None
        held_bytes = 0
        deferred: dict[str, int] = defaultdict(int)
        placed: dict[str | None, TaskQueue | str] = {}  # node name: its tasks' queue, or why none
        admitted, soft, now = 0, 0, self._now
        for spec in message.tasks:
            key = (client_id, spec.task_id)
            if key in tasks:  # a re-send of a task we already hold
                continue
            flags = spec.flags
            held = flags & _HELD_FLAG
            size = spec.size if held else len(spec.payload)
            if size > max_bytes:
                why = f"task of {size} bytes exceeds the dispatcher's limit of {max_bytes} bytes"
                rejected.append(p.Resolution(spec.task_id, p.Outcome.REJECTED, why.encode(), ""))
                continue
            name = spec.node_name
            queue = placed.get(name)
            if queue is None:  # the first of this SUBMIT's tasks for the node: the same for the rest
                queue = placed[name] = self._placement(name, versions, touched)
            if isinstance(queue, str):
                rejected.append(p.Resolution(spec.task_id, p.Outcome.REJECTED, queue.encode(), ""))
                continue
            payload: p.Payload | None = spec.payload
            if held:
                payload = None
                flags &= ~_HELD_FLAG
            elif room is not None and held_bytes + size > room:
                payload = None
                deferred[name or POOL_LABEL] += 1
            else:
                held_bytes += size
            record = TaskRecord(key, name, spec.rank, payload, flags, queued_at=now, size=size)
            submitted[name or POOL_LABEL] += 1
            if flags & _SOFT_FLAG:
                soft += 1
            queue.admit(record, tasks)
            admitted += 1
        self.tasks_submitted += admitted
        self._soft += soft
        to_pool = any(queue is self.pool for queue in placed.values())
        self.payload_bytes += held_bytes
        for node in touched.values():
            self._pump(node)
        if to_pool:
            self._pump_pool()
        if rejected:
            self.tasks_resolved += len(rejected)
            self.tasks_submitted += len(rejected)
            submitted[NO_NODE] += len(rejected)
            self._resolve({client_id: rejected})
        for name, n in submitted.items():
            self._count("tasks_submitted", name, n=n)
        for name, n in deferred.items():
            self._count("payloads_deferred", name, n=n)

    def _placement(self, name: str | None, versions: str, touched: dict[str, NodeActor]) -> TaskQueue | str:
        """The queue for a client's new task pinned to ``name`` (rule 2; None: the pool), or why
        it cannot be taken (rule 11, or a node the dispatcher cannot await). A node not known yet
        is awaited from here, taking back what the pool holds pinned to it; one that takes pins
        goes into ``touched``, to be pumped."""
        if name is None or name in self._deleted:
            return self.pool
        node = self.nodes.get(name)
        if node is not None and node.state in CONNECTED and (refusal := _version_refusal(versions, node)):
            return refusal
        if node is None:
            reason = self._unplaceable(name)
            if reason is not None:
                return reason
            node = self._new_node(name)
            self._log("node_awaited", node=name)
            self._reclaim(node)  # its tasks queued in the pool while its Node was deleted (rule 2)
        if node.state in ACCEPTS_PINS:
            touched[name] = node
            return node.queue
        return self.pool

    def _unplaceable(self, name: str) -> str | None:
        """Why a task cannot be pinned to the not-yet-known node ``name``, or None."""
        if not p.is_node_name(name):
            return f"{name!r} is not a valid Kubernetes node name"
        if len(self.nodes) >= self.config.max_nodes:
            return f"unknown node {name!r} and the dispatcher is at its limit of {self.config.max_nodes} nodes"
        return None

    def _handle_repin(self, client_id: str, message: p.Repin) -> None:
        """Move still-queued tasks to their new node and rank; running ones are left alone."""
        touched: dict[str, NodeActor] = {}
        to_pool = False
        for placement in message.tasks:
            record = self.tasks.get((client_id, placement.task_id))
            if record is None or record.queue is None:
                continue
            name = placement.node_name
            if name is not None and name not in self.nodes and name not in self._deleted:
                if self._unplaceable(name) is not None:
                    continue
                self._new_node(name)
            self.journal.save(record)
            record.node_name = name
            record.rank = placement.rank
            home = self._home(record)
            home.push(record)
            if home is self.pool:
                to_pool = True
            elif name is not None:
                touched[name] = self.nodes[name]
        for node in touched.values():
            self._pump(node)
        if to_pool:
            self._pump_pool()

    def _handle_cancel(self, client_id: str, message: p.Cancel) -> None:
        cancelled: list[p.Resolution] = []
        to_agents: dict[str, list[p.TaskRef]] = defaultdict(list)
        for task_id in message.task_ids:
            record = self.tasks.get((client_id, task_id))
            if record is None:
                continue
            if record.queue is not None:
                self._forget(record)
                cancelled.append(p.Resolution(task_id, p.Outcome.CANCELLED, b"cancelled before it started", ""))
            elif record.holder is not None:
                to_agents[record.holder].append(p.TaskRef(client_id, task_id))
        for name, refs in to_agents.items():
            self._to_agent(self.nodes[name], p.CancelTasks(tuple(refs)))
        if cancelled:
            self._resolve({client_id: cancelled})
            self._pump_waiting()  # a node may have waited for one of them

    def node_infos(self) -> tuple[p.NodeInfo, ...]:
        return tuple(
            p.NodeInfo(
                n.name,
                "pending" if n.reason == "not-in-api" else n.state.value,
                n.speed,
                n.slots,
                n.incarnation,
                len(n.queue),
                len(n.in_flight),
                n.done,
                n.worker_respawns,
                "suspect" if n.state is NodeState.ALIVE and self._suspect(n.name) else n.reason,
                n.versions,
                self._zone(n.name),
            )
            for n in sorted(self.nodes.values(), key=lambda n: n.name)
        )

    def _facts(self, name: str) -> ClusterNode | None:
        """What the API lists of Node ``name``; None if it does not (or there is no Node watch)."""
        return self._api.get(name) if self._api is not None else None

    def _zone(self, name: str) -> str:
        facts = self._facts(name)
        return facts.zone if facts is not None else ""

    def _suspect(self, name: str) -> bool:
        """Its Node is listed not Ready (rule 10)."""
        facts = self._facts(name)
        return facts is not None and not facts.ready

    def _status(self, request_id: int) -> p.Status:
        return p.Status(
            request_id,
            self.config.dispatcher_id,
            self.node_infos(),
            len(self.pool),
            self.tasks_submitted,
            self.tasks_resolved,
            self.duplicates_dropped,
            self.bad_frames,
            self.tasks_stolen,
        )

    # ------------------------------------------------------------------ clock and garbage

    def _handle_ticked(self, event: Ticked) -> None:
        now, cfg = event.now, self.config
        suspect_s = min(cfg.expiry_s, 2 * cfg.heartbeat_interval_s)  # one heartbeat missed
        for node in list(self.nodes.values()):
            if node.state in CONNECTED:
                silent_s = now - node.last_seen
                if silent_s > cfg.expiry_s:
                    self._declare_dead(node, f"silent for {silent_s:.2f} s", "heartbeat")
                elif silent_s > suspect_s and self._suspect(node.name):
                    why = f"its Node is not Ready and it missed a heartbeat ({silent_s:.2f} s)"
                    self._declare_dead(node, why, "not_ready")
                elif now - node.last_sent >= cfg.heartbeat_interval_s:
                    self._to_agent(node, p.Heartbeat())
            elif node.state is NodeState.PENDING and now - node.pending_since > cfg.pending_grace_s:
                self._declare_dead(node, f"never registered within {cfg.pending_grace_s:g} s", "never_registered")
        self._pump_waiting()  # a FETCH unanswered for fetch_timeout_s goes again
        if self._soft:
            self._steal_round()
        if self._deleted and now - self._swept >= SWEEP_S:
            self._sweep_deleted()

    # ------------------------------------------------------------------ soft-affinity stealing

    def _steal_round(self) -> None:
        """Let idle nodes take SOFT_AFFINITY tasks from busy live ones (rule 8)."""
        if self.pool:
            return
        asked: dict[str, int] = defaultdict(int)
        for _, thief, keys in self._steals.values():
            asked[thief] += len(keys)
        thieves = [
            ThiefView(n.name, n.speed, n.credit - asked[n.name])
            for n in self._hungry.values()
            if not n.queue and n.credit > asked[n.name]
        ]
        if not thieves:
            return
        idle = {t.name for t in thieves}
        victims = [
            victim_view(n, self.config.default_runtime_s)
            for n in self.nodes.values()
            if n.state is NodeState.ALIVE and n.name not in idle
        ]
        moves = plan_steals([v for v in victims if v.backlog], thieves, self.config.steal_penalty_s)
        batches: dict[str, list[p.TaskAssignment]] = defaultdict(list)
        asks: dict[tuple[str, str], list[TaskRecord]] = defaultdict(list)
        for move in moves:
            record = self.tasks[move.key]
            if move.where == "queued":
                assert record.queue is not None
                if record.payload is None:  # its client holds it: not worth a round trip to steal
                    continue
                record.queue.discard(record)  # saves the record
                record.stolen = True
                self.nodes[move.thief].start(record)
                batches[move.thief].append(p.TaskAssignment(record.key[0], record.key[1], record.rank, record.payload))
                self.tasks_stolen += 1
                self._count("tasks_stolen", move.victim)
            else:
                asks[move.victim, move.thief].append(record)
        for thief, batch in batches.items():
            node = self.nodes[thief]
            for run in p.runs(batch, p.MAX_BATCH, p.COALESCE_BYTES):
                self._assign(node, run)  # as _pump cuts them: each within what the agent takes
            self._pump(node)
        for (victim, thief), records in asks.items():
            self._ask_back(self.nodes[victim], thief, records)
        if moves:
            direct = sum(len(batch) for batch in batches.values())
            self._log("tasks_stolen", moved=direct, asked=len(moves) - direct)

    def _ask_back(self, victim: NodeActor, thief: str, records: list[TaskRecord]) -> None:
        """Phase one of a two-phase steal: ask ``victim``'s agent for ``records`` back, for
        ``thief`` ("": for the pool, a hold's)."""
        journal = self.journal
        self._steal_ids += 1
        request_id = self._steal_ids
        for record in records:
            journal.save(record)
            record.steal_id = request_id
        journal.keep(self._steals, request_id)
        self._steals[request_id] = (victim.name, thief, [r.key for r in records])
        self._to_agent(victim, p.StealRequest(request_id, tuple(p.TaskRef(*r.key) for r in records)))

    def _handle_steal_reply(self, node: NodeActor, message: p.StealReply) -> None:
        """Phase two: only confirmed tasks still in flight on this very agent move (to the pool)."""
        journal = self.journal
        journal.keep(self._steals, message.request_id)
        asked = self._steals.pop(message.request_id, None)
        held = asked is not None and asked[1] == ""  # asked back by a hold (_hold), not by a thief
        if asked is not None:
            for key in asked[2]:
                record = self.tasks.get(key)
                if record is not None and record.steal_id == message.request_id:
                    journal.save(record)
                    record.steal_id = 0
        moved = []
        for ref in message.confirmed:
            record = self.tasks.get((ref.client_id, ref.task_id))
            if record is None or record.holder != node.name:
                continue  # resolved meanwhile, or already moved: a stale confirmation
            journal.keep(node.in_flight, record.key)
            del node.in_flight[record.key]
            journal.save(record)
            record.release()
            if not held:
                record.stolen = True
            moved.append(record)
        if held:  # where it waits now: the pool while the hold lasts, its node's queue if released since
            self._requeue(moved)
            touched = {r.node_name for r in moved if r.queue is not self.pool and r.node_name is not None}
            for name in touched:
                self._pump(self.nodes[name])
        else:
            for record in moved:
                self.pool.push(record)
            self.tasks_stolen += len(moved)
            if moved:
                self._count("tasks_stolen", node.name, n=len(moved))
        self._pump_pool()

    def _handle_keys_changed(self, event: KeysChanged) -> None:
        """Rule 9 on a reload. Order matters, so that nothing goes to a peer that is out: every
        revoked agent is cut off (no credit, no routing) before any of their work moves, and
        every revoked client is forgotten before the nodes die (their notices and results go
        to the clients that are left). A name once bound to a key of its own stays bound: a
        node whose own key is revoked cannot come back under the shared key."""
        agents, clients = event.agents, event.clients
        bound = self._bound_names | frozenset(name for name in agents.values() if name)
        journal = self.journal
        unfit: list[tuple[NodeActor, str]] = []
        for name, key in self._node_keys.items():
            node = self.nodes.get(name)
            if (
                node is not None
                and node.state in CONNECTED
                and (why := _key_refusal(agents, bound, name, key)) is not None
            ):
                unfit.append((node, why))
        for node, _ in unfit:
            journal.save(node)
            node.credit = 0
            self._unhungry(node)
            self._drop_agent(node.peer)
        cut = {node.name for node, _ in unfit}
        for client_id in [c for c, key in self._client_keys.items() if key not in clients and c in self._clients]:
            self._revoke_client(client_id, cut)
        for node, why in unfit:
            self._declare_dead(node, f"its agent's key no longer fits: {why}", "key_revoked")
            node.peer = None
        self._log("keys_changed", agent_keys=len(agents), bound_nodes=len(bound), client_keys=len(clients))
        self._agent_keys, self._bound_names, self._client_key_set = agents, bound, clients

    def _revoke_client(self, client_id: str, cut: set[str]) -> None:
        """The client's key was revoked: forget its connection and its tasks (the agents holding
        them are told to drop those not yet started, except the nodes in ``cut``, being cut off
        too); it is told nothing, and its id stays bound to the revoked key."""
        journal = self.journal
        peer = self._clients[client_id]
        journal.keep(self._clients, client_id)
        del self._clients[client_id]
        if peer in self._client_ids:
            journal.keep(self._client_ids, peer)
            del self._client_ids[peer]
        records = [record for key, record in self.tasks.items() if key[0] == client_id]
        to_agents: dict[str, list[p.TaskRef]] = defaultdict(list)
        for record in records:
            if record.holder is not None:
                to_agents[record.holder].append(p.TaskRef(*record.key))
            self._forget(record)
        for name, refs in to_agents.items():
            node = self.nodes[name]
            if node.state in CONNECTED and name not in cut:
                self._to_agent(node, p.CancelTasks(tuple(refs)))
        if records:  # they end here, resolved to no one: counted, so submitted - resolved stays what is left
            self._count("tasks_resolved", NO_NODE, "revoked", n=len(records))
        self._log("client_revoked", "warning", client_id=client_id, tasks_dropped=len(records))

    # ------------------------------------------------------------------ the cluster's word (rule 10)

    def _handle_nodes_listed(self, event: NodesListed) -> None:
        """A full list: what is not in it was deleted (e.g. in the gap a 410 Gone left)."""
        listed = {facts.name: facts for facts in event.nodes}
        gone = [name for name in (self._api or ()) if name not in listed]
        first = self._api is None
        self._api = listed  # replaced whole: the step's rollback restores the old one
        for name in gone:
            self._mark_deleted(name)
        for name in [n for n in self._deleted if n in listed]:
            self.journal.keep(self._deleted, name)
            del self._deleted[name]
        for node in list(self.nodes.values()):
            self._apply_cluster(node)
        self._log("nodes_listed", nodes=len(listed), deleted_meanwhile=len(gone), first=first)

    def _handle_node_observed(self, event: NodeObserved) -> None:
        if self._api is None:  # before the first list: that list will say it
            return
        facts = event.node
        self.journal.keep(self._api, facts.name)
        self._api[facts.name] = facts
        if facts.name in self._deleted:
            self.journal.keep(self._deleted, facts.name)
            del self._deleted[facts.name]
        node = self.nodes.get(facts.name)
        if node is not None:
            self._apply_cluster(node)

    def _handle_node_deleted(self, event: NodeDeleted) -> None:
        if self._api is None:
            return
        if event.name in self._api:
            self.journal.keep(self._api, event.name)
            del self._api[event.name]
        self._mark_deleted(event.name)
        node = self.nodes.get(event.name)
        if node is not None:
            self._apply_cluster(node)

    def _mark_deleted(self, name: str) -> None:
        if name in self._deleted:
            return
        journal = self.journal
        if len(self._deleted) >= self.config.max_nodes:  # bounded: the oldest deletion is forgotten
            oldest = next(iter(self._deleted))
            journal.keep(self._deleted, oldest)
            del self._deleted[oldest]
        journal.keep(self._deleted, name)
        self._deleted[name] = None

    def _apply_cluster(self, node: NodeActor) -> None:
        """Bring ``node`` in line with what the API says of its Node (rule 10)."""
        if self._api is None:
            return
        facts = self._api.get(node.name)
        if facts is None:
            if node.name in self._deleted:
                self._delete(node)
            elif node.state is NodeState.ALIVE:
                self._hold(node, "not-in-api")
            return
        self._learn_speed(node)
        if node.state is NodeState.GONE and node.reason == "deleted":
            self.journal.save(node)
            node.reason = ""  # listed again: its agent may register
        elif node.state is NodeState.ALIVE and facts.cordoned:
            self._hold(node, "cordoned")
        elif node.state is NodeState.DRAINING and node.reason in HELD:
            if facts.cordoned and node.reason != "cordoned":
                self.journal.save(node)
                node.reason = "cordoned"
                self._broadcast(node)
            elif not facts.cordoned:
                self._release(node)

    def _learn_speed(self, node: NodeActor) -> None:
        """Where its agent gives no speed, the Node's ``saga-dispatch.io/speed`` label is it."""
        facts = self._facts(node.name)
        speed = node.own_speed or (facts.speed if facts is not None and facts.speed else 1.0)
        if speed != node.speed:
            self.journal.save(node)
            node.speed = speed
            if node.state in CONNECTED:
                self._broadcast(node)

    def _hold(self, node: NodeActor, reason: str) -> None:
        """The cluster holds a live node: no new work; queued tasks go to the pool, prefetched
        ones are asked back (two phases: only those the agent confirms it had not started
        leave it), running ones finish. Its agent's credit keeps counting."""
        journal = self.journal
        journal.save(node)
        node.state = NodeState.DRAINING
        node.reason = reason
        self._unhungry(node)
        queued = node.queue.take_all()
        self._requeue(queued)
        asked = [record for record in node.in_flight.values() if not record.steal_id]
        if asked:
            self._ask_back(node, "", asked)
        self._broadcast(node)
        self._count("node_drains", node.name, reason)
        self._log("node_held", "warning", node=node.name, reason=reason, requeued=len(queued), asked_back=len(asked))
        self._pump_pool()

    def _release(self, node: NodeActor) -> None:
        """The cluster lets a held node work again: its pinned tasks come back from the pool."""
        journal = self.journal
        journal.save(node)
        held_for = node.reason
        node.state = NodeState.ALIVE
        node.reason = ""
        self._reclaim(node)
        self._broadcast(node)
        self._log("node_released", node=node.name, was=held_for, queued=len(node.queue))
        self._pump(node)

    def _delete(self, node: NodeActor) -> None:
        """Its Node was deleted: GONE now, its work moves on, its agent is cut off."""
        if node.state is NodeState.GONE and node.reason == "deleted":
            return
        if node.state in CONNECTED:
            journal = self.journal
            journal.save(node)
            node.credit = 0
            self._unhungry(node)
            self._drop_agent(node.peer)
            self._declare_dead(node, "its Kubernetes Node was deleted", "k8s_deleted", NodeState.GONE)
            node.peer = None
        else:
            self.journal.save(node)
            node.state = NodeState.GONE
            self._requeue(node.queue.take_all())
            self._broadcast(node)
            self._pump_pool()
        node.reason = "deleted"

    def _sweep_deleted(self) -> None:
        """Drop the entries of deleted Nodes that no unresolved task names any more."""
        self._swept = self._now
        names = {name for name in self._deleted if name in self.nodes}
        if not names:
            return
        for record in self.tasks.values():
            names.discard(record.node_name or "")
            if not names:
                return
        for name in names:
            node = self.nodes[name]
            if node.in_flight or node.state is not NodeState.GONE:
                continue
            journal = self.journal
            journal.keep(self.nodes, name)
            del self.nodes[name]
            if name in self._node_keys:
                journal.keep(self._node_keys, name)
                del self._node_keys[name]
            for peer in [peer for peer, n in self._agents.items() if n is node]:
                journal.keep(self._agents, peer)
                del self._agents[peer]
            self._log("node_forgotten", node=name, reason="its Node was deleted and no task names it")

    def _handle_frame_rejected(self, event: FrameRejected) -> None:
        if event.version is not None and event.peer:  # readable, but a version we do not speak: say so
            reason = f"{event.reason} (dispatcher {self.config.dispatcher_id})"
            if event.side == "agent":
                self._out.append(SendToAgent(event.peer, p.Refused(reason[: p.MAX_TEXT])))
            else:
                self._out.append(SendToClient(event.peer, p.Error(p.ErrorCode.VERSION_MISMATCH, reason[: p.MAX_TEXT])))
        self.bad_frames += 1
        self._count("frames_rejected", event.side, event.kind)
        if log_due(self.bad_frames, every=self.config.bad_frame_log_every):
            self._log("bad_frame", "warning", side=event.side, reason=event.reason, total=self.bad_frames)

    # ------------------------------------------------------------------ checking

    def validate_state(self) -> None:
        """Assert the rules at the top of this module (see ``invariants.py``). For tests; O(tasks)."""
        from dispatcher.server.invariants import check

        check(self)


def _arrival(record: TaskRecord) -> tuple[float, int]:
    """A queued task's place in its queue: rank, then its ticket."""
    return record.rank, record.seq


def _version_refusal(client_versions: str, node: NodeActor) -> str | None:
    """Rule 11: why a task of a client with ``client_versions`` cannot run on ``node``, or None."""
    differ = mismatch(client_versions, node.versions) if client_versions and node.versions else None
    return f"node {node.name} cannot run this client's tasks: {differ}" if differ else None


def _may_resolve(record: TaskRecord, node: str) -> bool:
    """Whether a result from ``node`` (not the record's holder) may resolve ``record`` (rule 4):
    it ran there before (a late result of a dead or resynced copy), or it is queued and
    ``node`` could have been given it (pinned there, or to no node: e.g. a task it was running
    when the dispatcher restarted). Never a task pinned to another node and never given to this
    one, and never from a peer that is not a registered node (``node`` ""): an agent cannot
    resolve, with a payload of its choosing, work that is not its own."""
    if not node:
        return False
    if node in record.earlier:
        return True
    return record.holder is None and record.node_name in (None, node)


def _key_refusal(agents: Mapping[str, str] | None, bound: frozenset[str], name: str, key: str) -> str | None:
    """Why the agent key ``key`` may not register node ``name`` (rule 9), or None. ``agents`` is
    the allow-list (key -> bound node name, "" for the shared key); None: no keys in use."""
    if agents is None:
        return None
    owner = agents.get(key)
    if owner is None:
        return "this agent's key is not on the dispatcher's allow-list"
    if owner and owner != name:
        return f"this agent's key belongs to node {owner}, not {name}"
    if not owner and name in bound:
        return f"node {name} has a key of its own; the shared agent key cannot register it"
    return None
