"""The package layout keeps its rule: dependencies point one way, and the server, the agent and
the contract load no Parsl, SAGA, numpy or networkx (docs/architecture.md, "Who may import whom")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dispatcher", "worker_agent", "parsl_adapter", "chaos", "bench")

ALLOWED: dict[str, set[str]] = {
    "dispatcher.protocol": set(),
    "dispatcher.runtime": set(),
    "dispatcher.server": {"dispatcher.protocol", "dispatcher.runtime"},
    "dispatcher.client": {"dispatcher.protocol", "dispatcher.runtime"},
    "dispatcher.local": {"dispatcher.client", "dispatcher.runtime"},
    "dispatcher.cli": {"dispatcher.runtime"},
    "dispatcher": {"dispatcher.cli", "dispatcher.client", "dispatcher.local", "dispatcher.runtime"},
    "worker_agent": {"dispatcher.cli", "dispatcher.protocol", "dispatcher.runtime"},  # cli: its __main__
    # worker_agent: its radio only (the RadioConfig the workers' senders unpickle), below
    "parsl_adapter": {
        "dispatcher.client",
        "dispatcher.local",
        "dispatcher.protocol",
        "dispatcher.runtime",
        "worker_agent",
    },
    "chaos": {"dispatcher", "dispatcher.client", "dispatcher.local", "dispatcher.runtime", "parsl_adapter"},
    "bench": {*PACKAGES, "dispatcher.client", "dispatcher.local", "dispatcher.protocol", "dispatcher.runtime"},
}
"""Room -> the rooms it may import. A room is a subpackage of ``dispatcher`` (or one of its
top-level modules), or a top-level package."""

HEAVY = ("parsl", "saga", "numpy", "networkx")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "dispatcher" or len(parts) == 1 or parts[1] == "__main__":
        return parts[0]
    return f"dispatcher.{parts[1]}"


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``path`` imports, lazily or not."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
    return {name for name in out if name.split(".")[0] in PACKAGES}


def _room_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        room = _room(name)
        graph.setdefault(room, set()).update(r for r in map(_room, _imports(path, modules)) if r != room)
    return graph


def test_every_room_imports_only_what_the_rule_allows() -> None:
    graph = _room_graph()
    assert set(graph) <= set(ALLOWED), f"rooms missing from the rule: {set(graph) - set(ALLOWED)}"
    broken = {room: sorted(deps - ALLOWED[room]) for room, deps in graph.items() if deps - ALLOWED[room]}
    assert not broken, broken


def test_the_executor_takes_only_the_radio_from_the_agent_s_room() -> None:
    modules = _modules()
    taken = {
        name
        for module, path in modules.items()
        if _room(module) == "parsl_adapter"
        for name in _imports(path, modules)
        if _room(name) == "worker_agent"
    }
    assert taken == {"worker_agent.radio"}


def test_the_room_graph_has_no_cycle() -> None:
    try:
        tuple(TopologicalSorter(_room_graph()).static_order())
    except CycleError as exc:  # pragma: no cover - the message names the cycle
        pytest.fail(f"import cycle between rooms: {exc.args[1]}")


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule is not vacuous: the server importing the client is an edge the graph reports."""
    modules = {"dispatcher.client.client": Path(), "dispatcher.server.core": Path()}
    source = tmp_path / "core.py"
    source.write_text("def f():\n    from dispatcher.client.client import Client\n")
    assert {_room(m) for m in _imports(source, modules)} - ALLOWED["dispatcher.server"] == {"dispatcher.client"}


ROLE_MODULES = [
    "dispatcher.protocol",
    "dispatcher.server",
    "dispatcher.server.core",
    "dispatcher.server.service",
    "dispatcher.server.main",
    "dispatcher.cli",
    "dispatcher.client.status",
    "worker_agent",
    "worker_agent.agent",
    "worker_agent.pool",
    "worker_agent.main",
]


def test_server_agent_and_contract_load_no_parsl_saga_numpy_or_networkx() -> None:
    """In a fresh interpreter, as the dispatcher's and the agent's processes start."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {ROLE_MODULES!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_the_check_would_see_parsl() -> None:
    code = "import sys, parsl_adapter.executor; print('parsl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "True"


def _heavy_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_planning_process_loads_saga_but_not_parsl() -> None:
    heavy = _heavy_after(
        "import parsl_adapter.planning_process, parsl_adapter.placement as p; p.make_scheduler('HEFT')"
    )
    assert "saga" in heavy
    assert "parsl" not in heavy


def test_parsl_s_process_loads_parsl_but_not_saga_for_an_executor() -> None:
    """SAGA is seconds of imports; only the planning process needs it."""
    heavy = _heavy_after("from parsl_adapter import SagaDispatchExecutor\nSagaDispatchExecutor(scheduler='CPOP')")
    assert "parsl" in heavy
    assert "saga" not in heavy
