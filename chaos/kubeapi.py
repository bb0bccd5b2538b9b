"""A fake Kubernetes API server for Nodes: the real REST paths, spoken to the real client.

No API server runs on these machines, so the Node watch is tested against this one. It serves
what ``kubernetes.client.CoreV1Api.list_node`` and ``kubernetes.watch.Watch`` ask for, as an API
server does:

* ``GET /api/v1/nodes``: a ``NodeList`` whose ``metadata.resourceVersion`` is the current one;
* ``GET /api/v1/nodes?watch=true&resourceVersion=RV``: a chunked stream of JSON lines, one watch
  event each (``ADDED``, ``MODIFIED``, ``DELETED`` with the object; ``BOOKMARK`` with only a
  ``resourceVersion`` where ``allowWatchBookmarks``), first every event after ``RV``, then the
  new ones as they happen, until ``timeoutSeconds``. A ``RV`` older than the retained history
  (:meth:`compact`) gets an ``ERROR`` event carrying a full ``Status`` with ``code: 410`` and
  ``reason: Expired``, as etcd's compaction gives;
* resource versions rise by one per change, as strings.

Faults, each as a real server shows them: :meth:`fail_next` (5xx with a ``Status``),
:meth:`hang_next` (headers sent, then nothing: a half-open connection), :meth:`drop_watches`
(every open stream cut mid-way), :meth:`down` / :meth:`up` (connection refused). Requests are
recorded, and :meth:`wait_watching` waits for a watch to be open, so a test steps through what
happens in order instead of sleeping. Optionally TLS (``tls_dir``) with a bearer token, for a
client configured in-cluster (the container end-to-end test).
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlparse

NODES_PATH = "/api/v1/nodes"


def node_object(
    name: str,
    *,
    cordoned: bool = False,
    ready: str = "True",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A v1 Node as the API returns it (the fields the watch reads, and a few it does not)."""
    spec: dict[str, Any] = {"podCIDR": "10.244.0.0/24"}
    if cordoned:
        spec["unschedulable"] = True
        taints = [*(taints or []), {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    if taints:
        spec["taints"] = taints
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
        },
        "spec": spec,
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready, "reason": "KubeletReady" if ready == "True" else "NodeNotReady"},
            ],
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        },
    }


