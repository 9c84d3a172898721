#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, lint, type-check, test.
# Cluster tests need a Kubernetes API server: tests/cluster/setup_binaries.sh builds one
# from Debian's source package once and caches it outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check --output-format concise worker operator tests bench
.venv/bin/ruff format --check worker operator tests bench
echo "== mypy --strict"
.venv/bin/mypy
if [ -f tests/cluster/setup_binaries.sh ] && [ -z "${GISJOB_SKIP_CLUSTER:-}" ]; then
  echo "== control-plane binaries"
  KUBEBUILDER_ASSETS="$(bash tests/cluster/setup_binaries.sh | tail -n 1)"
  export KUBEBUILDER_ASSETS
fi
echo "== pytest"
.venv/bin/pytest -p no:cacheprovider "$@"
