"""The timeline's picture: a PNG and a self-contained page from entries, and the CLI from JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parsl_adapter import gantt
from parsl_adapter.timeline import TimelineEntry

pytestmark = pytest.mark.unit

ENTRIES = [
    TimelineEntry(1, "f", "node-a", 0.0, 1.0, "node-a", "node-a", 0.05, 1.1, ok=True, epoch=1),
    TimelineEntry(2, "f", "node-b", 0.0, 2.0, "node-a", "node-b", 0.1, 2.0, ok=True, epoch=2),  # re-planned
    TimelineEntry(3, "g", "node-b", 2.0, 3.0, "node-b", "node-c", 2.1, 3.2, ok=False, epoch=2),  # moved, failed
]


def test_flags_say_what_happened_to_each_task() -> None:
    assert [(e.replanned, e.moved) for e in ENTRIES] == [(False, False), (True, False), (False, True)]


def test_a_png_and_a_page_are_drawn(tmp_path: Path) -> None:
    png = gantt.draw(ENTRIES, tmp_path / "run.png", html=tmp_path / "run.html")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "run.html").read_text()
    assert page.count("<svg") == 1 and page.count("<tr>") == len(ENTRIES) + 1
    assert "re-planned" in page and "moved, failed" in page


def test_the_cli_draws_a_saved_timeline_and_rejects_what_is_not_one(tmp_path: Path) -> None:
    saved = gantt.save(ENTRIES, tmp_path / "t.json")
    assert gantt.load(saved) == ENTRIES
    run = [sys.executable, "-m", "dispatcher", "gantt", str(saved)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text("{not json")
    proc = subprocess.run(
        [*run[:-1], str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode != 0 and "is not a timeline" in proc.stderr
