"""structlog set-up, called once by each entry point (never at import time).

``auto`` gives coloured key=value lines on a terminal and one JSON object per line otherwise
(a pod's log, a file), so the same binary reads well in both places.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")


class _LibraryLogger:
    """A structlog logger decided at first use: the configured one inside our own entry points;
    inside someone else's program (a Parsl script) one that goes through stdlib ``logging`` as
    ``saga_dispatch.<name>``, so a library never prints on its own."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            if structlog.is_configured():
                self._logger = structlog.get_logger(self._name)
            else:
                self._logger = structlog.wrap_logger(
                    logging.getLogger(f"saga_dispatch.{self._name}"),
                    wrapper_class=structlog.stdlib.BoundLogger,
                    processors=[
                        structlog.stdlib.filter_by_level,  # render nothing the stdlib level drops
                        structlog.processors.format_exc_info,
                        structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
                    ],
                )
        return getattr(self._logger, attr)


def get_logger(name: str) -> Any:
    """The logger every module uses (``log = get_logger("agent")``)."""
    return _LibraryLogger(name)


def configure_logging(fmt: LogFormat = "auto", level: str = "info", **context: object) -> None:
    """Route structlog to stderr in ``fmt``; ``context`` (e.g. ``component="agent"``) is bound to every line."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)
