"""``saga-dispatch status``: a dispatcher's nodes, queues and counters, as a table."""

from __future__ import annotations

from dispatcher.client.client import Client
from dispatcher.protocol import Status
from dispatcher.runtime.args import env, role_parser, security_flags
from dispatcher.runtime.report import table


def status_table(status: Status) -> str:
    nodes = table(
        ["node", "state", "reason", "speed", "slots", "incarnation", "queued", "in flight", "done", "worker respawns",
         "zone", "versions"],
        [[n.node_name, n.state, n.reason, n.speed, n.slots, n.incarnation, n.queued, n.in_flight, n.done,
          n.worker_respawns, n.zone, n.versions] for n in status.nodes],
    )  # fmt: skip
    totals = (
        f"dispatcher {status.dispatcher_id}: {status.tasks_submitted} submitted, "
        f"{status.tasks_resolved} resolved, {status.pool_queued} queued in the shared pool, "
        f"{status.tasks_stolen} stolen, {status.duplicates_dropped} duplicate results dropped, "
        f"{status.bad_frames} bad frames"
    )
    return f"{nodes}\n\n{totals}"


def main(argv: list[str]) -> int:
    parser = role_parser("status", "print a dispatcher's nodes, queues and counters")
    parser.add_argument("--dispatcher", default=env("SAGA_DISPATCHER_CLIENT", "tcp://127.0.0.1:5560"), metavar="URL")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    security_flags(
        parser, keys="client.key_secret and dispatcher.key", insecure="allow a dispatcher beyond loopback without keys"
    )
    parser.add_argument("--key-name", default=None, metavar="NAME", help="use the client-NAME pair of DIR")
    args = parser.parse_args(argv)
    with Client(
        args.dispatcher, connect_timeout_s=args.timeout, keys=args.keys, key_name=args.key_name, insecure=args.insecure
    ) as client:
        print(status_table(client.status(timeout_s=args.timeout)))
    return 0
