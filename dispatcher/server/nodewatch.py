"""The Node watch: what the Kubernetes API says of the cluster's Nodes, as core events.

A thread of the dispatcher's shell (``saga-dispatch dispatcher --watch-nodes``) with the official
``kubernetes`` client, done as kopf's watcher does it: list, then watch from the list's
resourceVersion; bookmarks allowed (they carry the version forward on a quiet cluster); a
server-side ``timeoutSeconds`` and a client-side read timeout (``_request_timeout``), so a
half-open connection is noticed; on ``410 Gone`` a re-list at once, which reports every Node (a
Node deleted in the gap is one the core knew and the list lacks); on any other error (5xx, the
API away, a connection dropped) a backoff with full jitter, then a re-list. Nothing here is fatal
but a configuration that cannot be loaded at the start: the API being away never stops
dispatching, since heartbeats remain the ground truth for liveness.

The thread never touches the core. It posts each reading (``post``) as a function of the loop's
clock and stimulus id, and the loop makes it an event (``NodesListed``, ``NodeObserved``,
``NodeDeleted``) and hands it to the core: one owner for the state.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.logs import get_logger
from dispatcher.server.events import ClusterEvent, ClusterNode, NodeDeleted, NodeObserved, NodesListed

if TYPE_CHECKING:
    from kubernetes.client import Configuration

log = get_logger("nodewatch")

SPEED_LABEL: Final = "saga-dispatch.io/speed"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
UNSCHEDULABLE_TAINT: Final = "node.kubernetes.io/unschedulable"
NOT_READY_TAINTS: Final = frozenset({"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"})

Reading = Callable[[float, str], ClusterEvent]
"""What the watch posts: the event, once given the loop's clock and a stimulus id."""


@dataclass(frozen=True, slots=True)
class WatchConfig:
    timeout_s: float = 300.0
    """``timeoutSeconds`` of each watch request: the server ends the stream, we watch again."""
    read_timeout_s: float = 330.0
    """Client-side: no byte for this long (not even a bookmark) and the connection is taken for
    dead. Above ``timeout_s``, so a healthy quiet stream ends on the server's side first."""
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0


class ConfigUnavailable(DispatchError):
    """Neither the in-cluster service account nor a kubeconfig could be loaded."""


