"""Key files: what `saga-dispatch keys generate` writes, and which secrets may be read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from dispatcher.runtime import keys

pytestmark = pytest.mark.unit


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_every_role_s_pair_and_the_allow_lists_as_public_keys_only(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.generate(folder, nodes=["node-a", "ip-10-0-0-1.ec2.internal"], clients=["alice"])
    assert _mode(folder) == 0o700
    pairs = ["dispatcher", "agent", "client", "agent-node-a", "agent-ip-10-0-0-1.ec2.internal", "client-alice"]
    for name in pairs:
        public, secret = keys.load_pair(folder, name)
        assert keys.load_public(folder, name) == public
        assert zmq.curve_public(secret) == public  # a real pair
        assert _mode(folder / f"{name}.key_secret") == 0o600
    publics = {name: keys.load_public(folder, name) for name in pairs}
    assert len(set(publics.values())) == len(pairs)  # no pair twice
    agents = keys.allow_list(folder / "agents")
    clients = keys.allow_list(folder / "clients")
    assert agents == {
        publics["agent"]: "",
        publics["agent-node-a"]: "node-a",
        publics["agent-ip-10-0-0-1.ec2.internal"]: "ip-10-0-0-1.ec2.internal",
    }
    assert clients == {publics["client"]: "", publics["client-alice"]: "alice"}
    for sub in ("agents", "clients"):  # the dispatcher's lists hold no secret, and no key of the other role
        assert not list((folder / sub).glob("*secret*"))
    assert publics["dispatcher"] not in agents and publics["dispatcher"] not in clients


def test_generate_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    keys.generate(tmp_path / "keys")
    before = keys.load_public(tmp_path / "keys", "dispatcher")
    with pytest.raises(keys.KeyFileError, match="exists already"):
        keys.generate(tmp_path / "keys")
    assert keys.load_public(tmp_path / "keys", "dispatcher") == before
    for bad in ("Node_A", "../etc", "-a", ""):
        with pytest.raises(keys.KeyFileError, match="not a valid name"):
            keys.generate(tmp_path / "other", nodes=[bad])


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    keys.generate(tmp_path / "keys")
    return tmp_path / "keys" / "agent.key_secret"


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o604, 0o644, 0o606])
def test_a_secret_open_to_group_or_others_is_refused(secret: Path, mode: int) -> None:
    secret.chmod(mode)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_pair(secret.parent, "agent")


def test_a_secret_of_ours_readable_by_us_alone_is_read(secret: Path) -> None:
    for mode in (0o600, 0o400):
        secret.chmod(mode)
        keys.check_secret(secret)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("mode", [0o440, 0o400])
def test_a_root_owned_read_only_secret_is_read_even_group_readable(secret: Path, mode: int) -> None:
    os.chown(secret, 0, 12345)  # a Kubernetes Secret volume with fsGroup: root-owned, group of the pod
    secret.chmod(mode)
    assert keys.load_pair(secret.parent, "agent")[0] == keys.load_public(secret.parent, "agent")


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_a_root_owned_secret_is_still_refused_world_readable_or_writable_by_its_group(secret: Path) -> None:
    os.chown(secret, 0, 12345)
    for mode in (0o444, 0o460, 0o640):
        secret.chmod(mode)
        with pytest.raises(keys.KeyFileError):
            keys.check_secret(secret)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_a_secret_of_another_user_is_refused(secret: Path) -> None:
    os.chown(secret, 12345, 12345)
    secret.chmod(0o600)
    with pytest.raises(keys.KeyFileError, match="belongs to uid 12345"):
        keys.check_secret(secret)


def test_missing_or_malformed_key_files_say_which(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="cannot read the secret key"):
        keys.load_pair(tmp_path, "agent")
    (tmp_path / "agent.key").write_text("not a certificate\n")
    with pytest.raises(keys.KeyFileError, match=r"agent\.key"):
        keys.load_public(tmp_path, "agent")
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.allow_list(tmp_path / "agents")


def test_the_command_writes_the_keys_and_says_what_each_is_for(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    argv = [sys.executable, "-m", "dispatcher", "keys", "generate", str(folder), "--node", "node-a"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    assert "wrote 11 key files" in out.stdout and "node node-a's own" in out.stdout
    again = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode != 0 and "exists already" in again.stderr


def test_each_role_reads_only_what_it_needs(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.generate(folder, nodes=["node-a"], clients=["alice"])
    dispatcher = keys.for_dispatcher(folder)
    assert dispatcher.public == keys.load_public(folder, "dispatcher")
    assert set(dispatcher.agents.values()) == {"", "node-a"} and set(dispatcher.clients.values()) == {"", "alice"}
    own = keys.for_agent(folder, "node-a")
    shared = keys.for_agent(folder, "node-b")  # no pair of its own: the shared one
    assert (own.name, shared.name) == ("agent-node-a", "agent")
    assert own.server == shared.server == dispatcher.public
    assert dispatcher.agents[own.public] == "node-a" and dispatcher.agents[shared.public] == ""
    assert keys.for_client(folder).name == "client" and keys.for_client(folder, "alice").name == "client-alice"
    # an agent's folder (a Kubernetes Secret of its role) needs its pair and the dispatcher's public key only
    agent_only = tmp_path / "agent-secret"
    agent_only.mkdir(mode=0o700)
    for name in ("agent.key", "agent.key_secret", "dispatcher.key"):
        (agent_only / name).write_bytes((folder / name).read_bytes())
        (agent_only / name).chmod(0o600)
    assert keys.for_agent(agent_only, "node-z").public == shared.public
    with pytest.raises(keys.KeyFileError, match=r"dispatcher\.key_secret"):
        keys.for_dispatcher(agent_only)  # not the dispatcher's: no secret, no allow-lists


def secret_volume(target: Path, files: dict[str, Path]) -> Path:
    """What the kubelet makes of a Secret: the files in a timestamped folder, ``..data`` linking
    to it, and one link per key at the top (no sub-folders: a Secret has none)."""
    stamp = target / "..2026_12_02_05_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, source in files.items():
        (stamp / name).write_bytes(source.read_bytes())
        (stamp / name).chmod(0o600)
        (target / name).symlink_to(Path("..data") / name)
    (target / "..data").symlink_to(stamp.name)
    return target


def test_the_dispatcher_reads_the_flat_layout_of_a_secret_volume(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.generate(folder, nodes=["node-a"], clients=["ci"])
    flat = secret_volume(
        tmp_path / "volume",
        {
            "dispatcher.key": folder / "dispatcher.key",
            "dispatcher.key_secret": folder / "dispatcher.key_secret",
            "agent.key": folder / "agents" / "agent.key",
            "agent-node-a.key": folder / "agents" / "agent-node-a.key",
            "client.key": folder / "clients" / "client.key",
            "client-ci.key": folder / "clients" / "client-ci.key",
        },
    )
    assert keys.layout(folder) == "folders" and keys.layout(flat) == "flat"
    assert keys.for_dispatcher(flat) == keys.for_dispatcher(folder)
    assert set(keys.for_dispatcher(flat).agents.values()) == {"", "node-a"}
