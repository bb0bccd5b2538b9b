# syntax=docker/dockerfile:1
# The node agent's image: YOUR environment (the libraries your Parsl apps import) plus
# saga-dispatch[worker] (Parsl, to unpickle and run tasks), as HTEX's workers run in your image.
#
#   uv run python k8s/wheelhouse.py --extra worker
#   podman build -f k8s/agent.Dockerfile --build-arg BASE=registry.example.org/my-science:1.4 \
#       -t registry.example.org/saga-agent:0.1.0 .
#
# BASE must have Python (the same major.minor as the programs that submit: the dispatcher refuses
# a pinned task whose client's Python, Parsl or dill differ from the node's) and your libraries.
# saga-dispatch goes into a venv that sees the base's own packages (--system-site-packages), so
# nothing of yours is shadowed and an externally-managed system Python is left alone.
ARG BASE=docker.io/library/debian:13.2-slim

FROM ${BASE}
# The wheelhouse to install: saga-dispatch[worker] (add --extra parsl for a pod that runs Parsl
# programs with SagaDispatchExecutor: build/wheelhouse/parsl-worker).
ARG WHEELHOUSE=build/wheelhouse/worker
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY ${WHEELHOUSE}/ /tmp/wheelhouse/
RUN python3 -m venv --system-site-packages /opt/saga \
    && /opt/saga/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        --require-hashes --requirement /tmp/wheelhouse/requirements.txt \
    && /opt/saga/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheelhouse/saga_dispatch-*.whl \
    && rm -rf /tmp/wheelhouse \
    && /opt/saga/bin/python -c "import worker_agent.main, worker_agent.worker, parsl.serialize"
ENV PATH=/opt/saga/bin:$PATH \
    PYTHONUNBUFFERED=1
# Tasks write where the DaemonSet mounts a scratch emptyDir; the root filesystem is read-only.
ENV HOME=/scratch TMPDIR=/scratch
WORKDIR /scratch
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["saga-dispatch"]
CMD ["agent", "--help"]
