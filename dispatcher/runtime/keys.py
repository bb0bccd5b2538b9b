"""CurveZMQ key files, the ZeroMQ way: pyzmq's certificate format, one key pair per role.

``saga-dispatch keys generate DIR [--node NAME]... [--client NAME]...`` writes, in a 0700 ``DIR``:

* ``dispatcher.key`` / ``dispatcher.key_secret``: the dispatcher's pair (the CURVE server);
* ``agent.key`` / ``agent.key_secret``: the agent pair every node shares (the DaemonSet's);
* ``client.key`` / ``client.key_secret``: a client pair;
* ``agent-NAME.*`` per ``--node``: a pair bound to that node name; ``client-NAME.*`` per ``--client``;
* the dispatcher's allow-lists, public keys only: ``agents/*.key`` and ``clients/*.key`` (two
  folders, because pyzmq loads every ``*.key`` of a folder). ``agents/agent-NAME.key`` binds
  its key to node ``NAME``.

A Kubernetes Secret holds files but no folders, so the dispatcher also reads a *flat* folder: with
no ``agents/`` or ``clients/`` in it, its ``agent.key`` and ``agent-NAME.key`` are the agent
allow-list and its ``client.key`` and ``client-NAME.key`` the client one (:func:`allow_lists`).
That is what the dispatcher's Secret in ``k8s/`` holds: its pair and the public keys it allows.

Secrets are written 0600 (inside the 0700 folder, so the moment between writing and ``chmod``
shows them to nobody). Reading a secret checks its mode as ssh does (:func:`check_secret`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dispatcher.runtime.errors import DispatchError

DISPATCHER: Final = "dispatcher"
AGENT: Final = "agent"
CLIENT: Final = "client"
AGENTS_DIR: Final = "agents"
CLIENTS_DIR: Final = "clients"
SECRET_MODES_OF_ROOT: Final = frozenset({0o400, 0o440})
"""Root-owned and read-only: what a Kubernetes Secret volume with ``fsGroup`` gives a pod."""
_NAME: Final = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
"""A node name (an RFC 1123 subdomain) or a client name: safe as part of a file name."""


class KeyFileError(DispatchError):
    """A key file is missing, malformed, or readable by others than its owner."""


def check_secret(path: Path) -> None:
    """Refuse a secret others may read, as ssh does: a file of the running user must be
    readable by that user alone; a root-owned one may also be group-readable if it is read-only
    (0400 or 0440: a Kubernetes Secret volume with ``fsGroup``); world-readable never."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read the secret key {path}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        raise KeyFileError(f"the secret key {path} is readable by everyone (mode {mode:04o}): chmod 600 it")
    if st.st_uid == 0 and mode in SECRET_MODES_OF_ROOT:
        return
    if st.st_uid not in (os.getuid(), 0):
        raise KeyFileError(f"the secret key {path} belongs to uid {st.st_uid}, not to us (uid {os.getuid()}) or root")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"the secret key {path} is open to its group or others (mode {mode:04o}): chmod 600 it")


