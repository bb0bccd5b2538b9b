"""The rendered overlay: Kubernetes' own schemas (strict), then what the schemas cannot say: the
node name from the Downward API, least RBAC, hardening, probes on the real endpoints, pinned
images, one Secret per role whose files the roles' own loaders read, and the Dockerfiles linted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from dispatcher.runtime import keys

from .manifests import ROOT, containers, find, kustomize, prepare, render, secret_folder

pytestmark = pytest.mark.integration

KUBERNETES = ("1.31.0", kubernetes_validate.latest_version())


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tmp_path_factory.mktemp("render"))


def flag(args: list[str], name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_object_validates_strictly(objects: list[dict[str, Any]], version: str) -> None:
    assert len(objects) == 12
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_fallback_renderer_renders_what_kubectl_does(tmp_path: Path) -> None:
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    ours = sorted(kustomize(prepare(tmp_path / "a")), key=key)
    theirs = sorted(render(tmp_path / "b", with_kubectl=True), key=key)
    assert [key(o) for o in ours] == [key(o) for o in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if a["kind"] != "Secret":  # fresh keys each time
            assert a == b, key(a)


def test_the_namespace_enforces_the_restricted_pod_security_standard(objects: list[dict[str, Any]]) -> None:
    labels = find(objects, "Namespace", "saga")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] not in ("Namespace", "ClusterRole",
            "ClusterRoleBinding")} == {"saga"}  # fmt: skip


def test_rbac_is_nodes_get_list_watch_for_the_dispatcher_only(objects: list[dict[str, Any]]) -> None:
    role = find(objects, "ClusterRole", "saga-dispatch-node-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    binding = find(objects, "ClusterRoleBinding", "saga-dispatch-node-reader")
    assert binding["roleRef"]["name"] == "saga-dispatch-node-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "saga-dispatcher", "namespace": "saga"}]
    assert [o["kind"] for o in objects].count("ClusterRole") == 1
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    dispatcher = find(objects, "Deployment", "saga-dispatcher")["spec"]["template"]["spec"]
    agent = find(objects, "DaemonSet", "saga-agent")["spec"]["template"]["spec"]
    assert dispatcher["serviceAccountName"] == "saga-dispatcher"
    assert "serviceAccountName" not in agent
    assert agent["automountServiceAccountToken"] is False


def test_the_agent_registers_under_its_node_s_name_and_has_time_to_drain(objects: list[dict[str, Any]]) -> None:
    daemonset = find(objects, "DaemonSet", "saga-agent")
    pod = daemonset["spec"]["template"]["spec"]
    [agent] = pod["containers"]
    [node_name] = [e for e in agent["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert agent["args"][:2] == ["--log-format=json", "agent"]
    assert flag(agent["args"], "dispatcher") == "tcp://saga-dispatcher:5561"
    assert pod["terminationGracePeriodSeconds"] >= float(flag(agent["args"], "drain-timeout")) + 10
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert not [t for t in pod.get("tolerations", []) if t.get("effect") == "NoExecute"]  # the controller adds them


def test_the_dispatcher_is_one_replica_recreated_watching_nodes_with_keys(objects: list[dict[str, Any]]) -> None:
    deployment = find(objects, "Deployment", "saga-dispatcher")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [dispatcher] = deployment["spec"]["template"]["spec"]["containers"]
    args = dispatcher["args"]
    assert args[:3] == ["--log-format=json", "dispatcher", "--watch-nodes"]
    assert flag(args, "keys") == "/keys"
    assert {m["mountPath"]: m["readOnly"] for m in dispatcher["volumeMounts"] if m["name"] == "keys"} == {"/keys": True}
    resources = dispatcher["resources"]
    assert resources["requests"] and resources["limits"]


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "saga-dispatcher"), ("DaemonSet", "saga-agent")])
def test_pods_are_hardened_and_probed_on_their_http_endpoints(
    objects: list[dict[str, Any]], kind: str, name: str
) -> None:
    pod = find(objects, kind, name)["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["fsGroup"] == context["runAsGroup"]
    for container in containers(find(objects, kind, name)):
        hardening = container["securityContext"]
        assert hardening["allowPrivilegeEscalation"] is False
        assert hardening["readOnlyRootFilesystem"] is True
        assert hardening["capabilities"] == {"drop": ["ALL"]}
        port = int(flag(container["args"], "http-port"))
        [http] = [p for p in container["ports"] if p["name"] == "http"]
        assert http["containerPort"] == port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    secrets = [v for v in pod["volumes"] if "secret" in v]
    assert all(v["secret"]["defaultMode"] == 0o440 for v in secrets)


def test_one_secret_per_role_and_each_role_reads_its_own(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    assert set(secrets) == {"saga-dispatcher-keys", "saga-agent-keys", "saga-client-keys"}
    assert not any(k.endswith("_secret") and not k.startswith(role) for name, s in secrets.items()
                   for role in [name.split("-")[1]] for k in s["data"])  # fmt: skip
    server = keys.for_dispatcher(secret_folder(secrets["saga-dispatcher-keys"], tmp_path / "dispatcher"))
    agent = keys.for_agent(secret_folder(secrets["saga-agent-keys"], tmp_path / "agent"), "any-node")
    client = keys.for_client(secret_folder(secrets["saga-client-keys"], tmp_path / "client"))
    assert agent.server == client.server == server.public  # both pin the real dispatcher
    assert server.agents == {agent.public: ""}  # the shared agent key, bound to no node
    assert server.clients == {client.public: ""}
    # Mounted where the pods say, by the names the pods say.
    for kind, name, secret in (("Deployment", "saga-dispatcher", "saga-dispatcher-keys"),
                               ("DaemonSet", "saga-agent", "saga-agent-keys")):  # fmt: skip
        volumes = find(objects, kind, name)["spec"]["template"]["spec"]["volumes"]
        assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == [secret]


def test_the_service_and_the_network_policy_name_ports_that_exist(objects: list[dict[str, Any]]) -> None:
    [dispatcher] = containers(find(objects, "Deployment", "saga-dispatcher"))
    named = {p["name"]: p["containerPort"] for p in dispatcher["ports"]}
    assert named == {"client": 5560, "agent": 5561, "http": 8080}
    service = find(objects, "Service", "saga-dispatcher")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        n: (port, n) for n, port in named.items()
    }
    annotations = find(objects, "Deployment", "saga-dispatcher")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"  # one scrape target: the dispatcher
    assert (int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"]) == (named["http"], "/metrics")
    agent_pod = find(objects, "DaemonSet", "saga-agent")["spec"]["template"]["metadata"]
    assert "prometheus.io/scrape" not in agent_pod.get("annotations", {})  # agents report through it
    policy = find(objects, "NetworkPolicy", "saga-dispatcher")
    allowed = {}
    for rule in policy["spec"]["ingress"]:
        [port] = rule["ports"]
        [peer] = rule["from"]
        allowed[port["port"]] = peer["podSelector"]["matchLabels"]
    assert allowed == {
        "agent": {"app.kubernetes.io/name": "saga-dispatch", "app.kubernetes.io/component": "agent"},
        "client": {"saga-dispatch.io/client": "true"},
        "http": {"saga-dispatch.io/scraper": "true"},
    }


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "k8s/agent.Dockerfile"])
def test_the_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    done = subprocess.run(["hadolint", str(ROOT / dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
