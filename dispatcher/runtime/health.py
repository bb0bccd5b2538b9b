"""The HTTP endpoints a kubelet probes: ``/healthz`` (alive) and ``/readyz`` (ready).

A small threaded ``http.server`` on its own daemon thread (``--http-port``; 0: off). Each path
answers from a check, a function returning ``(ok, detail)``: 200 with the detail when it holds,
503 when not. The checks only read what the owning loop publishes (a timestamp it bumps every
turn, a flag it sets once bound or registered), so the probes never touch the loop's state.
Further paths (the observability issue's ``/metrics``) are added as routes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from dispatcher.runtime.logs import get_logger

log = get_logger("health")

Check = Callable[[], tuple[bool, str]]

STALE_S: Final = 10.0
"""A loop that has not turned for this long is not alive (its turns are at most a tick apart)."""


class Heartbeat:
    """What a loop publishes for ``/healthz``: the monotonic time of its last turn (None: it has
    not started turning, e.g. an agent waiting for its workers' imports: alive, starting)."""

    __slots__ = ("_at", "stale_s")

    def __init__(self, stale_s: float = STALE_S) -> None:
        self.stale_s = stale_s
        self._at: float | None = None

    def beat(self) -> None:
        self._at = time.monotonic()  # one attribute store: safe to read from another thread

    def check(self) -> tuple[bool, str]:
        if self._at is None:
            return True, "starting"
        silent_s = time.monotonic() - self._at
        if silent_s > self.stale_s:
            return False, f"the loop has not turned for {silent_s:.1f} s"
        return True, "ok"


class HealthServer:
    def __init__(self, host: str, port: int, routes: Mapping[str, Check]) -> None:
        self._routes = dict(routes)
        self._server = ThreadingHTTPServer((host, port), _handler(self._routes))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-probes", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("http_listening", port=self.port, paths=sorted(self._routes))
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(routes: Mapping[str, Check]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            check = routes.get(self.path.split("?", 1)[0])
            if check is None:
                self._answer(HTTPStatus.NOT_FOUND, f"not found; paths: {', '.join(sorted(routes))}")
                return
            try:
                ok, detail = check()
            except Exception as exc:  # a failing check is a failed probe, never a dead server
                ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
            self._answer(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)

        def _answer(self, status: HTTPStatus, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # probes every few seconds: not worth a line each
            return

    return Handler