def load_pair(folder: Path, name: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` from ``folder/name.key_secret``, after :func:`check_secret`."""
    path = folder / f"{name}.key_secret"
    check_secret(path)
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return public, secret


def load_public(folder: Path, name: str) -> bytes:
    """The public key of ``folder/name.key``."""
    public, _ = _load(folder / f"{name}.key")
    return public


def allow_list(folder: Path) -> dict[bytes, str]:
    """Every public key of ``folder/*.key``, with the name its file gives it (``agent-NAME.key``
    -> ``NAME``; the shared ``agent.key`` or ``client.key`` -> "")."""
    if not folder.is_dir():
        raise KeyFileError(f"the allow-list folder {folder} does not exist")
    out: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        stem = path.stem
        bound = stem.split("-", 1)[1] if "-" in stem else ""
        out[_load(path)[0]] = bound
    return out


def allow_lists(folder: Path) -> tuple[dict[bytes, str], dict[bytes, str]]:
    """The agent and client allow-lists of a dispatcher's key folder: ``agents/`` and ``clients/``
    where they exist, else the flat layout of a Secret volume (the module's docstring)."""
    if layout(folder) == "folders":
        return allow_list(folder / AGENTS_DIR), allow_list(folder / CLIENTS_DIR)
    return _flat(folder, AGENT), _flat(folder, CLIENT)


def layout(folder: Path) -> str:
    """``folders`` (``agents/``, ``clients/``) or ``flat``."""
    return "folders" if (folder / AGENTS_DIR).is_dir() or (folder / CLIENTS_DIR).is_dir() else "flat"


def _flat(folder: Path, role: str) -> dict[bytes, str]:
    if not folder.is_dir():
        raise KeyFileError(f"the key folder {folder} does not exist")
    out: dict[bytes, str] = {}
    for path in sorted([*folder.glob(f"{role}.key"), *folder.glob(f"{role}-*.key")]):
        out[_load(path)[0]] = path.stem.split("-", 1)[1] if "-" in path.stem else ""
    return out


def _load(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the key file {path}: {exc}") from exc
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path} does not hold Z85 CURVE keys")
    return public, secret


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """What the dispatcher reads from ``--keys DIR``: its pair and both allow-lists."""

    public: bytes
    secret: bytes
    agents: Mapping[bytes, str]
    """Agent public keys -> the node name a key is bound to ("" for the shared agent key)."""
    clients: Mapping[bytes, str]


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """What an agent or a client reads from ``--keys DIR``: its own pair and the dispatcher's
    public key, which it pins (it never talks to a server holding another)."""

    public: bytes
    secret: bytes
    server: bytes
    name: str
    """Which pair: ``agent``, ``agent-NODE``, ``client`` or ``client-NAME``."""


ENV: Final = "SAGA_KEYS"
"""The key folder, where no ``--keys`` or ``keys=`` is given (every entry point honours it)."""


def resolve_folder(given: str | os.PathLike[str] | None) -> Path | None:
    """The key folder to use: ``given``; None: ``$SAGA_KEYS`` if set; "" (or an unset
    ``SAGA_KEYS``): no keys."""
    if given is None:
        given = os.environ.get(ENV, "")
    return Path(given) if str(given) else None


def for_dispatcher(folder: Path) -> ServerKeys:
    public, secret = load_pair(folder, DISPATCHER)
    return ServerKeys(public, secret, *allow_lists(folder))


def for_agent(folder: Path, node_name: str) -> PeerKeys:
    """The node's own pair where there is one (``agent-NODE``), else the shared agent pair."""
    own = f"{AGENT}-{node_name}"
    name = own if (folder / f"{own}.key_secret").exists() else AGENT
    return PeerKeys(*load_pair(folder, name), load_public(folder, DISPATCHER), name)


def for_client(folder: Path, client: str | None = None) -> PeerKeys:
    """``client-NAME``'s pair if ``client`` is given, else the default client pair."""
    name = f"{CLIENT}-{client}" if client else CLIENT
    return PeerKeys(*load_pair(folder, name), load_public(folder, DISPATCHER), name)


def generate(folder: Path, nodes: Sequence[str] = (), clients: Sequence[str] = ()) -> list[Path]:
    """Write the key files (see the module's docstring); refuse to overwrite any."""
    import zmq.auth

    for name in (*nodes, *clients):
        if not _NAME.fullmatch(name):
            raise KeyFileError(f"{name!r} is not a valid name (lower-case letters, digits, '-' and '.')")
    pairs = [DISPATCHER, AGENT, CLIENT, *(f"{AGENT}-{n}" for n in nodes), *(f"{CLIENT}-{c}" for c in clients)]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    taken = [p for name in pairs for p in (folder / f"{name}.key", folder / f"{name}.key_secret") if p.exists()]
    if taken:
        raise KeyFileError(f"{taken[0]} exists already: generate into an empty folder, or remove the old keys first")
    written: list[Path] = []
    for sub in (AGENTS_DIR, CLIENTS_DIR):
        (folder / sub).mkdir(mode=0o700, exist_ok=True)
    for name in pairs:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
        secret.chmod(0o600)
        public.chmod(0o644)
        written += [public, secret]
        allowed = AGENTS_DIR if name.startswith(AGENT) else CLIENTS_DIR if name.startswith(CLIENT) else None
        if allowed is not None:
            copy = folder / allowed / public.name
            copy.write_bytes(public.read_bytes())
            copy.chmod(0o644)
            written.append(copy)
    return written


def main(argv: list[str]) -> int:
    """``saga-dispatch keys generate DIR [--node NAME]... [--client NAME]...``."""
    from dispatcher.runtime.args import role_parser

    parser = role_parser("keys", "generate CurveZMQ key pairs for the dispatcher, agents and clients")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="write a fresh set of key files into DIR")
    gen.add_argument("dir", type=Path, metavar="DIR")
    gen.add_argument("--node", action="append", default=[], metavar="NAME", help="a pair bound to this node name")
    gen.add_argument("--client", action="append", default=[], metavar="NAME", help="one more client pair")
    args = parser.parse_args(argv)
    written = generate(args.dir, args.node, args.client)
    print(f"wrote {len(written)} key files in {args.dir}:")
    for line in _summary(args.dir, args.node, args.client):
        print(f"  {line}")
    return 0


def _summary(folder: Path, nodes: Iterable[str], clients: Iterable[str]) -> list[str]:
    return [
        f"{DISPATCHER}.key_secret, {AGENTS_DIR}/, {CLIENTS_DIR}/: the dispatcher's (--keys {folder})",
        f"{AGENT}.key_secret + {DISPATCHER}.key: every agent's (the shared agent pair)",
        *(f"{AGENT}-{n}.key_secret + {DISPATCHER}.key: node {n}'s own" for n in nodes),
        f"{CLIENT}.key_secret + {DISPATCHER}.key: a client's",
        *(f"{CLIENT}-{c}.key_secret + {DISPATCHER}.key: client {c}'s" for c in clients),
    ]
