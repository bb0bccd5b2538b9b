"""Build the wheelhouse the images install from: exactly what ``uv.lock`` pins, as wheels for
the image's Python, so ``podman build`` / ``docker build`` needs no package index.

    uv run python k8s/wheelhouse.py                                 # the dispatcher's: [k8s]
    uv run python k8s/wheelhouse.py --extra worker                  # an agent's: [worker]
    uv run python k8s/wheelhouse.py --extra worker --extra parsl    # a Parsl program's pod

It writes ``build/wheelhouse/<extras>/``: the project's own wheel (``uv build``), one wheel per
locked dependency that the target needs (``uv export --frozen`` says which, its markers
evaluated for ``--python``, default 3.13, the Python of the default base, Debian trixie, on
Linux ``--arch``), each downloaded from the URL the lock records and checked against the lock's
sha256; and ``requirements.txt``, every file pinned by that hash, for ``pip install
--require-hashes --no-index``. A package the lock has only as an sdist is built here, by that
Python where it is installed (uv's, or pyenv's), else only if it builds to a pure wheel.
Downloads are cached in ``~/.cache/saga-dispatch/wheels`` by hash.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "saga-dispatch" / "wheels"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra", action="append", default=None, help="extras of saga-dispatch (default: k8s)")
    parser.add_argument("--python", default="3.13", help="the image's Python (major.minor)")
    parser.add_argument("--arch", default=platform.machine(), help="the image's machine (x86_64, aarch64)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    extras = sorted(args.extra or ["k8s"])
    out = args.out or ROOT / "build" / "wheelhouse" / "-".join(extras)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    major, minor = (int(x) for x in args.python.split(".")[:2])
    wanted = pins(extras, (major, minor), args.arch)
    locked = {(canonicalize_name(p["name"]), p["version"]): p for p in _lock()["package"]}
    tags = _tags((major, minor), args.arch)
    for name, version in sorted(wanted):
        package = locked[name, version]
        wheel = _best_wheel(package.get("wheels", []), tags)
        if wheel is not None:
            _fetch(wheel["url"], wheel["hash"], out)
        else:
            _build(package, out, args.python)
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out)], cwd=ROOT, check=True, capture_output=True)
    (out / "requirements.txt").write_text(_requirements(out))
    print(f"{out}: {len(list(out.glob('*.whl')))} wheels for Python {args.python} on {args.arch}")
    return 0


def pins(extras: list[str], python: tuple[int, int], arch: str) -> set[tuple[str, str]]:
    """``(name, version)`` of every locked dependency the extras need on the target."""
    export = [
        "uv",
        "export",
        "--frozen",
        "--no-dev",
        "--no-emit-project",
        "--no-hashes",
        "--format",
        "requirements-txt",
    ]
    text = subprocess.run(
        [*export, *(f"--extra={e}" for e in extras)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    environment = {
        "python_version": f"{python[0]}.{python[1]}",
        "python_full_version": f"{python[0]}.{python[1]}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": arch,
    }
    wanted = set()
    for line in text.splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(environment):
            continue
        name, _, version = requirement.strip().partition("==")
        wanted.add((canonicalize_name(name), version))
    return wanted


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _tags(python: tuple[int, int], arch: str) -> list[Tag]:
    """What the image's pip accepts, best first (trixie's glibc is 2.41)."""
    platforms = [f"manylinux_2_{m}_{arch}" for m in range(41, 16, -1)] + [f"manylinux2014_{arch}", f"linux_{arch}"]
    abi = f"cp{python[0]}{python[1]}"
    return [*cpython_tags(python, [abi, "abi3", "none"], platforms), *compatible_tags(python, abi, platforms)]


def _best_wheel(wheels: list[dict[str, Any]], tags: list[Tag]) -> dict[str, Any] | None:
    rank = {tag: i for i, tag in enumerate(tags)}
    best: tuple[int, dict[str, Any]] | None = None
    for wheel in wheels:
        filename = wheel["url"].rsplit("/", 1)[-1]
        score = min((rank[t] for t in parse_wheel_filename(filename)[3] if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, wheel)
    return best[1] if best else None


def _fetch(url: str, expected: str, out: Path) -> Path:
    """``url`` into ``out``, from the cache where it is there; its sha256 must be the lock's."""
    algorithm, _, digest = expected.partition(":")
    assert algorithm == "sha256", expected
    filename = url.rsplit("/", 1)[-1]
    cached = CACHE / digest / filename
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as response, partial.open("wb") as f:  # noqa: S310 - the lock's https URLs
            shutil.copyfileobj(response, f)
        partial.rename(cached)
    if _sha256(cached) != digest:
        cached.unlink()
        raise SystemExit(f"{filename}: its sha256 is not the one uv.lock records")
    shutil.copy2(cached, out / filename)
    return out / filename


def _build(package: dict[str, Any], out: Path, python: str) -> None:
    """A package locked as an sdist only: its sdist (hash-checked), built into a wheel."""
    sdist = package.get("sdist")
    if sdist is None:
        raise SystemExit(f"{package['name']} {package['version']}: no wheel for the target and no sdist in uv.lock")
    staging = out / ".sdist"
    staging.mkdir(exist_ok=True)
    source = _fetch(sdist["url"], sdist["hash"], staging)
    interpreter = find_python(python) or sys.executable
    build = ["uvx", "--python", interpreter, "--from", "pip", "pip", "wheel", "--no-deps", "--wheel-dir", str(out)]
    before = set(out.glob("*.whl"))
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    shutil.rmtree(staging)
    for wheel in set(out.glob("*.whl")) - before:
        if wheel.name.endswith("-none-any.whl") or f"-cp{python.replace('.', '')}-" in wheel.name:
            continue
        if _compiled(wheel):
            wheel.unlink()
            raise SystemExit(
                f"{package['name']} has no wheel for Python {python} and builds a binary one ({wheel.name}) "
                f"with this Python: install Python {python} here (uv python install {python})"
            )
        # Built by another Python, tagged for it, but holding no compiled code (e.g. wfcommons,
        # whose setup.py says it is not pure): the same files serve any Python 3.
        retag = ["uvx", "--from", "wheel", "wheel", "tags", "--remove"]
        subprocess.run([*retag, "--python-tag", "py3", "--abi-tag", "none", "--platform-tag", "any", str(wheel)],
                       check=True, capture_output=True)  # fmt: skip


def _compiled(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as archive:
        return any(name.endswith((".so", ".pyd", ".dylib")) for name in archive.namelist())


def find_python(version: str) -> str | None:
    """An interpreter of ``version``: one uv manages or finds, else pyenv's (its shims hide the
    versions that are not selected)."""
    found = subprocess.run(["uv", "python", "find", version], capture_output=True, text=True, check=False)
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    for candidate in sorted(Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"), reverse=True):
        return str(candidate)
    return None


def _requirements(out: Path) -> str:
    """Every dependency's wheel, pinned by name, version and the hash of the file itself."""
    lines = ["# Written by k8s/wheelhouse.py from uv.lock: pip install --no-index --require-hashes -r this"]
    for wheel in sorted(out.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name == "saga-dispatch":
            continue
        lines.append(f"{name}=={version} --hash=sha256:{_sha256(wheel)}")
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
