"""``saga-dispatch``: one console script, one subcommand per role.

Configuration is read here (flags, with environment fallbacks for the pod manifests), turned into
each component's frozen config dataclass, and passed in. Logging is configured here, once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from dispatcher.logs import LOG_FORMATS, configure_logging


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    def logging_flags(p: argparse.ArgumentParser, default: object) -> None:
        p.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default=default,
            help="console (terminal), json (pods, files), or auto (default; env SAGA_LOG_FORMAT)",
        )
        p.add_argument("--log-level", default=default, help="debug, info (default), warning, error")

    parser = argparse.ArgumentParser(prog="saga-dispatch", description=__doc__.splitlines()[0] if __doc__ else None)
    logging_flags(parser, None)
    # The same flags are accepted after the subcommand; SUPPRESS keeps them from resetting the main ones.
    common = argparse.ArgumentParser(add_help=False)
    logging_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dispatcher", parents=[common], help="run the dispatcher service")
    d.add_argument("--host", default=_env("SAGA_HOST", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    d.add_argument("--client-port", type=int, default=int(_env("SAGA_CLIENT_PORT", "5560")))
    d.add_argument("--agent-port", type=int, default=int(_env("SAGA_AGENT_PORT", "5561")))
    d.add_argument("--heartbeat-interval", type=float, default=0.5, metavar="SECONDS")
    d.add_argument("--liveness", type=int, default=3, help="missed intervals before a node is dead")
    d.add_argument(
        "--pending-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long tasks wait for a named node that never registers",
    )
    d.add_argument("--announce", action="store_true", help="print the bound URLs as one JSON line on stdout")

    a = sub.add_parser("agent", parents=[common], help="run a node agent")
    a.add_argument(
        "--dispatcher",
        default=os.environ.get("SAGA_DISPATCHER"),
        required="SAGA_DISPATCHER" not in os.environ,
        metavar="URL",
        help="the dispatcher's agent URL, e.g. tcp://saga-dispatcher:5561 (env SAGA_DISPATCHER)",
    )
    a.add_argument(
        "--node-name",
        default=None,
        help="node name if NODE_NAME (Downward API spec.nodeName) is unset; else the hostname",
    )
    a.add_argument("--workers", type=int, default=int(_env("SAGA_WORKERS", str(os.cpu_count() or 1))))
    a.add_argument("--prefetch", type=int, default=None, help="tasks held beyond the workers (default: workers)")
    a.add_argument(
        "--pipeline", type=int, default=1, help="tasks written ahead into a busy worker's pipe when all are busy"
    )
    a.add_argument("--speed", type=float, default=float(_env("SAGA_NODE_SPEED", "1.0")))
    a.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS")

    loc = sub.add_parser("local", parents=[common], help="run a dispatcher and N agents locally until Ctrl-C")
    loc.add_argument("--nodes", type=int, default=4)
    loc.add_argument("--speeds", default=None, help="comma-separated node speeds, e.g. 1,1,2,4")
    loc.add_argument("--workers", type=int, default=1, help="workers per node")

    s = sub.add_parser("status", parents=[common], help="print a dispatcher's nodes, queues and counters")
    s.add_argument("--dispatcher", default=_env("SAGA_DISPATCHER_CLIENT", "tcp://127.0.0.1:5560"), metavar="URL")
    s.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")

    demo = sub.add_parser(
        "demo", parents=[common], help="run a WfCommons workflow through Parsl with SAGA placement on 4 local nodes"
    )
    demo.add_argument("--recipe", choices=("montage", "epigenomics"), default="montage")
    demo.add_argument("--tasks", type=int, default=120, help="approximate number of workflow tasks")
    demo.add_argument("--scheduler", default="HEFT", help="a SAGA scheduler name (default HEFT)")
    demo.add_argument("--seed", type=int, default=1)
    chaos = sub.add_parser("chaos", parents=[common], help="run seeded fault-injection runs in network namespaces")
    chaos.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    chaos.add_argument("--first-seed", type=int, default=0)
    chaos.add_argument("--tasks", type=int, default=2000, help="DAG size per run (default 2000)")
    chaos.add_argument("--json", type=Path, default=None, help="also write every run's result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.log_format = args.log_format or _env("SAGA_LOG_FORMAT", "auto")
    # The demo prints a report: keep routine info lines out of it unless asked for.
    args.log_level = args.log_level or _env("SAGA_LOG_LEVEL", "warning" if args.command == "demo" else "info")
    configure_logging(args.log_format, args.log_level, component=args.command)
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, not a traceback, for expected failures
        from dispatcher.errors import DispatchError
        from dispatcher.local import LocalClusterError

        if isinstance(exc, DispatchError | LocalClusterError | ValueError):
            print(f"saga-dispatch {args.command}: {exc}", file=sys.stderr)
            return 1
        raise


def _run_dispatcher(args: argparse.Namespace) -> int:
    from dispatcher.core import CoreConfig
    from dispatcher.lifeline import die_with_parent
    from dispatcher.service import DispatcherConfig, DispatcherService

    die_with_parent()
    config = DispatcherConfig(
        host=args.host,
        client_port=args.client_port,
        agent_port=args.agent_port,
        core=CoreConfig(
            heartbeat_interval_s=args.heartbeat_interval, liveness=args.liveness, pending_grace_s=args.pending_grace
        ),
    )
    service = DispatcherService(config)
    service.install_signal_handlers()
    service.bind()
    if args.announce:
        print(service.announcement(), flush=True)
    service.run()
    return 0


def _run_agent(args: argparse.Namespace) -> int:
    from dispatcher.lifeline import die_with_parent
    from worker_agent import Agent, AgentConfig, resolve_node_name

    die_with_parent()
    config = AgentConfig(
        dispatcher_url=args.dispatcher,
        node_name=resolve_node_name(args.node_name),
        workers=args.workers,
        prefetch=args.workers if args.prefetch is None else args.prefetch,
        pipeline=args.pipeline,
        speed=args.speed,
        drain_timeout_s=args.drain_timeout,
    )
    structlog.contextvars.bind_contextvars(node=config.node_name)
    agent = Agent(config)
    agent.install_signal_handlers()
    agent.run()
    return 0


def _run_local(args: argparse.Namespace) -> int:
    from dispatcher.local import LocalCluster

    speeds = [float(s) for s in args.speeds.split(",")] if args.speeds else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(args.nodes, speeds=speeds, workers=args.workers, log_format=args.log_format) as cluster:
        print(f"dispatcher client URL: {cluster.client_url}", flush=True)
        print(f"dispatcher agent URL:  {cluster.agent_url}", flush=True)
        print(f"nodes: {', '.join(cluster.node_names)}  (Ctrl-C to stop)", flush=True)
        stop.wait()
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from dispatcher.client import Client
    from dispatcher.report import status_table

    with Client(args.dispatcher, connect_timeout_s=args.timeout) as client:
        print(status_table(client.status(timeout_s=args.timeout)))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from parsl_adapter.demo import run_demo

    return run_demo(recipe=args.recipe, tasks=args.tasks, seed=args.seed, scheduler=args.scheduler)


def _run_chaos(args: argparse.Namespace) -> int:
    import json

    from chaos.campaign import failures, report, run_seeds

    # SIGTERM becomes SystemExit, so the lab's namespaces are always torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = run_seeds(seeds, tasks=args.tasks)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    print(report(results))
    bad = failures(results)
    for r in bad:
        print(f"seed {r['seed']} failed: {json.dumps({k: v for k, v in r.items() if k != 'recoveries'})[:800]}")
    return 1 if bad else 0


_COMMANDS = {
    "dispatcher": _run_dispatcher,
    "agent": _run_agent,
    "local": _run_local,
    "status": _run_status,
    "demo": _run_demo,
    "chaos": _run_chaos,
}
