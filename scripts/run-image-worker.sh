#!/usr/bin/env bash
# Run one tile of a GisJob in the container image, the way a restricted worker pod runs it:
# uid 65532, read-only root filesystem with a tmpfs /tmp, memory limit = budget, no network,
# all capabilities dropped, runc with explicit ulimits (podman's defaults exceed this machine's
# hard limits).
#
#   scripts/run-image-worker.sh DATA_DIR JOB_FILE TILE [MEMORY]
#
# DATA_DIR is mounted at /data (it must be writable by uid 65532 for outputs); JOB_FILE is a
# path inside the container (e.g. /data/jobs/ndvi.yaml) whose paths point under /data. The
# result record is written to /data/result-TILE.json and printed. MEMORY defaults to 512m.
# GISJOB_IMAGE selects the image (default gisjob:<version>); build it with build-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
data=$(cd "$1" && pwd)
job=$2
tile=$3
memory=${4:-512m}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
image=${GISJOB_IMAGE:-gisjob:${version}}
rc=0
podman run --rm --runtime runc \
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --memory "$memory" --memory-swap "$memory" \
  --network none --read-only --tmpfs /tmp \
  --cap-drop all --security-opt no-new-privileges \
  -v "$data:/data" \
  "$image" worker --job "$job" --tile "$tile" --result "/data/result-$tile.json" || rc=$?
echo "exit code $rc; result record $data/result-$tile.json" >&2
exit "$rc"
