# syntax=docker/dockerfile:1
# The dispatcher's image: saga-dispatch[k8s] (pyzmq, msgpack, structlog, the kubernetes client)
# and nothing else: the dispatcher never unpickles a task, so no Parsl, SAGA or numpy.
#
#   uv run python k8s/wheelhouse.py            # build/wheelhouse/k8s, from uv.lock
#   podman build -t saga-dispatch:0.1.0 .      # or docker build; offline from here on
#
# BASE: any Debian-like image; a pinned tag by default. With no Python in it (debian:*-slim),
# python3 is installed from its own archive; a base that has it (docs/kubernetes.md: built with
# mmdebstrap for an offline build) is used as it is.
ARG BASE=docker.io/library/debian:13.2-slim

FROM ${BASE} AS runtime
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM runtime AS build
COPY build/wheelhouse/k8s/ /wheelhouse/
# Only the wheelhouse: versions and hashes as uv.lock pins them, no index.
RUN python3 -m venv /opt/saga \
    && /opt/saga/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --require-hashes --requirement /wheelhouse/requirements.txt \
    && /opt/saga/bin/pip install --no-cache-dir --no-index --no-deps /wheelhouse/saga_dispatch-*.whl \
    && /opt/saga/bin/pip uninstall --yes pip
# The kubernetes client's asyncio half (kubernetes.aio, and aiohttp with its family) is half its
# size and never imported: the Node watch is a thread on the synchronous client. Then bytecode for
# what the dispatcher imports, and only that (the root filesystem is read-only at run time).
ARG UNUSED="aiohttp aiohttp_retry aiohappyeyeballs aiosignal frozenlist multidict yarl propcache"
RUN site=$(/opt/saga/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -rf "${site:?}/kubernetes/aio" \
    && for name in $UNUSED; do rm -rf "${site:?}/$name" "${site:?}/$name"-*.dist-info; done \
    && find /opt/saga -name __pycache__ -prune -exec rm -rf {} + \
    && /opt/saga/bin/python -c "import dispatcher.cli, dispatcher.server.main, dispatcher.server.service, \
dispatcher.server.nodewatch, dispatcher.client.status, dispatcher.runtime.keys, kubernetes.client, \
kubernetes.config, kubernetes.watch, prometheus_client, prometheus_client.core; import sys; \
assert 'aiohttp' not in sys.modules"

FROM runtime
LABEL org.opencontainers.image.title="saga-dispatch" \
      org.opencontainers.image.description="The saga-dispatch dispatcher: SAGA-placed Parsl tasks over ZeroMQ" \
      org.opencontainers.image.source="https://github.com/saga-dispatch/saga-dispatch" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/saga /opt/saga
ENV PATH=/opt/saga/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric user, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 5560 5561 8080
ENTRYPOINT ["saga-dispatch"]
CMD ["dispatcher", "--help"]
