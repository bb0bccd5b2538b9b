"""Plain-text tables for the ``status`` and ``demo`` commands."""

from __future__ import annotations

from collections.abc import Sequence

from dispatcher.protocol import Status


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table; numbers are right-aligned."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])]).rstrip()


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def status_table(status: Status) -> str:
    nodes = table(
        ["node", "state", "speed", "slots", "incarnation", "queued", "in flight", "done"],
        [list(n) for n in status.nodes],
    )
    totals = (
        f"dispatcher {status.dispatcher_id}: {status.tasks_submitted} submitted, "
        f"{status.tasks_resolved} resolved, {status.pool_queued} queued in the shared pool, "
        f"{status.duplicates_dropped} duplicate results dropped, {status.bad_frames} bad frames"
    )
    return f"{nodes}\n\n{totals}"
