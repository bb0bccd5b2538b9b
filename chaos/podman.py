"""The container lab: the real images, built from the real Dockerfiles, run with podman.

No Docker engine runs here; Debian's podman with runc does (``k8s/test/containers.conf`` holds
what this machine needs: runc, no rlimits raised, no systemd). The default base, Debian trixie
with its Python 3.13, is made offline-ready once with ``mmdebstrap`` (cached in
``build/images/``) and imported; the wheelhouses come from ``k8s/wheelhouse.py`` (``uv.lock``),
so the builds themselves reach no index.

    uv run python -m chaos.podman      # build the three images, print their sizes

``images()`` builds (or reuses) ``saga-dispatch`` (the root Dockerfile), ``saga-agent``
(``k8s/agent.Dockerfile`` with ``[worker]``) and ``saga-client`` (the same with ``[parsl]``: a
pod that runs Parsl programs with SagaDispatchExecutor).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
CONF: Final = ROOT / "k8s" / "test" / "containers.conf"
CACHE: Final = ROOT / "build" / "images"
BASE: Final = "localhost/saga-base:trixie"
SUITE: Final = "trixie"
PACKAGES: Final = "python3,python3-venv,ca-certificates"


def unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc mmdebstrap)"
    if os.geteuid() != 0:
        return "podman here needs root"
    return None


def podman(*args: str, check: bool = True, timeout_s: float = 900.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
    done = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def base() -> str:
    """The default base, Debian trixie with python3 (what ``debian:13.2-slim`` plus the
    Dockerfile's python3 install gives), as a local image."""
    if exists(BASE):
        return BASE
    tar = CACHE / f"{SUITE}-base.tar"
    if not tar.exists():
        if shutil.which("mmdebstrap") is None:
            raise RuntimeError("mmdebstrap is not installed (apt-get install mmdebstrap)")
        CACHE.mkdir(parents=True, exist_ok=True)
        if tar.is_dir():  # an earlier run's mmdebstrap wrote a folder where the tar goes
            shutil.rmtree(tar)
        partial = tar.with_suffix(".part")
        # --format: mmdebstrap guesses it from the name's suffix, and ".part" reads as a folder.
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={PACKAGES}", SUITE, str(partial)],
            check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        partial.rename(tar)
    podman("import", str(tar), BASE)
    return BASE


@dataclass(frozen=True, slots=True)
class Images:
    dispatcher: str
    agent: str
    client: str
    base: str


def wheelhouse(*extras: str) -> None:
    flags = [arg for extra in extras for arg in ("--extra", extra)]
    subprocess.run([sys.executable, str(ROOT / "k8s" / "wheelhouse.py"), *flags], check=True, capture_output=True)


def images(tag: str = "e2e") -> Images:
    """Build the three images on the default base (each build reuses podman's layer cache)."""
    base_image = base()
    wheelhouse("k8s")
    wheelhouse("worker")
    wheelhouse("worker", "parsl")
    built = Images(f"localhost/saga-dispatch:{tag}", f"localhost/saga-agent:{tag}", f"localhost/saga-client:{tag}",
                   base_image)  # fmt: skip
    arg = ["--build-arg", f"BASE={base_image}"]
    podman("build", *arg, "-t", built.dispatcher, "-f", str(ROOT / "Dockerfile"), str(ROOT))
    agent_file = str(ROOT / "k8s" / "agent.Dockerfile")
    podman("build", *arg, "-t", built.agent, "-f", agent_file, str(ROOT))
    wheels = ["--build-arg", "WHEELHOUSE=build/wheelhouse/parsl-worker"]
    podman("build", *arg, *wheels, "-t", built.client, "-f", agent_file, str(ROOT))
    return built


def size(image: str) -> int:
    """The image's size in bytes, as podman reports it (all layers, uncompressed)."""
    return int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())


def gateway(network: str = "podman") -> str:
    """The host's address on a podman network (where a container reaches the host)."""
    info = json.loads(podman("network", "inspect", network).stdout)[0]
    return str(info["subnets"][0]["gateway"])


def address(container: str) -> str:
    return podman("inspect", container, "--format", "{{.NetworkSettings.IPAddress}}").stdout.strip()


def main() -> int:
    why = unavailable()
    if why is not None:
        print(why, file=sys.stderr)
        return 1
    built = images()
    base_size = size(built.base)
    for image in (built.dispatcher, built.agent, built.client):
        over = size(image) - base_size
        print(f"{image}: {size(image) / 1e6:.1f} MB, {over / 1e6:.1f} MB over the base ({base_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
