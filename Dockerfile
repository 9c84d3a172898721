# gisjob images, two targets from one distribution:
#   worker   (default): `gisjob` — planner, worker and finalizer pods, the data stack (GDAL via
#                       rasterio/pyogrio, Arrow, NumPy); no Kubernetes libraries
#   operator:           `gisjob-operator` — the control plane: kopf + kubernetes, gisjob's pure
#                       modules, no data stack (requirements/operator.lock)
#
#   Anywhere with registry access:  docker build -t gisjob:0.1.0 .
#                                   docker build --target operator -t gisjob-operator:0.1.0 .
#   Here (no registry):             bash scripts/build-image.sh   (builds both)
#
# scripts/build-image.sh bootstraps a Debian bookworm base with python3.11 (debootstrap) and
# passes it as BASE_IMAGE; the default below is the upstream image it stands in for. The
# Dockerfile only assumes `python3` (3.11, with venv/ensurepip) on PATH in the base.
#
# Package-index settings and a CA bundle for pip are optional build secrets, never layers:
#   --secret id=pipconf,src=<pip.conf>   used as PIP_CONFIG_FILE while building wheels
#   --secret id=pipca,src=<ca bundle>    refer to it from that pip.conf as /run/secrets/pipca
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/build-venv
WORKDIR /src

# Dependencies first (cached until pyproject.toml or the lock change): a stub README and empty
# source roots give a metadata-only build of gisjob whose wheel is thrown away; its dependencies'
# wheels stay, at the versions of requirements/runtime.lock (scripts/lock.py).
COPY pyproject.toml ./
COPY requirements/runtime.lock ./requirements/
RUN --mount=type=secret,id=pipconf \
    --mount=type=secret,id=pipca \
    --mount=type=cache,id=gisjob-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && mkdir -p worker operator && : > README.md \
    && /opt/build-venv/bin/pip wheel --constraint requirements/runtime.lock \
        --wheel-dir /wheels/deps . \
    && rm -rf /wheels/deps/gisjob-*.whl README.md worker operator build ./*.egg-info

# The operator's dependencies: the lock is their whole closure, pinned, so no resolution.
COPY requirements/operator.lock ./requirements/
RUN --mount=type=secret,id=pipconf \
    --mount=type=secret,id=pipca \
    --mount=type=cache,id=gisjob-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && /opt/build-venv/bin/pip wheel --no-deps --constraint requirements/operator.lock \
        --requirement requirements/operator.lock --wheel-dir /wheels/operator-deps

# The project itself: no network needed beyond the build backend (setuptools, wheel).
COPY README.md ./
COPY worker ./worker
COPY operator ./operator
RUN --mount=type=secret,id=pipconf \
    --mount=type=secret,id=pipca \
    --mount=type=cache,id=gisjob-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels/app . \
    && ls /wheels/deps /wheels/app

# ---------------------------------------------------------------------------------------------
# The runtime environments, from wheels only (offline), in stages of their own so that neither
# the wheels nor pip reach the final images. (COPY --from, not RUN --mount=type=bind,from=:
# buildah 1.28 mounts a cached stage's content wrongly or stale, buildah#4375 and #4522.)
# Dependencies: reused, down to the final image's layer, until pyproject.toml or a lock change.
FROM ${BASE_IMAGE} AS deps
COPY --from=builder /wheels/deps /wheels/deps
RUN python3 -m venv /opt/gisjob \
    && /opt/gisjob/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        /wheels/deps/*.whl \
    && /opt/gisjob/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

# gisjob itself, installed with a throw-away pip (`--python` drives the pip-less venv); its files
# are collected under /overlay so the final image adds them as one small layer.
FROM deps AS app
COPY --from=builder /wheels/app /wheels/app
# GISJOB_CACHE holds the worker's import baseline (memory.measured_baseline), measured here once
# per image instead of by two probe interpreters at every pod start (about 3 s each).
ENV GISJOB_CACHE=/opt/gisjob/cache
RUN python3 -m venv /tmp/pip-tool \
    && /tmp/pip-tool/bin/pip --python /opt/gisjob/bin/python3 install --no-index --no-cache-dir \
        --disable-pip-version-check --no-deps /wheels/app/gisjob-*.whl \
    && /tmp/pip-tool/bin/pip --python /opt/gisjob/bin/python3 check \
    && rm -rf /tmp/pip-tool \
    && /opt/gisjob/bin/python3 -c "from gisjob_worker.memory import measured_baseline as m; \
print('import baseline bytes: raster', m('raster'), 'vector', m('vector'))" \
    && mkdir /overlay \
    && cp -a --parents /opt/gisjob/lib/python3*/site-packages/gisjob[-_]* \
        /opt/gisjob/bin/gisjob /opt/gisjob/cache /overlay/

# The operator: kopf, kubernetes and gisjob's pure modules; gisjob is installed without its
# declared data-stack dependencies on purpose (`pip check` would list them: not run here).
FROM ${BASE_IMAGE} AS operator-deps
COPY --from=builder /wheels/operator-deps /wheels/operator-deps
RUN python3 -m venv /opt/gisjob \
    && /opt/gisjob/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        /wheels/operator-deps/*.whl \
    && /opt/gisjob/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && rm -rf /opt/gisjob/lib/python3*/site-packages/kubernetes/aio
# (kubernetes ships an asyncio copy of its whole client, 68 MB, that neither kopf nor the
# operator's synchronous client imports)

FROM operator-deps AS operator-app
COPY --from=builder /wheels/app /wheels/app
RUN python3 -m venv /tmp/pip-tool \
    && /tmp/pip-tool/bin/pip --python /opt/gisjob/bin/python3 install --no-index --no-cache-dir \
        --disable-pip-version-check --no-deps /wheels/app/gisjob-*.whl \
    && rm -rf /tmp/pip-tool \
    && /opt/gisjob/bin/gisjob-operator crd >/dev/null \
    && mkdir /overlay \
    && cp -a --parents /opt/gisjob/lib/python3*/site-packages/gisjob[-_]* \
        /opt/gisjob/bin/gisjob-operator /overlay/

# ---------------------------------------------------------------------------------------------
# What both images share: the non-root user and an environment for a read-only root filesystem
# (HOME=/tmp: the only writable place; pods mount an emptyDir there).
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 65532 gisjob \
    && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gisjob
ENV PATH=/opt/gisjob/bin:${PATH} \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /tmp

# ---------------------------------------------------------------------------------------------
FROM runtime AS operator
COPY --from=operator-deps /opt/gisjob /opt/gisjob
COPY --from=operator-app /overlay/ /
USER 65532:65532
ENTRYPOINT ["gisjob-operator"]
CMD ["--help"]
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gisjob-operator" \
      org.opencontainers.image.description="gisjob-operator: the Kubernetes control plane for GisJobs (no data stack)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="gisjob" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# ---------------------------------------------------------------------------------------------
# The worker image (default target, last): planner, worker and finalizer pods; `gisjob run`.
FROM runtime AS worker
COPY --from=deps /opt/gisjob /opt/gisjob
COPY --from=app /overlay/ /
ENV GISJOB_CACHE=/opt/gisjob/cache
USER 65532:65532
ENTRYPOINT ["gisjob"]
CMD ["--help"]

# Last, so a new revision does not invalidate the cached layers above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gisjob" \
      org.opencontainers.image.description="Memory-bounded geospatial batch jobs: gisjob worker, planner and finalizer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="gisjob" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
