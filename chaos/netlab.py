"""A small network lab: a hub namespace with a bridge, and one namespace per node.

    hub ns "sd<tag>h":  br0 10.213.S.1/24, loopback       (dispatcher + the Parsl program)
    node ns "sd<tag>n<i>": eth0 10.213.S.(10+i)/24  <-veth->  hub's "v<i>" on br0

A link fault sets the hub end of a node's veth down. Names carry a per-run tag, so runs never
collide, and ``down()`` deletes every namespace (and with them the veths).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import Self


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> tuple[bool, str]:
    """Whether this process can build the lab (root and a working ``ip netns``), and why not."""
    if os.geteuid() != 0:
        return False, "needs root"
    if shutil.which("ip") is None:
        return False, "needs iproute2 (ip)"
    probe = f"sdprobe{secrets.token_hex(2)}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return False, f"ip netns does not work here: {exc}"
    _ip("netns", "del", probe)
    return True, ""


@dataclass
class NetLab:
    nodes: int
    tag: str = ""

    def __post_init__(self) -> None:
        self.tag = self.tag or secrets.token_hex(2)
        self.subnet = 20 + int(self.tag, 16) % 200
        self.hub = f"sd{self.tag}h"
        self.node_ns = [f"sd{self.tag}n{i}" for i in range(self.nodes)]
        self.hub_ip = f"10.213.{self.subnet}.1"
        self._made: list[str] = []

    def node_ip(self, i: int) -> str:
        return f"10.213.{self.subnet}.{10 + i}"

    def exec_argv(self, namespace: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def up(self) -> None:
        try:
            self._add_ns(self.hub)
            self._in(self.hub, "link", "add", "br0", "type", "bridge")
            self._in(self.hub, "addr", "add", f"{self.hub_ip}/24", "dev", "br0")
            self._in(self.hub, "link", "set", "br0", "up")
            for i, ns in enumerate(self.node_ns):
                self._add_ns(ns)
                outer, inner = f"sd{self.tag}b{i}", f"sd{self.tag}e{i}"
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                _ip("link", "set", outer, "netns", self.hub)
                _ip("link", "set", inner, "netns", ns)
                self._in(self.hub, "link", "set", outer, "name", f"v{i}")
                self._in(self.hub, "link", "set", f"v{i}", "master", "br0")
                self._in(self.hub, "link", "set", f"v{i}", "up")
                self._in(ns, "link", "set", inner, "name", "eth0")
                self._in(ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", "eth0")
                self._in(ns, "link", "set", "eth0", "up")
        except BaseException:
            self.down()
            raise

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        self._in(name, "link", "set", "lo", "up")

    def _in(self, namespace: str, *args: str) -> None:
        _ip("-n", namespace, *args)

    def link(self, i: int, up: bool) -> None:
        self._in(self.hub, "link", "set", f"v{i}", "up" if up else "down")

    def kill_processes(self) -> None:
        """SIGKILL everything still running in the lab's namespaces (a run that hung or was killed)."""
        for name in self._made:
            pids = subprocess.run(["ip", "netns", "pids", name], check=False, capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def down(self) -> None:
        self.kill_processes()
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self._made.clear()

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