def load_configuration() -> Configuration:
    """The standard loaders: in-cluster (a pod's service account), else ``KUBECONFIG`` /
    ``~/.kube/config``. Raises :class:`ConfigUnavailable` with both reasons."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as in_cluster:
        try:
            # KUBECONFIG as it is now (the client's own default is read once, when it is imported).
            path = os.environ.get("KUBECONFIG") or "~/.kube/config"
            config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as kubeconfig:
            raise ConfigUnavailable(
                f"--watch-nodes: no Kubernetes configuration (in-cluster: {in_cluster}; kubeconfig: {kubeconfig})"
            ) from kubeconfig
    return configuration


def reading(obj: Mapping[str, Any]) -> ClusterNode:
    """A Node object (the API's JSON) as the facts the core uses."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = meta.get("labels") or {}
    taints = {t.get("key") for t in spec.get("taints") or () if isinstance(t, Mapping)}
    ready_condition = next(
        (c for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == "Ready"), None
    )
    ready = (ready_condition is None or ready_condition.get("status") == "True") and not taints & NOT_READY_TAINTS
    return ClusterNode(
        name=str(meta["name"]),
        cordoned=bool(spec.get("unschedulable")) or UNSCHEDULABLE_TAINT in taints,
        ready=ready,
        speed=_speed(labels.get(SPEED_LABEL)),
        zone=str(labels.get(ZONE_LABEL) or ""),
    )


def _speed(label: object) -> float | None:
    try:
        speed = float(str(label))
    except ValueError:
        return None
    return speed if math.isfinite(speed) and speed > 0 else None


class NodeWatch:
    """The watch thread. :meth:`start` it after the sockets are bound; :meth:`stop` to end it."""

    def __init__(
        self,
        configuration: Configuration,
        post: Callable[[Reading], None],
        config: WatchConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        from kubernetes import client

        self.config = config or WatchConfig()
        self._api = client.CoreV1Api(client.ApiClient(configuration))
        self._post = post
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name="node-watch", daemon=True)
        self.restarts = 0
        """Times the watch started over (after 410 Gone, an error, or a dropped stream)."""
        self.expiries = 0
        """Of those, after 410 Gone. Each of these two counters only grows, and is read once a
        scrape (from the loop thread), so a scrape never sees one go down."""
        self.errors = 0
        """Of those, after any other failure."""
        self.contact_at: float | None = None
        """``time.monotonic()`` when the API last answered: a list, an event, a bookmark, a watch
        the server ended. One attribute store, read by the metrics (the lag)."""
        self.synced = False
        """A first list has been posted."""
        self.resource_version = ""
        self._failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()  # shuts the stream's socket down, so a blocked read returns
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        self._failures = 0
        """Failures since the watch last worked (delivered an event, or ran to the server's
        timeout): a list that succeeds does not count, or a watch that always fails would
        re-list at the shortest backoff for ever."""
        while not self._stop.is_set():
            try:
                self._list()
                while not self._stop.is_set():
                    self._watch_once()
                    self._failures = 0  # ended by the server's timeoutSeconds: healthy
                    self.contact_at = time.monotonic()
            except ApiException as exc:
                if self._stop.is_set():
                    return
                self.restarts += 1
                self._failures += 1
                if exc.status == 410:
                    self.expiries += 1
                else:
                    self.errors += 1
                if exc.status == 410 and self._failures == 1:  # the version expired: list again at once
                    log.info("node_watch_expired", resource_version=self.resource_version, reason=exc.reason)
                    continue
                self._back_off(self._failures, f"HTTP {exc.status}: {exc.reason}")
            except Exception as exc:  # the API away, a dropped or hung connection, a bad object
                if self._stop.is_set():
                    return
                self.restarts += 1
                self.errors += 1
                self._failures += 1
                self._back_off(self._failures, f"{type(exc).__name__}: {exc}")

    def _back_off(self, failures: int, why: str) -> None:
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_min_s * 2 ** min(failures - 1, 16))
        delay = self._rng.uniform(cfg.backoff_min_s / 2, cap)  # full jitter, never zero
        log.warning("node_watch_failed", error=why[:300], retry_in_s=round(delay, 2), failures=failures)
        self._stop.wait(delay)

    def _timeouts(self) -> tuple[float, float]:
        return (self.config.connect_timeout_s, self.config.read_timeout_s)

    def _list(self) -> None:
        # Unparsed (the raw response): the facts come from the JSON, as the watch's do.
        listed: Any = self._api.list_node(_request_timeout=self._timeouts(), _preload_content=False)
        try:
            body = json.loads(listed.data)
        finally:
            listed.release_conn()
        nodes = tuple(reading(item) for item in body.get("items") or ())
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self._post(functools.partial(NodesListed, nodes))
        self.contact_at = time.monotonic()
        if not self.synced:
            log.info("node_watch_synced", nodes=len(nodes), resource_version=self.resource_version)
        self.synced = True

    def _watch_once(self) -> None:
        """One watch request, until the server ends it (``timeoutSeconds``) or it fails."""
        from kubernetes import watch

        self._watch = stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self._api.list_node,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, round(self.config.timeout_s)),
                _request_timeout=self._timeouts(),
            ):
                if self._stop.is_set():
                    return
                self._handle(event["type"], event["raw_object"])
                self._failures = 0  # it delivers: healthy
        finally:
            self._watch = None

    def _handle(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.contact_at = time.monotonic()
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            self.resource_version = version or self.resource_version
            return
        facts = reading(obj)
        if kind == "DELETED":
            self._post(functools.partial(NodeDeleted, facts.name))
        elif kind in ("ADDED", "MODIFIED"):
            self._post(functools.partial(NodeObserved, facts))
        self.resource_version = version or self.resource_version
