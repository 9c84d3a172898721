#!/usr/bin/env bash
# Install Debian's `prometheus` package (Prometheus 2.42 + promtool) for the monitoring tests
# and print promtool's path on the last line of stdout. Idempotent: when promtool and
# prometheus are already on PATH (or in /usr/bin) nothing is installed.
#
# The package's own service is not wanted (the tests start their own Prometheus on loopback):
# it is stopped and disabled if the package started one. Where there is no systemd (CI,
# containers) a policy-rc.d that denies starts is put in place for the install only.
#
#   bash scripts/install-prometheus.sh            # -> /usr/bin/promtool
#   PROMTOOL=$(bash scripts/install-prometheus.sh | tail -n 1)
set -euo pipefail

log() { echo "install-prometheus: $*" >&2; }

found() {
  local p
  p=$(command -v promtool 2>/dev/null || true)
  [ -z "$p" ] && [ -x /usr/bin/promtool ] && p=/usr/bin/promtool
  if [ -n "$p" ] && { command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; }; then
    echo "$p"
    return 0
  fi
  return 1
}

if p=$(found); then
  log "already installed: $("$p" --version 2>&1 | head -n 1)"
  echo "$p"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    log "prometheus is not installed and installing needs root (or passwordless sudo)"
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "prometheus is not installed and this machine has no apt-get"
  exit 1
fi

# Keep the package's init script from starting a daemon (only when no policy is set already).
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 0755 "$POLICY"
  ADDED_POLICY=1
fi
cleanup() {
  if [ "$ADDED_POLICY" = 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show prometheus >/dev/null 2>&1 \
  || [ -z "$(apt-cache policy prometheus | sed -n 's/^ *Candidate: //p' | grep -v none)" ]; then
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq
fi
log "apt-get install prometheus"
# no recommends: they would pull in (and start) node-exporter & co.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2

# Whatever started anyway: stop it and keep it from starting at boot.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
else
  if [ -x /etc/init.d/prometheus ]; then
    "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  # the package enables its unit for a later systemd boot; `systemctl disable` works offline
  if command -v systemctl >/dev/null 2>&1; then
    "${SUDO[@]}" systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
fi

if ! p=$(found); then
  log "the prometheus package installed no promtool"
  exit 1
fi
log "installed: $("$p" --version 2>&1 | head -n 1)"
echo "$p"