class FakeKubeAPI:
    """Nodes, their history, and the faults; thread-safe (the server answers on its threads)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        token: str = "",
        tls_names: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        """``tls_dir``: serve HTTPS with a CA and a certificate made there for ``tls_names``
        (addresses or DNS names the clients use); ``token``: require it as a bearer token."""
        self._lock = threading.Condition()
        self._nodes: dict[str, dict[str, Any]] = {}
        self._rv = 100
        self._history: list[tuple[int, str, dict[str, Any]]] = []
        self._oldest = 0
        """Watches from a resourceVersion below this get 410 Gone."""
        self._fail: list[int] = []
        self._fail_watches = 0
        self._fail_status = 500
        self._hang = 0
        self._held = False
        self._watchers: list[_Watcher] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.token = token
        self._host, self._port = host, port
        self._tls = _tls_context(tls_dir, tls_names) if tls_dir is not None else None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_file = tls_dir / "ca.crt" if tls_dir is not None else None
        self.up()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    def up(self) -> None:
        """Serve (again, on the same port after :meth:`down`)."""
        server = ThreadingHTTPServer((self._host, self._port), _handler(self))
        server.daemon_threads = True
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-kube-api", daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open stream: the API server is away."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.drop_watches()

    def close(self) -> None:
        self.down()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file for this server (what ``KUBECONFIG`` points at)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": self.token or "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # ------------------------------------------------------------------ the cluster

    @property
    def resource_version(self) -> int:
        return self._rv

    def put(self, node: dict[str, Any]) -> int:
        """Add or replace a Node (ADDED or MODIFIED); returns its new resourceVersion."""
        with self._lock:
            name = node["metadata"]["name"]
            kind = "MODIFIED" if name in self._nodes else "ADDED"
            return self._change(kind, copy.deepcopy(node))

    def delete(self, name: str) -> int:
        with self._lock:
            node = self._nodes[name]
            return self._change("DELETED", node)

    def _change(self, kind: str, node: dict[str, Any]) -> int:
        self._rv += 1
        node["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            del self._nodes[node["metadata"]["name"]]
        else:
            self._nodes[node["metadata"]["name"]] = node
        self._history.append((self._rv, kind, copy.deepcopy(node)))
        for watcher in self._watchers:
            if not watcher.hung and not watcher.cut:
                watcher.pending.append({"type": kind, "object": copy.deepcopy(node)})
        self._lock.notify_all()
        return self._rv

    def compact(self) -> None:
        """Forget the history so far (etcd compaction): a watch from an older version gets 410."""
        with self._lock:
            self._oldest = self._rv + 1
            self._history.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to every watch that allows them."""
        with self._lock:
            for watcher in self._watchers:
                if watcher.bookmarks:
                    watcher.pending.append({"type": "BOOKMARK", "object": _bookmark(self._rv)})
            self._lock.notify_all()

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next ``n`` requests with ``status`` and a Status body."""
        with self._lock:
            self._fail.extend([status] * n)

    def fail_watches(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` *watch* requests with ``status`` (lists still succeed: e.g. a
        proxy that breaks streaming)."""
        with self._lock:
            self._fail_watches = n
            self._fail_status = status

    def hang_next(self, n: int = 1) -> None:
        """Take the next ``n`` requests, send the headers of a 200, and never a byte more."""
        with self._lock:
            self._hang += n

    def end_watches(self) -> None:
        """End every open watch stream properly (what ``timeoutSeconds`` does): the client
        watches again from the last resourceVersion it saw."""
        with self._lock:
            for watcher in self._watchers:
                watcher.cut = watcher.ends = True
            self._lock.notify_all()

    def hold(self) -> None:
        """Make new requests wait (recorded, unanswered) until :meth:`release`: a test changes
        the cluster in the gap, knowing the client has not seen it."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held = False
            self._lock.notify_all()

    def wait_requests(self, n: int, timeout_s: float = 30.0) -> None:
        """Wait until ``n`` requests were made in all."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.requests)} requests of {n} within {timeout_s} s")
                self._lock.wait(left)

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-way (no final chunk)."""
        with self._lock:
            for watcher in self._watchers:
                watcher.cut = True
            self._lock.notify_all()

    def watching(self) -> int:
        with self._lock:
            return sum(1 for w in self._watchers if not w.cut and not w.hung)

    def wait_watching(self, n: int = 1, timeout_s: float = 30.0, after: int = 0) -> None:
        """Wait until ``n`` watches are open (and at least ``after`` requests were made)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self.watching() < n or len(self.requests) < after:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no open watch within {timeout_s} s; requests: {self.requests[-5:]}")
                self._lock.wait(left)

    def request_count(self, watch: bool | None = None) -> int:
        with self._lock:
            if watch is None:
                return len(self.requests)
            return sum(1 for _, q in self.requests if (q.get("watch") == "true") == watch)

    # ------------------------------------------------------------------ serving (server threads)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((url.path, query))
            self._lock.notify_all()
            while self._held:
                self._lock.wait()
            fail = self._fail.pop(0) if self._fail else None
            if fail is None and self._fail_watches and query.get("watch") in ("true", "1"):
                self._fail_watches -= 1
                fail = self._fail_status
            hang = self._hang > 0
            if hang:
                self._hang -= 1
        scheme, _, given = (handler.headers.get("Authorization") or "").partition(" ")
        if self.token and (scheme.lower() != "bearer" or given != self.token):  # the scheme is case-free
            _status(handler, HTTPStatus.UNAUTHORIZED, "Unauthorized", "no or wrong bearer token")
            return
        if url.path != NODES_PATH:
            _status(handler, HTTPStatus.NOT_FOUND, "NotFound", f"the fake serves {NODES_PATH} only")
            return
        if fail is not None:
            _status(handler, HTTPStatus(fail), "InternalError", "injected failure")
            return
        if hang:
            self._hang_forever(handler)
            return
        if query.get("watch") in ("true", "1"):
            self._watch(handler, query)
            return
        with self._lock:
            body = {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [copy.deepcopy(n) for n in self._nodes.values()],
            }
        _json(handler, HTTPStatus.OK, body)

    def _hang_forever(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        watcher = _Watcher(bookmarks=False, hung=True)
        with self._lock:
            self._watchers.append(watcher)
            while not watcher.cut:
                self._lock.wait()
            self._watchers.remove(watcher)
        handler.close_connection = True

    def _watch(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        timeout_s = float(query.get("timeoutSeconds") or 1800)
        watcher = _Watcher(bookmarks=query.get("allowWatchBookmarks") == "true")
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        with self._lock:
            if since and since < self._oldest - 1:
                watcher.pending.append({"type": "ERROR", "object": _gone(since, self._oldest)})
                watcher.cut = True  # the server ends the stream after the error
                watcher.ends = True
            else:
                watcher.pending.extend({"type": k, "object": o} for rv, k, o in self._history if rv > since)
            self._watchers.append(watcher)
            self._lock.notify_all()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                with self._lock:
                    while not watcher.pending and not watcher.cut and time.monotonic() < deadline:
                        self._lock.wait(max(0.0, deadline - time.monotonic()))
                    batch, watcher.pending = watcher.pending, []
                    cut = watcher.cut
                for event in batch:
                    _chunk(handler, (json.dumps(event) + "\n").encode())
                if cut and not watcher.ends:
                    handler.close_connection = True
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no final chunk
                    return
                if cut or time.monotonic() >= deadline:
                    _chunk(handler, b"")  # the stream's proper end
                    return
        except OSError:  # the client went away
            return
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
                self._lock.notify_all()

    def wake(self) -> None:
        with self._lock:
            self._lock.notify_all()


class _Watcher:
    __slots__ = ("bookmarks", "cut", "ends", "hung", "pending")

    def __init__(self, bookmarks: bool, hung: bool = False) -> None:
        self.bookmarks = bookmarks
        self.pending: list[dict[str, Any]] = []
        self.cut = False
        self.ends = False
        self.hung = hung


def _handler(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            api._serve(self)

        def log_message(self, *_: object) -> None:  # quiet
            return

    return Handler


def _chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _json(handler: BaseHTTPRequestHandler, status: HTTPStatus, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _status(handler: BaseHTTPRequestHandler, status: HTTPStatus, reason: str, message: str) -> None:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": int(status)}  # fmt: skip
    _json(handler, status, body)


def _gone(since: int, oldest: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


def _bookmark(rv: int) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}


def _tls_context(folder: Path, names: tuple[str, ...]) -> ssl.SSLContext:
    """A CA and a server certificate for ``names`` and ``kubernetes.default.svc`` (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, crt, key = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    if not crt.exists():
        run = ["openssl"]
        subprocess.run(
            [*run, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fake-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(folder / "ca.key"), "-out", str(ca)],
            check=True, capture_output=True,
        )  # fmt: skip
        ext = folder / "ext.cnf"
        sans = [f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names]
        ext.write_text(  # what Python 3.13's strict verification (VERIFY_X509_STRICT) asks of a server cert
            f"subjectAltName={','.join([*sans, 'DNS:kubernetes.default.svc'])}\n"
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        subprocess.run(
            [*run, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kubernetes", "-keyout", str(key),
             "-out", str(folder / "server.csr")],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*run, "x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(ca), "-CAkey",
             str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)],
            check=True, capture_output=True,
        )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    return context


@contextlib.contextmanager
def serving(*names: str, **options: Any) -> Iterator[FakeKubeAPI]:
    """A fake API server listing ``names`` (Ready, schedulable)."""
    api = FakeKubeAPI(**options)
    try:
        for name in names:
            api.put(node_object(name))
        yield api
    finally:
        api.close()
