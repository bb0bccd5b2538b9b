"""``saga-dispatch``: one console script, one subcommand per role, each started by module name.

This module knows the roles only as module names (``ROLES``): it reads the logging flags,
configures logging once, and hands the rest of the command line to that module's
``main(argv)``, which builds its component's frozen config from flags and environment. So the
command imports nothing of a role it does not run: ``saga-dispatch dispatcher`` never loads the
client, Parsl or SAGA.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Final, NamedTuple, cast

from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.logs import LOG_FORMATS, LogFormat, configure_logging


class Role(NamedTuple):
    module: str
    """Imported only when this role runs; it has ``main(argv: list[str]) -> int``."""
    help: str


ROLES: Final = {
    "dispatcher": Role("dispatcher.server.main", "run the dispatcher service"),
    "agent": Role("worker_agent.main", "run a node agent"),
    "local": Role("dispatcher.local", "run a dispatcher and N agents locally until Ctrl-C"),
    "status": Role("dispatcher.client.status", "print a dispatcher's nodes, queues and counters"),
    "keys": Role("dispatcher.runtime.keys", "generate CurveZMQ key pairs: saga-dispatch keys generate DIR"),
    "demo": Role("parsl_adapter.demo", "run a WfCommons workflow through Parsl with SAGA placement on 4 local nodes"),
    "gantt": Role("parsl_adapter.gantt", "draw a saved executor timeline: planned vs actual bars per node"),
    "chaos": Role("chaos.campaign", "run seeded fault-injection runs in network namespaces"),
}


def logging_flags(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="console (terminal), json (pods, files), or auto (default; env SAGA_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-level", default=default, help="debug, info (default), warning, error (env SAGA_LOG_LEVEL)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga-dispatch",
        description="saga-dispatch: a dispatcher for SAGA-placed Parsl workflows on Kubernetes.",
        epilog="`saga-dispatch COMMAND --help` shows a command's own flags.",
    )
    logging_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, role in ROLES.items():
        commands.add_parser(name, help=role.help, add_help=False)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def split(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The logging flags and the command (before or after it), and the command's own argv."""
    argv = list(argv)
    command_at = next((i for i, a in enumerate(argv) if a in ROLES), None)
    if command_at is None:
        _parser().parse_args(argv)  # prints the help, or usage and exits 2: there is no command
        raise SystemExit(2)
    after = argparse.ArgumentParser(add_help=False)
    logging_flags(after, argparse.SUPPRESS)
    late, rest = after.parse_known_args(argv[command_at + 1 :])
    before = argparse.ArgumentParser(prog="saga-dispatch", add_help=True)
    logging_flags(before)
    args = before.parse_args(argv[:command_at])
    for name, value in vars(late).items():
        setattr(args, name, value)
    args.command = argv[command_at]
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = split(sys.argv[1:] if argv is None else argv)
    log_format = args.log_format or os.environ.get("SAGA_LOG_FORMAT", "auto")
    if log_format not in LOG_FORMATS:
        raise SystemExit(f"saga-dispatch: SAGA_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    # The demo prints a report: keep routine info lines out of it unless asked for.
    log_level = args.log_level or os.environ.get("SAGA_LOG_LEVEL", "warning" if args.command == "demo" else "info")
    configure_logging(cast("LogFormat", log_format), log_level, component=args.command)
    role = ROLES[args.command]
    try:
        run = importlib.import_module(role.module).main
        return int(run([f"--log-format={log_format}", *rest]) or 0)
    except KeyboardInterrupt:
        return 130
    except (DispatchError, ValueError) as exc:  # one clear line, not a traceback, for expected failures
        print(f"saga-dispatch {args.command}: {exc}", file=sys.stderr)
        return 1
