"""The overlay rendered, as ``kubectl kustomize`` renders it, and its objects looked up.

``render`` copies ``k8s/`` aside, writes fresh keys where the overlay's secretGenerator reads
them (``saga-dispatch keys generate``), and renders with ``kubectl kustomize`` where kubectl is
installed; without it, with :func:`kustomize`, which does the few things our kustomizations use
(resources, namespace, labels, images, secretGenerator with generatorOptions) and which a test
checks against kubectl wherever both exist.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from dispatcher.runtime import keys

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = Path("overlays") / "example"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def prepare(workdir: Path) -> Path:
    """A copy of ``k8s/`` with keys generated for the example overlay; returns the overlay."""
    copy = workdir / "k8s"
    shutil.copytree(ROOT / "k8s", copy, ignore=shutil.ignore_patterns("keys", "__pycache__"))
    keys.generate(copy / OVERLAY / "keys")
    return copy / OVERLAY


def render(workdir: Path, *, with_kubectl: bool | None = None) -> list[dict[str, Any]]:
    overlay = prepare(workdir)
    use = shutil.which("kubectl") is not None if with_kubectl is None else with_kubectl
    if use:
        out = subprocess.run(["kubectl", "kustomize", str(overlay)], check=True, capture_output=True, text=True).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]
    return kustomize(overlay)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects.extend(kustomize(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    options = spec.get("generatorOptions", {})
    for generator in spec.get("secretGenerator", []):
        data = {Path(f).name: base64.b64encode((folder / f).read_bytes()).decode() for f in generator["files"]}
        secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data}
        secret["metadata"] = {"name": generator["name"], "labels": dict(options.get("labels", {}))}
        assert options.get("disableNameSuffixHash"), "the fallback renderer does not hash names"
        objects.append(secret)
    namespace = spec.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if namespace and obj["kind"] == "ClusterRoleBinding":
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
        for group in spec.get("labels", []):
            meta.setdefault("labels", {}).update(group["pairs"])
        for image in spec.get("images", []):
            for container in containers(obj):
                name = container["image"].rsplit(":", 1)[0]
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return objects


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def secret_folder(secret: dict[str, Any], folder: Path) -> Path:
    """A Secret as the kubelet mounts it: its keys as files, read-only, in a flat folder."""
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    for key, value in secret["data"].items():
        path = folder / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o400 if key.endswith("_secret") else 0o444)
    return folder
