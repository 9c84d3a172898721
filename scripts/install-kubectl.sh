#!/usr/bin/env bash
# Make sure `kubectl` is on PATH for the cluster tests and print its path on the last line of
# stdout. Idempotent: an existing kubectl (any version that talks to a 1.20 API server) is
# used as is; otherwise Debian's `kubernetes-client` (kubectl 1.20, the same source package
# as the dev cluster's API server) is installed with apt.
#
#   KUBECTL=$(bash scripts/install-kubectl.sh | tail -n 1)
set -euo pipefail

log() { echo "install-kubectl: $*" >&2; }

if p=$(command -v kubectl 2>/dev/null); then
  log "already installed: $p"
  echo "$p"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    log "kubectl is not installed and installing needs root (or passwordless sudo)"
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "kubectl is not installed and this machine has no apt-get"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ -z "$(apt-cache policy kubernetes-client 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v none)" ]; then
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq
fi
log "apt-get install kubernetes-client"
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends kubernetes-client >&2
p=$(command -v kubectl) || { log "kubernetes-client installed but kubectl is not on PATH"; exit 1; }
echo "$p"
