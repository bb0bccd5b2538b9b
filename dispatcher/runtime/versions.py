"""Runtime versions: what an agent's workers unpickle with and what a client pickles with.

A Parsl apply message pickled by one Python or Parsl and unpickled by another fails in obscure
ways (HTEX refuses such workers outright). Each side says its versions (REGISTER and HELLO's
``versions``: space-separated ``name=version``), and the dispatcher refuses a task pinned to a
node whose versions differ from its client's (:func:`mismatch`), with a clear error.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Final

COMPARED: Final = ("python", "parsl", "dill")
"""What must agree: Python by major.minor (the pickle and bytecode formats), Parsl and dill
(Parsl's serializers) exactly."""


def runtime_versions() -> str:
    """This process's ``python=3.13.5 parsl=2026.10.26 dill=0.4.0`` (a package not installed is
    left out). Reads package metadata only: nothing is imported."""
    found = [f"python={sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"]
    for name in COMPARED[1:]:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return " ".join(found)


def parse(versions: str) -> dict[str, str]:
    """``"a=1 b=2"`` -> ``{"a": "1", "b": "2"}``; malformed words are ignored."""
    out = {}
    for word in versions.split():
        name, sep, value = word.partition("=")
        if sep and name and value:
            out[name] = value
    return out


def _significant(name: str, version: str) -> str:
    return ".".join(version.split(".")[:2]) if name == "python" else version


def mismatch(client: str, node: str) -> str | None:
    """Why tasks packed by a client with ``client`` versions cannot run on a node with ``node``
    versions, or None. Only what both sides report is compared: an older peer says nothing."""
    mine, theirs = parse(client), parse(node)
    differ = [
        f"{name} {mine[name]} here, {theirs[name]} on the node"
        for name in COMPARED
        if name in mine and name in theirs and _significant(name, mine[name]) != _significant(name, theirs[name])
    ]
    return "; ".join(differ) or None
