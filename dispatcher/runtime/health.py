"""The HTTP endpoints a kubelet probes: ``/healthz`` (alive) and ``/readyz`` (ready).

A small threaded ``http.server`` on its own daemon thread (``--http-port``; 0: off). Each path
answers from a check, a function returning ``(ok, detail)``: 200 with the detail when it holds,
503 when not. The checks only read what the owning loop publishes (a timestamp it bumps every
turn, a flag it sets once bound or registered), so the probes never touch the loop's state.
A *page* is a path that answers with a body of its own (the dispatcher's ``/metrics``): a
function returning ``(body, content type)``, or None for 503.
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
Page = Callable[[], tuple[bytes, str] | None]

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
    def __init__(
        self, host: str, port: int, routes: Mapping[str, Check], pages: Mapping[str, Page] | None = None
    ) -> None:
        self._routes = dict(routes)
        self._pages = dict(pages or {})
        self._server = ThreadingHTTPServer((host, port), _handler(self._routes, self._pages))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-probes", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("http_listening", port=self.port, paths=sorted([*self._routes, *self._pages]))
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(routes: Mapping[str, Check], pages: Mapping[str, Page]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            page = pages.get(path)
            if page is not None:
                self._page(page)
                return
            check = routes.get(path)
            if check is None:
                self._answer(HTTPStatus.NOT_FOUND, f"not found; paths: {', '.join(sorted([*routes, *pages]))}")
                return
            try:
                ok, detail = check()
            except Exception as exc:  # a failing check is a failed probe, never a dead server
                ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
            self._answer(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)

        def _page(self, page: Page) -> None:
            try:
                answer = page()
            except Exception as exc:  # a failing page is a 500, never a dead server
                log.exception("http_page_failed", path=self.path)
                self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, f"failed: {type(exc).__name__}: {exc}")
                return
            if answer is None:
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE, "the loop did not answer in time")
                return
            body, content_type = answer
            self._answer(HTTPStatus.OK, body, content_type)

        def _answer(
            self, status: HTTPStatus, text: str | bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            body = text if isinstance(text, bytes) else (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # probes every few seconds: not worth a line each
            return

    return Handler
