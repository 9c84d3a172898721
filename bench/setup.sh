#!/usr/bin/env bash
# Install the reference tools the benchmark compares against (Debian/Ubuntu):
#   gdal-bin      -> gdal_translate
#   python3-gdal  -> gdal_calc.py (GDAL's Python bindings, for the system python3)
# Optional, into the project venv (not project dependencies):
#   BENCH_PIP=1 bench/setup.sh   also pip-installs rioxarray + dask for the xarray comparison.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends gdal-bin python3-gdal

if [ "${BENCH_PIP:-0}" = "1" ]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    "${VENV:-$here/.venv}/bin/python" -m pip install rioxarray dask
fi

command -v gdal_translate && gdal_translate --version
command -v gdal_calc.py || echo "gdal_calc.py not on PATH (python3-gdal missing?)"
