"""Build the wheelhouse the images install from: exactly the versions ``uv.lock`` pins, as wheels
for the image's Python, so ``podman build`` / ``docker build`` needs no package index.

    uv run python k8s/wheelhouse.py                  # the dispatcher's: saga-dispatch[k8s]
    uv run python k8s/wheelhouse.py --extra worker   # an agent's: saga-dispatch[worker]

It writes ``build/wheelhouse/<role>/`` (``--out``): ``requirements.txt`` (``uv export --frozen``,
hashes kept, so the install is checked against the lock), the project's own wheel (``uv build``)
and every dependency as a binary wheel for ``--python`` (default 3.13, the Python of the default
base, Debian trixie) on ``--platform`` (default this machine's, as manylinux). A dependency with
no wheel on the index (an sdist only) is built into one here first, with that Python if it is
installed (``uv python find``), so the result still installs offline.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra", action="append", default=None, help="extras of saga-dispatch (default: k8s)")
    parser.add_argument("--python", default="3.13", help="the image's Python (major.minor)")
    parser.add_argument("--arch", default=platform.machine(), help="the image's machine (x86_64, aarch64)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    extras = args.extra or ["k8s"]
    out = args.out or ROOT / "build" / "wheelhouse" / "-".join(extras)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    requirements = out / "requirements.txt"
    export = ["uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--format", "requirements-txt"]
    subprocess.run(
        [*export, *(f"--extra={e}" for e in extras), "-o", str(requirements)], cwd=ROOT, check=True, capture_output=True
    )
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out)], cwd=ROOT, check=True, capture_output=True)

    abi = "cp" + args.python.replace(".", "")
    arch = args.arch
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in (41, 39, 36, 34, 31, 28, 17)]
    platforms += [f"manylinux2014_{arch}", "any"]  # trixie's glibc is 2.41
    download = [
        *pip(), "download", "--dest", str(out), "--requirement", str(requirements), "--only-binary=:all:",
        "--python-version", args.python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
        *(arg for p in platforms for arg in ("--platform", p)),
    ]  # fmt: skip
    done = subprocess.run(download, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        missing = _without_wheels(done.stderr)
        if not missing:
            sys.stderr.write(done.stderr)
            return done.returncode
        _build_from_sdists(missing, out, args.python)
        pinned = [line for line in requirements.read_text().splitlines() if _name(line) not in missing]
        rest = out / "requirements-binary.txt"
        rest.write_text("\n".join(pinned) + "\n")
        download[download.index(str(requirements))] = str(rest)
        subprocess.run(download, check=True)
    wheels = sorted(p.name for p in out.glob("*.whl"))
    print(f"{out}: {len(wheels)} wheels for Python {args.python} on {arch}")
    return 0


def pip() -> list[str]:
    """pip, from this interpreter if it has it, else through uv (pip is not in the dev env)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0:
        return [sys.executable, "-m", "pip"]
    return ["uvx", "--from", "pip", "pip"]


def _name(requirement: str) -> str:
    return requirement.split("==", 1)[0].strip().lower() if "==" in requirement else ""


def _without_wheels(stderr: str) -> set[str]:
    """The packages pip found no wheel for (``No matching distribution found for NAME==V``)."""
    marker = "No matching distribution found for "
    found = (line.split(marker, 1)[1] for line in stderr.splitlines() if marker in line)
    return {rest.split("==", 1)[0].strip().lower() for rest in found}


def _build_from_sdists(names: set[str], out: Path, python: str) -> None:
    found = subprocess.run(["uv", "python", "find", python], capture_output=True, text=True, check=False)
    interpreter = found.stdout.strip()
    if found.returncode != 0 or not interpreter:  # a wheel built by another Python may not load in the image's
        raise SystemExit(f"no wheel on the index for {sorted(names)}, and no Python {python} here to build one")
    pins = {
        _name(line): line.split(";", 1)[0].split("\\", 1)[0].strip()
        for line in (out / "requirements.txt").read_text().splitlines()
        if _name(line) in names
    }
    build = ["uvx", "--python", interpreter, "--from", "pip", "pip", "wheel", "--no-deps", "--wheel-dir", str(out)]
    for pin in sorted(pins.values()):
        subprocess.run([*build, pin], check=True)


if __name__ == "__main__":
    raise SystemExit(main())
