#!/usr/bin/env bash
# Install gisjob into ./.venv (Python 3.11+), with the development tools.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
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
  -c requirements/runtime.lock -e ".[dev]"
echo "setup: gisjob installed in $(pwd)/.venv ($(.venv/bin/gisjob --version))"
