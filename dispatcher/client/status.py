"""``saga-dispatch status``: a dispatcher's nodes, queues and counters, as a table.

``--watch`` redraws the table in place every ``--interval`` seconds until Ctrl-C (plain ANSI:
the terminal is cleared and the cursor sent home, so nothing beyond the base install is needed);
``--json`` prints one JSON object (the STATUS message, nodes as objects) for scripts.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

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


def status_json(status: Status) -> dict[str, Any]:
    return {
        "dispatcher_id": status.dispatcher_id,
        "tasks_submitted": status.tasks_submitted,
        "tasks_resolved": status.tasks_resolved,
        "pool_queued": status.pool_queued,
        "tasks_stolen": status.tasks_stolen,
        "duplicates_dropped": status.duplicates_dropped,
        "bad_frames": status.bad_frames,
        "nodes": [n._asdict() for n in status.nodes],
    }


_HOME_AND_CLEAR = "\x1b[H\x1b[2J"


def main(argv: list[str]) -> int:
    parser = role_parser("status", "print a dispatcher's nodes, queues and counters")
    parser.add_argument("--dispatcher", default=env("SAGA_DISPATCHER_CLIENT", "tcp://127.0.0.1:5560"), metavar="URL")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    security_flags(
        parser, keys="client.key_secret and dispatcher.key", insecure="allow a dispatcher beyond loopback without keys"
    )
    parser.add_argument("--key-name", default=None, metavar="NAME", help="use the client-NAME pair of DIR")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    shown.add_argument("--watch", action="store_true", help="redraw the table every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if not args.interval >= 0.05:
        parser.error(f"--interval must be at least 0.05 s, got {args.interval}")
    with Client(
        args.dispatcher, connect_timeout_s=args.timeout, keys=args.keys, key_name=args.key_name, insecure=args.insecure
    ) as client:
        if args.json:
            print(json.dumps(status_json(client.status(timeout_s=args.timeout))))
            return 0
        if not args.watch:
            print(status_table(client.status(timeout_s=args.timeout)))
            return 0
        stop = threading.Event()  # Ctrl-C (or SIGTERM) ends the loop between two redraws, never inside a call
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            text = status_table(client.status(timeout_s=args.timeout))
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{_HOME_AND_CLEAR}{text}\n\n{stamp}, every {args.interval:g} s; Ctrl-C to stop\n")
            sys.stdout.flush()
            stop.wait(args.interval)
        return 0
