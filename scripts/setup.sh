#!/usr/bin/env bash
# Install gisjob into ./.venv (Python 3.11+).
#   bash scripts/setup.sh            the runtime only (what the demo needs): gisjob + its
#                                    dependencies at the locked versions
#   bash scripts/setup.sh --dev      also the development tools the tests use (pytest, mypy,
#                                    ruff, hadolint, helm SDK, kopf/kubernetes, geopandas…)
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
case "${1:-}" in
  --dev) extras="[dev]" ;;
  "") ;;
  *) echo "setup: unknown option ${1} (use --dev or nothing)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); gisjob needs Python 3.11 or newer" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# runtime dependencies at the locked versions (requirements/runtime.lock, scripts/lock.py):
# the tests run with what the container image ships
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c requirements/runtime.lock -e ".${extras}"
echo "setup: gisjob${extras} installed in $(pwd)/.venv ($(.venv/bin/gisjob --version))"
