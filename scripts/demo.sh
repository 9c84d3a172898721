#!/usr/bin/env bash
# Fresh machine to a finished demo job: install, write demo data, run the NDVI job locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/gisjob demo demo
.venv/bin/gisjob run demo/jobs/ndvi.yaml
