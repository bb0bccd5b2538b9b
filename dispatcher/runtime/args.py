"""What every role's command line shares: its parser, and flags with environment fallbacks."""

from __future__ import annotations

import argparse
import os

from dispatcher.runtime.logs import LOG_FORMATS


def role_parser(command: str, description: str) -> argparse.ArgumentParser:
    """A role's own parser (``saga-dispatch COMMAND --help``). It accepts ``--log-format``, which
    the CLI passes on, so a role that starts children gives them the same format."""
    parser = argparse.ArgumentParser(prog=f"saga-dispatch {command}", description=description)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto", help=argparse.SUPPRESS)
    return parser


def env(name: str, default: str) -> str:
    """The environment's value for ``name`` (the pod manifests set these), else ``default``."""
    return os.environ.get(name, default)


def security_flags(parser: argparse.ArgumentParser, *, keys: str | None, insecure: str) -> None:
    """``--keys DIR`` (``keys``: what this role reads there; None: no such flag) and
    ``--insecure``, the same on every role. ``--keys`` defaults to None, which the key loaders
    read as ``SAGA_KEYS`` (``keys.resolve_folder``); ``--keys ""`` means none."""
    if keys is not None:
        parser.add_argument("--keys", default=None, metavar="DIR", help=f"CurveZMQ keys: {keys} (env SAGA_KEYS)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=env("SAGA_INSECURE", "") == "1",
        help=f"{insecure} (env SAGA_INSECURE=1)",
    )


def http_port_flag(parser: argparse.ArgumentParser) -> None:
    """``--http-port`` (env ``SAGA_HTTP_PORT``): ``/healthz`` and ``/readyz`` there; 0 picks a
    free port; absent (-1): no HTTP server. Read it with :func:`http_port`."""
    parser.add_argument(
        "--http-port",
        type=int,
        default=int(env("SAGA_HTTP_PORT", "-1")),
        metavar="PORT",
        help="serve /healthz, /readyz (and the dispatcher's /metrics) on this port (env SAGA_HTTP_PORT; "
        "0: a free port; default: off)",
    )


def http_port(args: argparse.Namespace) -> int | None:
    port: int = args.http_port
    return port if port >= 0 else None
