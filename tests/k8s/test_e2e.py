"""The cluster, from the manifests themselves, in real containers (podman + runc).

The overlay is rendered; the dispatcher's and the DaemonSet's container command, args and env
are taken from it and run exactly, in the images built from the real Dockerfiles: one agent
container per emulated node (``NODE_NAME`` from its ``fieldRef: spec.nodeName``), each Secret
mounted as the kubelet mounts it (root-owned, 0440, group = fsGroup), the Service name
resolving to the dispatcher. The fake API server serves HTTPS where the dispatcher's in-cluster
configuration looks for it (``KUBERNETES_SERVICE_HOST``, a token and CA mounted at the service
account path). The test GETs each probe as the kubelet would, then runs a Parsl program in a
client container (a pod): every task on its planned node with the right value; a cordoned node
takes no new work; a killed agent container is survived.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos import podman as lab
from chaos.kubeapi import FakeKubeAPI, node_object
from dispatcher import Client
from tests.integration.scrape import scrape, series

from .manifests import find, render

pytestmark = [pytest.mark.integration, pytest.mark.containers]

NODES = ("node-1", "node-2")
PREFIX = "saga-e2e-"
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
HERE = Path(__file__).resolve().parent

why = lab.unavailable()
if why is not None:
    pytest.skip(why, allow_module_level=True)


def until(what: Callable[[], bool], why: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def mount_secret(secret: dict[str, Any], folder: Path, fs_group: int) -> Path:
    """As the kubelet does: the keys as files in a timestamped folder, ``..data`` linking to it,
    one link per key; root-owned, ``defaultMode`` 0440, group ``fsGroup``."""
    stamp = folder / "..2026_12_02_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in secret["data"].items():
        path = stamp / key
        path.write_bytes(base64.b64decode(value))
        os.chown(path, 0, fs_group)
        path.chmod(0o440)
        (folder / key).symlink_to(Path("..data") / key)
    (folder / "..data").symlink_to(stamp.name)
    for d in (folder, stamp):
        os.chown(d, 0, fs_group)
        d.chmod(0o750)
    return folder


def run_args(container: dict[str, Any], env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The manifest's container, as podman flags (its env, its hardening) and its args."""
    flags: list[str] = []
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["name"] in env, f"{entry['name']} is set from {entry['valueFrom']}: the test must resolve it"
    for name, value in env.items():
        flags += ["--env", f"{name}={value}"]
    hardening = container["securityContext"]
    if hardening["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    if hardening["capabilities"]["drop"] == ["ALL"]:
        flags.append("--cap-drop=ALL")
    if not hardening["allowPrivilegeEscalation"]:
        flags.append("--security-opt=no-new-privileges")
    assert "command" not in container  # the image's ENTRYPOINT, as the manifest relies on
    return flags, list(container["args"])


class Cluster:
    def __init__(self, objects: list[dict[str, Any]], images: lab.Images, workdir: Path, api: FakeKubeAPI) -> None:
        self.objects, self.images, self.workdir, self.api = objects, images, workdir, api
        self.started: list[str] = []
        secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
        deployment = find(objects, "Deployment", "saga-dispatcher")["spec"]["template"]["spec"]
        daemonset = find(objects, "DaemonSet", "saga-agent")["spec"]["template"]["spec"]
        self.dispatcher_pod, self.agent_pod = deployment, daemonset
        self.keys = {
            role: mount_secret(secrets[f"saga-{role}-keys"], workdir / f"{role}-keys", group)
            for role, group in (
                ("dispatcher", deployment["securityContext"]["fsGroup"]),
                ("agent", daemonset["securityContext"]["fsGroup"]),
                ("client", 10001),
            )
        }
        sa = workdir / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text(api.token)
        (sa / "namespace").write_text("saga")
        assert api.ca_file is not None
        (sa / "ca.crt").write_bytes(api.ca_file.read_bytes())
        for path in (sa, *sa.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.serviceaccount = sa
        self.dispatcher_ip = ""

    def _user(self, pod: dict[str, Any]) -> list[str]:
        context = pod["securityContext"]
        return ["--user", f"{context['runAsUser']}:{context['runAsGroup']}", "--group-add", str(context["fsGroup"])]

    def start_dispatcher(self) -> None:
        [container] = self.dispatcher_pod["containers"]
        env = {"KUBERNETES_SERVICE_HOST": lab.gateway(), "KUBERNETES_SERVICE_PORT": self.api.url.rsplit(":", 1)[1]}
        flags, args = run_args(container, env)
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        volumes = ["-v", f"{self.keys['dispatcher']}:/keys:ro", "-v", f"{self.serviceaccount}:{SA_PATH}:ro"]
        assert mounts == ["/keys", "/tmp"]
        name = PREFIX + "dispatcher"
        lab.podman("run", "-d", "--name", name, *self._user(self.dispatcher_pod), *flags, *volumes,
                   "--tmpfs", "/tmp", self.images.dispatcher, *args)  # fmt: skip
        self.started.append(name)
        self.dispatcher_ip = lab.address(name)

    def start_agent(self, node: str) -> str:
        [container] = self.agent_pod["containers"]
        flags, args = run_args(container, {"NODE_NAME": node})  # fieldRef spec.nodeName, resolved
        cpus = str(container["resources"]["limits"]["cpu"])
        name = PREFIX + node
        lab.podman("rm", "-f", name, check=False)
        lab.podman("run", "-d", "--name", name, "--hostname", node, *self._user(self.agent_pod), *flags,
                   "--cpus", cpus, "--add-host", f"saga-dispatcher:{self.dispatcher_ip}",
                   "-v", f"{self.keys['agent']}:/keys:ro", "--tmpfs", "/scratch:mode=1777",
                   self.images.agent, *args)  # fmt: skip
        if name not in self.started:
            self.started.append(name)
        return lab.address(name)

    def client(self) -> Client:
        return Client(f"tcp://{self.dispatcher_ip}:5560", keys=self.keys["client"])

    def workflow(self, tasks: int, sleep_s: float, name: str = "client", detach: bool = False) -> str:
        """Run the Parsl program in a client container (a pod with the client Secret)."""
        container = PREFIX + name
        lab.podman("rm", "-f", container, check=False)
        flags = ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--user", "10001:10001",
                 "--group-add", "10001", "--tmpfs", "/scratch:mode=1777",
                 "--env", "SAGA_ADDRESS=tcp://saga-dispatcher:5560", "--env", "SAGA_KEYS=/keys",
                 "--add-host", f"saga-dispatcher:{self.dispatcher_ip}",
                 "-v", f"{self.keys['client']}:/keys:ro", "-v", f"{HERE / 'workflow.py'}:/work/workflow.py:ro"]  # fmt: skip
        self.started.append(container)
        argv = ["run", *(["-d"] if detach else []), "--name", container, *flags, "--entrypoint", "python3",
                self.images.client, "/work/workflow.py", str(tasks), str(sleep_s)]  # fmt: skip
        return lab.podman(*argv, timeout_s=600).stdout

    def results(self, name: str = "client") -> list[dict[str, Any]]:
        container = PREFIX + name
        lab.podman("wait", container, timeout_s=600)
        logs = lab.podman("logs", container).stdout
        return list(json.loads(logs.strip().splitlines()[-1]))

    def close(self) -> None:
        for name in reversed(self.started):
            lab.podman("rm", "-f", "-t", "5", name, check=False)


@pytest.fixture(scope="module")
def images() -> lab.Images:
    return lab.images()


@pytest.fixture
def cluster(images: lab.Images, tmp_path: Path) -> Iterator[Cluster]:
    objects = render(tmp_path / "render")
    gateway = lab.gateway()
    # Every interface: the bridge (and its gateway address) exists only while a container runs.
    with FakeKubeAPI(host="0.0.0.0", tls_dir=tmp_path / "tls", token="e2e-token", tls_names=(gateway,)) as api:
        for node in NODES:
            api.put(node_object(node))
        c = Cluster(objects, images, tmp_path, api)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                for name in c.started:
                    print(f"--- {name}\n" + lab.podman("logs", "--tail", "30", name, check=False).stderr)
            c.close()


def test_the_manifests_run_a_parsl_workflow_on_the_planned_nodes_and_survive_cordon_and_loss(
    cluster: Cluster,
) -> None:
    cluster.start_dispatcher()
    http = f"http://{cluster.dispatcher_ip}:8080"
    until(lambda: http_status(http + "/readyz") == 200, "the dispatcher never became ready")
    assert http_status(http + "/healthz") == 200
    cluster.api.wait_watching(timeout_s=60)  # in-cluster config, token and CA: its Node watch is on
    watch = [q for path, q in cluster.api.requests if path == "/api/v1/nodes"]
    assert watch and watch[-1].get("watch") == "true"

    agents = {node: cluster.start_agent(node) for node in NODES}
    for node, ip in agents.items():
        until(lambda ip=ip: http_status(f"http://{ip}:8081/readyz") == 200, f"the agent of {node} never became ready")
        assert http_status(f"http://{ip}:8081/healthz") == 200
    with cluster.client() as client:
        until(lambda: sorted(n.node_name for n in client.nodes() if n.state == "alive") == list(NODES), "no nodes")
        slots = {n.node_name: n.slots for n in client.nodes()}
        assert slots == dict.fromkeys(NODES, 2)  # the agents' CPU limit (cgroup quota), from the manifest
        assert all(n.versions.startswith("python=3.13.") for n in client.nodes())  # the default base's Python

        # 1. A workflow: every task on its planned node, values right.
        run = json.loads(cluster.workflow(12, 0.2).strip().splitlines()[-1])
        assert [r["value"] for r in run] == [i * i for i in range(12)]
        assert all(r["node"] == r["ran_on"] == r["planned"] == r["first_planned"] for r in run), run
        assert {r["node"] for r in run} <= set(NODES)

        # 2. Cordon node-1: it drains, and new work goes to node-2 only.
        cluster.api.put(node_object("node-1", cordoned=True))
        until(lambda: [(n.state, n.reason) for n in client.nodes() if n.node_name == "node-1"]
              == [("draining", "cordoned")], "the cordon never reached the dispatcher")  # fmt: skip
        run = json.loads(cluster.workflow(8, 0.1).strip().splitlines()[-1])
        assert [r["value"] for r in run] == [i * i for i in range(8)]
        assert {r["node"] for r in run} == {"node-2"}
        cluster.api.put(node_object("node-1"))
        until(lambda: all(n.state == "alive" for n in client.nodes()), "the uncordon never reached the dispatcher")

        # 3. Kill node-2's agent container while it runs tasks: everything still resolves, once.
        cluster.workflow(12, 2.0, name="client-loss", detach=True)
        until(lambda: any(n.node_name == "node-2" and n.in_flight for n in client.nodes()), "node-2 got no work")
        lab.podman("kill", PREFIX + "node-2")
        until(lambda: any(n.node_name == "node-2" and n.state == "dead" for n in client.nodes()), "no death seen")
        run = cluster.results("client-loss")
        assert [r["value"] for r in run] == [i * i for i in range(12)]
        assert all(r["node"] == r["ran_on"] for r in run)
        assert {r["node"] for r in run} >= {"node-1"}
        # The DaemonSet brings the agent back; it registers under its node's name again.
        cluster.start_agent("node-2")
        until(lambda: any(n.node_name == "node-2" and n.state == "alive" for n in client.nodes()), "no comeback")
    # The dispatcher's image serves /metrics on the port its pod annotations name: the death and the cordon are in it.
    samples = scrape(http)
    assert series(samples, "saga_dispatch_node_deaths_total", "node", "reason") == {("node-2", "heartbeat"): 1}
    assert series(samples, "saga_dispatch_node_drains_total", "node", "reason") == {("node-1", "cordoned"): 1}
    assert sum(series(samples, "saga_dispatch_tasks_resolved_total", "node").values()) >= 12 + 8 + 12
