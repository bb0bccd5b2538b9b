"""``saga-dispatch agent``: flags and environment -> :class:`AgentConfig` -> the agent."""

from __future__ import annotations

import dataclasses
import os

import structlog

from dispatcher.runtime import exposure
from dispatcher.runtime.args import env, http_port, http_port_flag, role_parser, security_flags
from dispatcher.runtime.collector import tune_collector
from dispatcher.runtime.keys import for_agent, resolve_folder
from dispatcher.runtime.lifeline import die_with_parent
from worker_agent.agent import Agent
from worker_agent.config import AgentConfig, resolve_node_name


def main(argv: list[str]) -> int:
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    parser = role_parser("agent", "run a node agent")
    parser.add_argument(
        "--dispatcher",
        default=os.environ.get("SAGA_DISPATCHER"),
        required="SAGA_DISPATCHER" not in os.environ,
        metavar="URL",
        help="the dispatcher's agent URL, e.g. tcp://saga-dispatcher:5561 (env SAGA_DISPATCHER)",
    )
    parser.add_argument(
        "--node-name",
        default=None,
        help="node name if NODE_NAME (Downward API spec.nodeName) is unset; else the hostname",
    )
    parser.add_argument(
        "--workers", type=int, default=env("SAGA_WORKERS", "") or None, help="worker processes (default: the cores)"
    )
    parser.add_argument("--prefetch", type=int, default=None, help="tasks held beyond the workers (default: workers)")
    parser.add_argument(
        "--pipeline",
        type=int,
        default=defaults["pipeline"],
        help="tasks written ahead into a busy worker's pipe when all are busy",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=float(env("SAGA_NODE_SPEED", "0")) or None,
        help="relative speed for the planner (env SAGA_NODE_SPEED; default: the Node's speed label, else 1)",
    )
    parser.add_argument("--drain-timeout", type=float, default=defaults["drain_timeout_s"], metavar="SECONDS")
    parser.add_argument(
        "--zygote", default=None, metavar="SOCKET", help="fork workers from this worker zygote (the local cluster's)"
    )
    http_port_flag(parser)
    parser.add_argument("--http-host", default="0.0.0.0", help="address for the HTTP probes")
    security_flags(
        parser,
        keys="agent-NODE.key_secret or agent.key_secret, and dispatcher.key",
        insecure="allow a dispatcher beyond loopback without keys",
    )
    args = parser.parse_args(argv)

    die_with_parent()
    given = {"workers": int(args.workers)} if args.workers is not None else {}
    node_name = resolve_node_name(args.node_name)
    folder = resolve_folder(args.keys)
    config = AgentConfig(
        dispatcher_url=args.dispatcher,
        node_name=node_name,
        prefetch=args.prefetch,
        pipeline=args.pipeline,
        speed=args.speed,
        drain_timeout_s=args.drain_timeout,
        zygote=args.zygote,
        keys=for_agent(folder, node_name) if folder is not None else None,
        insecure=args.insecure,
        http_port=http_port(args),
        http_host=args.http_host,
        **given,
    )
    structlog.contextvars.bind_contextvars(node=config.node_name)
    if config.insecure and config.keys is None:
        structlog.get_logger("agent").warning(
            "insecure", dispatcher=config.dispatcher_url, warning=exposure.INSECURE_WARNING
        )
    elif config.keys is not None:
        structlog.get_logger("agent").info("agent_keys", pair=config.keys.name, keys=str(folder))
    agent = Agent(config)
    agent.install_signal_handlers()
    tune_collector()  # its workers are fresh interpreters (or a zygote's): Python's defaults there
    agent.run()
    return 0
