"""Planned against actual as a picture: one lane per node, SAGA's bars above what ran.

``draw(entries, "run.png")`` takes ``executor.timeline()`` (or the JSON ``save`` writes, which
``saga-dispatch gantt run.json`` reads) and draws, for every node, a thin row of the planned
bars (outlined) under a row of the actual ones: filled where the task ran on its planned node,
in orange where it ran elsewhere (stolen, or rescued from a dead node: drawn in the lane of the
node that ran it), hatched where a re-plan moved it. A ``.html`` path (or ``html=``) also writes
a self-contained page: the picture inline as SVG, and the table behind it.

matplotlib is optional for library users (``saga-dispatch[plot]``); the dev environment, and so
the README's demo, has it.
"""

from __future__ import annotations

import html as html_escape
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dispatcher.runtime.errors import DispatchError
from parsl_adapter.timeline import TimelineEntry

PLANNED = "#4c72b0"
ON_PLAN = "#55a868"
MOVED = "#dd8452"
FAILED = "#c44e52"


class PlotUnavailable(DispatchError):
    """matplotlib is not installed."""


def save(entries: Iterable[TimelineEntry], path: str | Path) -> Path:
    """The timeline as JSON (one object per task), for ``saga-dispatch gantt`` or a notebook."""
    out = Path(path)
    out.write_text(json.dumps([e.as_dict() for e in entries], indent=1))
    return out


def load(path: str | Path) -> list[TimelineEntry]:
    fields = set(TimelineEntry.__dataclass_fields__)
    try:
        rows = json.loads(Path(path).read_text())
        return [TimelineEntry(**{k: v for k, v in row.items() if k in fields}) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise DispatchError(f"{path} is not a timeline written by parsl_adapter.gantt.save: {exc}") from exc


def draw(
    entries: Sequence[TimelineEntry], path: str | Path, *, title: str = "", html: str | Path | None = None
) -> Path:
    """Write the chart to ``path`` (PNG, SVG or PDF by its suffix; ``.html``: the page)."""
    out = Path(path)
    if out.suffix == ".html":
        return _page(entries, out, title)
    figure = _figure(entries, title)
    figure.savefig(out, dpi=110, bbox_inches="tight")
    if html is not None:
        _page(entries, Path(html), title)
    return out


def _figure(entries: Sequence[TimelineEntry], title: str) -> Any:
    try:  # a Figure of its own, not pyplot: the caller's backend and figures are left alone
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise PlotUnavailable("drawing the timeline needs matplotlib: pip install 'saga-dispatch[plot]'") from exc
    if not entries:
        raise DispatchError("the timeline is empty: no planned task has finished")
    nodes = sorted({e.planned_node for e in entries} | {e.node for e in entries if e.node})
    lane = {node: i for i, node in enumerate(nodes)}
    height = max(2.5, 0.9 * len(nodes) + 1.2)
    figure = Figure(figsize=(12, height))
    axes = figure.subplots()
    for entry in entries:
        y = lane[entry.planned_node]
        axes.barh(y + 0.22, entry.planned_end_s - entry.planned_start_s, left=entry.planned_start_s, height=0.3,
                  facecolor="none", edgecolor=PLANNED, linewidth=0.8)  # fmt: skip
        if not entry.node:
            continue
        color = FAILED if not entry.ok else MOVED if entry.moved else ON_PLAN
        axes.barh(lane[entry.node] - 0.18, max(entry.end_s - entry.start_s, 1e-3), left=entry.start_s, height=0.4,
                  color=color, edgecolor="black", linewidth=0.3, hatch="///" if entry.replanned else None)  # fmt: skip
    axes.set_yticks(range(len(nodes)), nodes)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the executor started")
    planned_end = max(e.planned_end_s for e in entries)
    actual_end = max((e.end_s for e in entries if e.node), default=0.0)
    start = min(e.planned_start_s for e in entries)
    axes.set_title(
        title
        or f"planned (outline) vs actual: makespan planned {planned_end - start:.2f} s, "
        f"actual {actual_end - start:.2f} s, {sum(not e.moved for e in entries)}/{len(entries)} on plan"
    )
    axes.legend(
        handles=[
            Patch(facecolor="none", edgecolor=PLANNED, label="planned (SAGA)"),
            Patch(color=ON_PLAN, label="ran on its planned node"),
            Patch(color=MOVED, label="ran elsewhere (stolen / rescued)"),
            Patch(facecolor="white", edgecolor="black", hatch="///", label="re-planned"),
            Patch(color=FAILED, label="failed"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.3 / height),
        ncol=5,
        frameon=False,
    )
    axes.grid(axis="x", alpha=0.3)
    return figure


def _page(entries: Sequence[TimelineEntry], path: Path, title: str) -> Path:
    figure = _figure(entries, title)
    svg = io.StringIO()
    figure.savefig(svg, format="svg", bbox_inches="tight")
    head = ["task", "function", "planned node", "planned start", "planned end", "node", "start", "end", "note"]
    rows = []
    for e in entries:
        note = ", ".join(n for n, on in (("re-planned", e.replanned), ("moved", e.moved), ("failed", not e.ok)) if on)
        cells = [e.task_id, e.function, e.planned_node, f"{e.planned_start_s:.3f}", f"{e.planned_end_s:.3f}",
                 e.node, f"{e.start_s:.3f}", f"{e.end_s:.3f}", note]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html_escape.escape(str(c))}</td>" for c in cells) + "</tr>")
    page = (
        "<!doctype html><meta charset='utf-8'><title>saga-dispatch timeline</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<h1>{html_escape.escape(title or 'planned vs actual')}</h1>{svg.getvalue()}"
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    )
    path.write_text(page)
    return path


def main(argv: list[str]) -> int:
    """``saga-dispatch gantt TIMELINE.json [-o chart.png] [--html page.html]``."""
    from dispatcher.runtime.args import role_parser

    parser = role_parser("gantt", "draw a timeline (parsl_adapter.gantt.save) as planned vs actual bars per node")
    parser.add_argument("timeline", help="JSON written by parsl_adapter.gantt.save(executor.timeline(), path)")
    parser.add_argument("-o", "--output", default=None, help="the picture (.png, .svg, .pdf; default: beside the JSON)")
    parser.add_argument("--html", default=None, help="also write a self-contained HTML page here")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    entries = load(args.timeline)
    output = args.output or str(Path(args.timeline).with_suffix(".png"))
    print(draw(entries, output, title=args.title, html=args.html))
    if args.html:
        print(args.html)
    return 0
