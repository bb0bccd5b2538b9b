"""Kubernetes: how soon the cluster's word takes effect, and what the images weigh.

* Event-to-effect latency of a cordon and of a Node deletion: a real dispatcher with
  ``--watch-nodes``, its real ``kubernetes`` client watching the fake API server
  (``chaos/kubeapi.py``); the clock starts when the test changes the Node in the API and stops
  when a client holds the dispatcher's NODE_CHANGED for it (the same step in which the node stops
  taking work). Target: under 0.5 s.
* The images' sizes, built from the real Dockerfiles with podman on the default base (Debian
  trixie with its Python 3.13), over that base. Target for the dispatcher: at most 80 MB.
"""

from __future__ import annotations

import queue
import tempfile
import time
from pathlib import Path

from bench.stats import markdown, median, percentile
from chaos import podman as lab
from chaos.kubeapi import FakeKubeAPI, node_object
from dispatcher import protocol as p
from dispatcher.local import LocalCluster


def _wait(notices: queue.SimpleQueue[tuple[float, p.NodeChanged]], node: str, state: str) -> float:
    deadline = time.monotonic() + 60
    while True:
        at, notice = notices.get(timeout=max(0.1, deadline - time.monotonic()))
        if notice.node_name == node and notice.state == state:
            return at


def latencies(trials: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cordon": [], "uncordon": [], "delete": []}
    with tempfile.TemporaryDirectory() as tmp, FakeKubeAPI() as api:
        for name in ("local-0", "local-1"):
            api.put(node_object(name))
        kubeconfig = api.kubeconfig(Path(tmp) / "kubeconfig")
        env = {"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
        with LocalCluster(2, dispatcher_args=["--watch-nodes"], dispatcher_env=env) as cluster, cluster.client() as c:
            api.wait_watching()
            notices: queue.SimpleQueue[tuple[float, p.NodeChanged]] = queue.SimpleQueue()
            c.on_node_change(lambda n: notices.put((time.perf_counter(), n)))
            for _ in range(trials):
                started = time.perf_counter()
                api.put(node_object("local-0", cordoned=True))
                out["cordon"].append(_wait(notices, "local-0", "draining") - started)
                started = time.perf_counter()
                api.put(node_object("local-0"))
                out["uncordon"].append(_wait(notices, "local-0", "alive") - started)
            for _ in range(max(1, trials // 4)):
                started = time.perf_counter()
                api.delete("local-1")
                out["delete"].append(_wait(notices, "local-1", "gone") - started)
                api.put(node_object("local-1"))
                _wait(notices, "local-1", "alive")  # its agent registers again (it retries with backoff)
    return out


def event_to_effect(trials: int) -> str:
    rows = []
    for what, values in latencies(trials).items():
        ms = [v * 1000 for v in values]
        rows.append([what, len(ms), f"{median(ms):.1f}", f"{percentile(ms, 95):.1f}", f"{max(ms):.1f}"])
    table = markdown(["API event", "trials", "p50 ms", "p95 ms", "max ms"], rows)
    return "### Kubernetes: Node event to effect (target < 500 ms)\n\n" + table


def image_sizes() -> str:
    why = lab.unavailable()
    if why is not None:
        return f"### Image sizes\n\n(skipped: {why})"
    built = lab.images("bench")
    base = lab.size(built.base)
    rows = [
        [image.split("/")[-1], f"{lab.size(image) / 1e6:.1f}", f"{(lab.size(image) - base) / 1e6:.1f}"]
        for image in (built.dispatcher, built.agent, built.client)
    ]
    table = markdown(["image", "size MB", "over the base MB"], rows)
    return (
        f"### Image sizes (base: Debian trixie + python3, {base / 1e6:.1f} MB; dispatcher target <= 80 MB)\n\n" + table
    )


def kubernetes(trials: int, images: bool = True) -> str:
    """``images=False`` (``--quick``, CI): the latencies only; CI's end-to-end test builds and
    runs the images already, and building them again would cost minutes of its budget."""
    return event_to_effect(trials) + ("\n\n" + image_sizes() if images else "")
