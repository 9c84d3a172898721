#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, lint, type-check, test.
# Cluster tests need a Kubernetes API server: tests/cluster/setup_binaries.sh builds one
# from Debian's source package once and caches it outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
echo "== ruff"
.venv/bin/ruff check --output-format concise worker operator tests bench scripts
.venv/bin/ruff format --check worker operator tests bench scripts
.venv/bin/hadolint Dockerfile
echo "== mypy --strict"
.venv/bin/mypy
if [ -f tests/cluster/setup_binaries.sh ] && [ -z "${GISJOB_SKIP_CLUSTER:-}" ]; then
  echo "== control-plane binaries, kubectl"
  KUBEBUILDER_ASSETS="$(bash tests/cluster/setup_binaries.sh | tail -n 1)"
  export KUBEBUILDER_ASSETS
fi
# The tools the tests call are installed here, so a missing one fails the run instead of
# turning into skipped tests (the tests still skip when run by hand without them).
echo "== helm, prometheus"
GISJOB_HELM="$(bash scripts/install-helm.sh | tail -n 1)"
export GISJOB_HELM
bash scripts/install-prometheus.sh >/dev/null
if [ -z "${GISJOB_SKIP_IMAGE:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== container image (scripts/build-image.sh; base and layers cached outside the repo)"
  image_log=$(mktemp)
  if bash scripts/build-image.sh >/dev/null 2>"$image_log"; then
    grep '^build-image:' "$image_log" || true
  else
    tail -n 80 "$image_log"
    echo "container image build failed (GISJOB_SKIP_IMAGE=1 skips it)" >&2
    exit 1
  fi
  rm -f "$image_log"
fi
echo "== import baselines (measured once per environment, cached in ~/.cache/gisjob)"
.venv/bin/python -c 'from gisjob_worker.memory import measured_baseline as m; print(m("raster"), m("vector"))'
# S3 tests fail rather than skip in CI when SeaweedFS (`weed`) is missing
export GISJOB_REQUIRE_S3=1
echo "== pytest"
.venv/bin/pytest -p no:cacheprovider "$@"
