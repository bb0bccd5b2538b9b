"""The Node watch with the official ``kubernetes`` client against the fake API server
(``chaos/kubeapi.py``: the real REST paths, chunked watch streams, 410 Gone as a full Status).

Each test steps the fake: it changes the cluster, waits for the reading the watch posts, and
only then goes on, so the order of what happened is asserted, not hoped for. The readings are
turned into core events as the dispatcher's loop does (``reading(now, stimulus_id)``).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.kubeapi import FakeKubeAPI, node_object
from dispatcher.server.events import ClusterEvent, ClusterNode, NodeDeleted, NodeObserved, NodesListed
from dispatcher.server.nodewatch import NodeWatch, Reading, WatchConfig, load_configuration, reading

pytestmark = [pytest.mark.integration]

FAST = WatchConfig(timeout_s=30.0, read_timeout_s=2.0, connect_timeout_s=1.0, backoff_min_s=0.05, backoff_max_s=0.2)


class Watched:
    """A NodeWatch posting into a queue, read one event at a time."""

    def __init__(self, api: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: WatchConfig) -> None:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        self.readings: queue.SimpleQueue[Reading] = queue.SimpleQueue()
        self.watch = NodeWatch(load_configuration(), self.readings.put, config)
        self.watch.start()

    def next(self, timeout_s: float = 30.0) -> ClusterEvent:
        return self.readings.get(timeout=timeout_s)(0.0, "t")

    def none_pending(self) -> bool:
        return self.readings.empty()


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        api.put(node_object("node-a"))
        api.put(node_object("node-b", labels={"saga-dispatch.io/speed": "2.5", "topology.kubernetes.io/zone": "z1"}))
        yield api


@pytest.fixture
def watched(api: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watched]:
    w = Watched(api, tmp_path, monkeypatch, FAST)
    try:
        yield w
    finally:
        w.watch.stop()


def until(what: Callable[[], bool], why: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def names(event: ClusterEvent) -> list[str]:
    assert isinstance(event, NodesListed), event
    return sorted(n.name for n in event.nodes)


def test_list_then_watch_reports_every_row_of_the_table(api: FakeKubeAPI, watched: Watched) -> None:
    listed = watched.next()
    assert names(listed) == ["node-a", "node-b"]
    assert isinstance(listed, NodesListed)
    assert ClusterNode("node-b", speed=2.5, zone="z1") in listed.nodes
    api.wait_watching()
    [(_, watch_query)] = [r for r in api.requests if r[1].get("watch") == "true"]
    assert watch_query["resourceVersion"] == str(api.resource_version)  # from the list's version
    assert watch_query["allowWatchBookmarks"] == "true"
    assert "timeoutSeconds" in watch_query

    api.put(node_object("node-a", cordoned=True))
    assert watched.next() == NodeObserved(ClusterNode("node-a", cordoned=True), 0.0, "t")
    api.put(node_object("node-a"))
    assert watched.next() == NodeObserved(ClusterNode("node-a"), 0.0, "t")
    api.put(node_object("node-b", ready="Unknown"))
    assert watched.next() == NodeObserved(ClusterNode("node-b", ready=False), 0.0, "t")
    taint = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    api.put(node_object("node-b", taints=taint))
    assert watched.next() == NodeObserved(ClusterNode("node-b", ready=False), 0.0, "t")
    api.put(node_object("node-c"))
    assert watched.next() == NodeObserved(ClusterNode("node-c"), 0.0, "t")
    api.delete("node-c")
    assert watched.next() == NodeDeleted("node-c", 0.0, "t")


def test_a_bookmark_carries_the_version_the_next_watch_starts_from(api: FakeKubeAPI, watched: Watched) -> None:
    watched.next()
    api.wait_watching()
    api.put(node_object("node-x"))  # a change the watch sees...
    watched.next()
    api.compact()
    for _ in range(3):  # ...then versions move on with changes elsewhere (other kinds of object)
        api._rv += 1
    api.bookmark()
    bookmarked = str(api.resource_version)
    until(lambda: watched.watch.resource_version == bookmarked, "the bookmark was not read")
    seen = len(api.requests)
    api.end_watches()  # the server's timeoutSeconds: the client watches again, from the bookmark
    api.wait_requests(seen + 1)
    api.wait_watching()
    assert api.requests[-1][1]["resourceVersion"] == bookmarked  # not node-x's older version
    assert api.requests[-1][1]["watch"] == "true"  # a watch, no re-list
    assert watched.none_pending()
    assert watched.watch.restarts == 0


def test_410_gone_re_lists_and_a_node_deleted_in_the_gap_is_missing_from_the_list(
    api: FakeKubeAPI, watched: Watched
) -> None:
    assert names(watched.next()) == ["node-a", "node-b"]
    api.wait_watching()
    seen = len(api.requests)
    api.hold()
    api.end_watches()
    api.wait_requests(seen + 1)  # the client asked to watch again, from the version it knew
    api.delete("node-b")  # in the gap: the held watch will never carry it...
    api.compact()  # ...since etcd compacted the history it would have come from
    api.release()
    relisted = watched.next()
    assert names(relisted) == ["node-a"]  # the core diffs: node-b, known before, was deleted
    assert watched.watch.restarts == 1
    api.wait_watching()
    api.put(node_object("node-a", cordoned=True))  # and the watch resumes from the new list
    assert watched.next() == NodeObserved(ClusterNode("node-a", cordoned=True), 0.0, "t")


def test_5xx_are_backed_off_and_the_watch_catches_up(api: FakeKubeAPI, watched: Watched) -> None:
    watched.next()
    api.wait_watching()
    api.fail_next(3, status=503)  # the re-watch and two re-lists fail
    api.end_watches()
    api.put(node_object("node-a", cordoned=True))  # changed while the API errs
    relisted = watched.next()
    assert isinstance(relisted, NodesListed)
    assert ClusterNode("node-a", cordoned=True) in relisted.nodes
    assert watched.watch.restarts == 3
    statuses = [q for _, q in api.requests]
    assert len(statuses) >= 6  # list, watch, failed watch, 2 failed lists, list (then a watch)


def test_an_api_server_that_is_away_is_waited_for_and_what_changed_meanwhile_is_listed(
    api: FakeKubeAPI, watched: Watched
) -> None:
    watched.next()
    api.wait_watching()
    api.down()  # connections refused, the open stream cut
    api.delete("node-a")
    api.put(node_object("node-b", cordoned=True))
    until(lambda: watched.watch.restarts >= 3, "the watch did not retry against the refusing server")
    api.up()
    relisted = watched.next()
    assert isinstance(relisted, NodesListed)
    assert relisted.nodes == (ClusterNode("node-b", cordoned=True, speed=None, zone=""),)
    assert watched.watch.restarts >= 1


def test_a_hung_watch_is_noticed_by_the_read_timeout(api: FakeKubeAPI, watched: Watched) -> None:
    watched.next()
    api.wait_watching()
    api.hang_next()
    api.end_watches()  # the next watch request gets headers and then silence
    relisted = watched.next(timeout_s=30.0)  # read_timeout_s (2 s) later: a re-list
    assert isinstance(relisted, NodesListed)
    assert watched.watch.restarts == 1


def test_a_stream_dropped_mid_way_re_lists(api: FakeKubeAPI, watched: Watched) -> None:
    watched.next()
    api.wait_watching()
    api.drop_watches()
    assert isinstance(watched.next(), NodesListed)
    api.wait_watching()
    api.delete("node-a")
    assert watched.next() == NodeDeleted("node-a", 0.0, "t")


def test_a_watch_that_keeps_failing_backs_off_further_though_each_list_succeeds(
    api: FakeKubeAPI, watched: Watched
) -> None:
    watched.next()
    api.wait_watching()
    api.fail_watches(6, status=503)  # e.g. a proxy that breaks streaming: lists work, watches not
    api.end_watches()
    until(lambda: api.request_count(watch=True) >= 7, "the watch was not retried")
    assert watched.watch._failures >= 5  # not reset by the lists in between: the backoff grew
    api.wait_watching()  # then it works again, and a change arrives
    api.put(node_object("node-a", cordoned=True))
    event = watched.next()
    while isinstance(event, NodesListed):
        event = watched.next()
    assert event == NodeObserved(ClusterNode("node-a", cordoned=True), 0.0, "t")


def test_no_configuration_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Exception, match="no Kubernetes configuration"):
        load_configuration()


def test_reading_a_node_object() -> None:
    assert reading(node_object("n", cordoned=True, ready="False")) == ClusterNode("n", cordoned=True, ready=False)
    assert reading(node_object("n", labels={"saga-dispatch.io/speed": "fast"})).speed is None
    assert reading({"metadata": {"name": "bare"}}) == ClusterNode("bare")
