"""Secure by default: which addresses need keys, as policies every role shares.

Without keys, anyone who reaches the dispatcher runs code on every node, so the keyless mode is
for loopback only: the dispatcher binds 127.0.0.1 by default and refuses a wider address, and
agents and clients refuse to connect to a non-loopback dispatcher, unless told ``insecure`` (one
name everywhere: ``--insecure``, ``insecure=True``), which is logged at every start.
Loopback is not private on a shared machine (every user reaches it): the embedded mode uses
ephemeral keys for that reason (``dispatcher.local``).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from dispatcher.runtime.errors import DispatchError

LOOPBACK: Final = "127.0.0.1"
ALL_INTERFACES: Final = "0.0.0.0"
INSECURE_WARNING: Final = (
    "running without CurveZMQ keys beyond loopback (--insecure): anyone who reaches the ports "
    "can run code on every node or receive its tasks"
)


class InsecureAddress(DispatchError):
    """A non-loopback address without keys, and ``insecure`` was not given."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``, as in a bind or connect URL) is loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or ``*``): not known to be loopback
        return False


def default_host(keyed: bool) -> str:
    """What the dispatcher binds when ``--host`` is not given: every interface only with keys."""
    return ALL_INTERFACES if keyed else LOOPBACK


def check_bind(host: str, *, keyed: bool, insecure: bool) -> bool:
    """Raise if the dispatcher may not bind ``host``; returns whether the bind is insecure (the
    caller warns)."""
    if keyed or is_loopback(host):
        return False
    if not insecure:
        raise InsecureAddress(
            f"refusing to bind {host} without keys: anyone who reaches it could run code on every node. "
            "Give --keys DIR (saga-dispatch keys generate DIR), bind 127.0.0.1, or pass --insecure"
        )
    return True


def check_connect(url: str, *, keyed: bool, insecure: bool) -> bool:
    """Raise if an agent or a client may not connect to ``url`` without keys; returns whether the
    connection is insecure (the caller warns). ``ipc://`` and ``inproc://`` never leave the machine."""
    parts = urlsplit(url)
    if keyed or parts.scheme != "tcp" or is_loopback(parts.hostname or ""):
        return False
    if not insecure:
        raise InsecureAddress(
            f"refusing to connect to {url} without keys: a dispatcher beyond loopback must be reached with "
            "CurveZMQ. Give keys (--keys DIR, keys=DIR or SAGA_KEYS) or pass insecure"
        )
    return True
