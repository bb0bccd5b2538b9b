"""``saga-dispatch dispatcher``: flags and environment -> :class:`DispatcherConfig` -> the service."""

from __future__ import annotations

from typing import Final

from dispatcher.runtime.args import env, http_port, http_port_flag, role_parser, security_flags
from dispatcher.runtime.collector import tune_collector
from dispatcher.runtime.keys import resolve_folder
from dispatcher.runtime.lifeline import die_with_parent
from dispatcher.server.config import (
    AGENT_PORT,
    CLIENT_PORT,
    PAYLOAD_SHARE,
    CoreConfig,
    DispatcherConfig,
    default_max_memory,
    payload_budget,
)
from dispatcher.server.nodewatch import WatchConfig, load_configuration
from dispatcher.server.service import DispatcherService

_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    """``512M``, ``2G``, ``1048576``: bytes (a flag's type: a ValueError is argparse's error)."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS else ""
    number = float(raw[: len(raw) - len(unit)])
    if not number > 0:
        raise ValueError(f"a memory budget must be positive: {text!r}")
    return int(number * _UNITS[unit])


def main(argv: list[str]) -> int:
    core = CoreConfig()
    parser = role_parser("dispatcher", "run the dispatcher service")
    parser.add_argument(
        "--host",
        default=env("SAGA_HOST", "") or None,
        help="address to bind (env SAGA_HOST; default 127.0.0.1 without keys, 0.0.0.0 with them)",
    )
    security_flags(
        parser,
        keys="dispatcher.key_secret, agents/, clients/ (saga-dispatch keys generate DIR)",
        insecure="allow binding beyond loopback without keys (anyone reaching the ports runs code on every node)",
    )
    parser.add_argument(
        "--max-task-bytes",
        type=int,
        default=core.max_task_bytes,
        metavar="BYTES",
        help="a larger task payload resolves REJECTED",
    )
    parser.add_argument(
        "--max-memory",
        type=_size,
        default=env("SAGA_MAX_MEMORY", "") or None,
        metavar="BYTES",
        help=f"memory budget (env SAGA_MAX_MEMORY; K, M, G suffixes): task payloads hold at most "
        f"{PAYLOAD_SHARE:.0%}% of it, the rest wait with their clients until a node is about to run them "
        "(default: 3/4 of the container's memory limit, else 512M)",
    )
    parser.add_argument("--client-port", type=int, default=int(env("SAGA_CLIENT_PORT", str(CLIENT_PORT))))
    parser.add_argument("--agent-port", type=int, default=int(env("SAGA_AGENT_PORT", str(AGENT_PORT))))
    parser.add_argument("--heartbeat-interval", type=float, default=core.heartbeat_interval_s, metavar="SECONDS")
    parser.add_argument("--liveness", type=int, default=core.liveness, help="missed intervals before a node is dead")
    parser.add_argument(
        "--pending-grace",
        type=float,
        default=core.pending_grace_s,
        metavar="SECONDS",
        help="how long tasks wait for a named node that never registers",
    )
    http_port_flag(parser)
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="count nothing for /metrics (to measure what counting costs; /metrics then shows only the state)",
    )
    parser.add_argument(
        "--watch-nodes",
        action="store_true",
        help="watch the Kubernetes Nodes (in-cluster config, else KUBECONFIG): cordon, deletion, NotReady",
    )
    watch = WatchConfig()
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=watch.timeout_s,
        metavar="SECONDS",
        help="each watch request's timeoutSeconds (the client-side read timeout is 30 s more)",
    )
    parser.add_argument(
        "--watch-read-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="no byte for this long and the watch's connection is taken for dead (default: --watch-timeout + 30)",
    )
    parser.add_argument("--announce", action="store_true", help="print the bound URLs as one JSON line on stdout")
    args = parser.parse_args(argv)
    if args.watch_read_timeout is not None and args.watch_read_timeout <= args.watch_timeout:
        parser.error("--watch-read-timeout must exceed --watch-timeout (a quiet, healthy watch would look hung)")

    die_with_parent()
    config = DispatcherConfig(
        host=args.host,
        client_port=args.client_port,
        agent_port=args.agent_port,
        core=CoreConfig(
            heartbeat_interval_s=args.heartbeat_interval,
            liveness=args.liveness,
            pending_grace_s=args.pending_grace,
            max_task_bytes=args.max_task_bytes,
            payload_budget=payload_budget(args.max_memory or default_max_memory()),
            metrics=args.metrics,
        ),
        keys=resolve_folder(args.keys),
        insecure=args.insecure,
        http_port=http_port(args),
        watch=WatchConfig(
            timeout_s=args.watch_timeout,
            read_timeout_s=args.watch_read_timeout or args.watch_timeout + 30.0,
        ),
    )
    kube = load_configuration() if args.watch_nodes else None
    service = DispatcherService(config, kube=kube)
    service.install_signal_handlers()
    service.bind()
    if args.announce:
        print(service.announcement(), flush=True)
    tune_collector()
    service.run()
    return 0
