# gisjob worker + operator image: one distribution, two entry points (gisjob, gisjob-operator).
#
#   Anywhere with registry access:  docker build -t gisjob:0.1.0 .   (or: buildah bud --layers ...)
#   Here (no registry):             bash scripts/build-image.sh
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

# Dependencies first (cached until pyproject.toml changes): a stub README and empty source roots
# give a metadata-only build of gisjob whose wheel is thrown away; its dependencies' wheels stay.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pipconf \
    --mount=type=secret,id=pipca \
    --mount=type=cache,id=gisjob-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && mkdir -p worker operator && : > README.md \
    && /opt/build-venv/bin/pip wheel --wheel-dir /wheels . \
    && rm -rf /wheels/gisjob-*.whl README.md worker operator build ./*.egg-info

# The project itself: no network needed beyond the build backend (setuptools, wheel).
COPY README.md ./
COPY worker ./worker
COPY operator ./operator
RUN --mount=type=secret,id=pipconf \
    --mount=type=secret,id=pipca \
    --mount=type=cache,id=gisjob-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && ls /wheels

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# Wheels only, from the builder stage through a bind mount (no copy of them stays in a layer);
# offline (--no-index); pip and setuptools are removed from the runtime environment afterwards.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/gisjob \
    && /opt/gisjob/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /wheels /wheels/gisjob-*.whl \
    && /opt/gisjob/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && rm -rf /root/.cache \
    && groupadd --gid 65532 gisjob \
    && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gisjob

# HOME=/tmp: the only writable place under a read-only root filesystem (pods mount an emptyDir).
# GISJOB_CACHE holds the worker's measured import baseline (memory.measured_baseline), measured
# here once per image instead of by two probe interpreters at every pod start (~3 s each).
ENV PATH=/opt/gisjob/bin:${PATH} \
    HOME=/tmp \
    GISJOB_CACHE=/opt/gisjob/cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
RUN python3 -c "from gisjob_worker.memory import measured_baseline as m; \
print('import baseline bytes: raster', m('raster'), 'vector', m('vector'))" \
    && chmod -R a+rX /opt/gisjob/cache
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["gisjob"]
CMD ["--help"]

# Last, so a new revision does not invalidate the cached layers above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gisjob" \
      org.opencontainers.image.description="Memory-bounded geospatial batch jobs: gisjob worker and gisjob-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="gisjob" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
