#!/usr/bin/env bash
# Build the gisjob container image (default tag gisjob:<version from pyproject.toml>) on a
# machine with no container-registry access, as root:
#   1. install Debian's buildah, podman, runc, debootstrap and helpers when missing;
#   2. bootstrap a minimal Debian bookworm base with python3.11 + venv + ca-certificates
#      (debootstrap, mirror read from this machine's apt sources at run time), cached as a
#      tarball outside the repository keyed by its recipe, imported into container storage as
#      localhost/gisjob-base:<key> and also tagged as the Dockerfile's default BASE_IMAGE;
#   3. buildah bud --isolation=chroot --layers, with this machine's pip index settings and CA
#      bundle passed as build secrets (never written into the repository or an image layer).
# Idempotent: a second run reuses the installed tools, the cached base and the layer cache.
#
# Environment: GISJOB_IMAGE (tag), GISJOB_CACHE_DIR (default ~/.cache/gisjob),
# GISJOB_DEBIAN_MIRROR / GISJOB_DEBIAN_SECURITY_MIRROR (override the mirrors read from apt),
# GISJOB_IMAGE_NO_SMOKE=1 (skip the final `gisjob --version` run of the image),
# GISJOB_IMAGE_KEEP_LAYERS=1 (do not prune the layers of superseded builds).
# The last line printed is the image reference.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
IMAGE=${GISJOB_IMAGE:-gisjob:${VERSION}}
OPERATOR_IMAGE=${GISJOB_OPERATOR_IMAGE:-gisjob-operator:${VERSION}}
CACHE_DIR=${GISJOB_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/gisjob}
SUITE=bookworm
BASE_PACKAGES="python3 python3-venv ca-certificates"
CACHE_TAG=localhost/gisjob-build-cache:${VERSION}
# What the Dockerfile builds FROM when no --build-arg BASE_IMAGE is given.
DOCKERFILE_BASE=$(sed -n 's/^ARG BASE_IMAGE=\(.*\)$/\1/p' Dockerfile | head -n 1)

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", (b - a) / 1e9 }'; }
T_START=$(now)
# Prefix buildah's STEP lines with the seconds since $1 (microseconds, from $EPOCHREALTIME).
stamp_steps() {
  local start=$1 line us
  while IFS= read -r line; do
    case $line in
      STEP* | \[*STEP* | COMMIT* | \[*COMMIT*)
        us=$((${EPOCHREALTIME/./} - start))
        printf '[%4d.%d s] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$line" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
}

[ "$(id -u)" = 0 ] || die "run as root (buildah with chroot isolation, debootstrap and apt need it)"
[ -n "$DOCKERFILE_BASE" ] || die "Dockerfile has no 'ARG BASE_IMAGE=<default>' line"

# --- 1. tools ---------------------------------------------------------------------------------
T=$(now)
TOOLS=(buildah podman runc debootstrap fuse-overlayfs uidmap slirp4netns
  containernetworking-plugins golang-github-containers-common iptables)
missing=()
for pkg in "${TOOLS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "tools: $(buildah --version | cut -d' ' -f1-3), $(podman --version), $(runc --version | head -n 1) [$(elapsed "$T")]"

# --- 2. base image ----------------------------------------------------------------------------
# The Debian archive and security mirrors this machine's apt uses (deb entries only).
apt_mirror() { # $1: awk regex on the suite
  # shellcheck disable=SC2016  # $(...) here is apt's own format syntax
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
    awk -v re="$1" '$2 ~ re { print $1; exit }'
}
MIRROR=${GISJOB_DEBIAN_MIRROR:-$(apt_mirror '^(bookworm|trixie|forky|sid|bullseye|stable|testing|unstable|oldstable)$')}
SECURITY_MIRROR=${GISJOB_DEBIAN_SECURITY_MIRROR:-$(apt_mirror '-security$')}
[ -n "$MIRROR" ] || die "no Debian mirror in this machine's apt sources; set GISJOB_DEBIAN_MIRROR"

# Writes the base root filesystem into $1. Its source is part of the cache key.
make_base_rootfs() {
  local root=$1 apt_opts=()
  debootstrap --variant=minbase --components=main "$SUITE" "$root" "$MIRROR" >"$root.debootstrap.log" 2>&1 ||
    { tail -n 30 "$root.debootstrap.log" >&2; return 1; }
  rm -f "$root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$MIRROR" "$SUITE" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$SECURITY_MIRROR" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$SECURITY_MIRROR" "$SUITE"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$root/etc/apt/sources.list.d/debian.sources"
  # Do not let package scripts start services; no recommends, no docs (like the slim images).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90gisjob-no-recommends"
  printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/90gisjob-nodoc"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then # for https mirrors, before ca-certificates
    cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt"
    apt_opts=(-o Acquire::https::CAInfo=/tmp/host-ca.crt)
  fi
  mount -t proc proc "$root/proc"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -euc 'apt-get "$@" update -qq && apt-get "$@" -y -qq upgrade &&
             apt-get "$@" -y -qq install '"$BASE_PACKAGES"' && apt-get clean' sh "${apt_opts[@]}" \
    >"$root.apt.log" 2>&1 || rc=$?
  umount "$root/proc"
  [ "$rc" = 0 ] || { tail -n 30 "$root.apt.log" >&2; return "$rc"; }
  rm -f "$root/usr/sbin/policy-rc.d" "$root/tmp/host-ca.crt"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* "$root"/debootstrap \
    "$root"/tmp/* "$root"/var/tmp/* "$root"/usr/share/doc/*/changelog* "$root"/usr/share/man/* \
    "$root"/usr/share/info/*
  find "$root" -name __pycache__ -type d -prune -exec rm -rf {} +
  : >"$root/etc/resolv.conf"
  printf 'gisjob-base\n' >"$root/etc/hostname"
  chroot "$root" python3 -c 'import ensurepip, ssl, venv'
}

# Every image built FROM the local base inherits this label: pruning is limited to them.
BASE_LABEL=dev.gisjob.image.local-base
IMPORT_CHANGES=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV LANG=C.UTF-8'
  --change 'CMD ["python3"]'
  --change "LABEL $BASE_LABEL=debootstrap-$SUITE-minbase"
)
RECIPE="suite=$SUITE packages=$BASE_PACKAGES import=${IMPORT_CHANGES[*]}
$(declare -f make_base_rootfs)"
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
BASE_TAG=localhost/gisjob-base:${SUITE}-py311-${KEY}
BASE_TAR=$CACHE_DIR/image-base-${KEY}.tar

T=$(now)
if podman image exists "$BASE_TAG"; then
  log "base: $BASE_TAG already in container storage"
else
  mkdir -p "$CACHE_DIR"
  if [ ! -s "$BASE_TAR" ]; then
    log "base: bootstrapping $SUITE ($BASE_PACKAGES) from the machine's Debian mirror"
    work=$(mktemp -d "$CACHE_DIR/base-build.XXXXXX")
    trap 'mountpoint -q "$work/rootfs/proc" && umount "$work/rootfs/proc"; rm -rf "$work"' EXIT
    make_base_rootfs "$work/rootfs"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/rootfs" -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    find "$CACHE_DIR" -maxdepth 1 -name 'image-base-*.tar' ! -name "${BASE_TAR##*/}" -delete
    rm -rf "$work"
    trap - EXIT
    log "base: cached $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1)) [$(elapsed "$T")]"
  else
    log "base: using cached $BASE_TAR"
  fi
  podman import --quiet "${IMPORT_CHANGES[@]}" \
    --message "gisjob base: debootstrap $SUITE minbase + $BASE_PACKAGES" \
    "$BASE_TAR" "$BASE_TAG" >/dev/null
fi
# Bases of earlier recipes: untag them (their layers go with the prune below).
podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/gisjob-base:' | grep -v -x -F "$BASE_TAG" |
  xargs -r podman untag >/dev/null 2>&1 || true
# Plain `buildah bud .` (no --build-arg) on this machine finds the local stand-in too.
podman tag "$BASE_TAG" "$DOCKERFILE_BASE"
log "base: $BASE_TAG (also tagged $DOCKERFILE_BASE) [$(elapsed "$T")]"

# --- 3. pip settings for the build, as secrets ------------------------------------------------
# The index settings this machine's pip uses, minus what only exists on this host (file://
# indexes, find-links directories, constraint files); the CA bundle pip trusts goes in as a
# second secret. Both live in a private temporary directory removed on exit.
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
chmod 700 "$secrets"
HOST_PY=python3
[ -x .venv/bin/python ] && HOST_PY=.venv/bin/python
"$HOST_PY" -m pip config list 2>/dev/null | "$HOST_PY" -c '
import ast, os, sys
values = {}  # option -> (rank, value); pip: command section over global, environment over both
rank = {"global": 0, "wheel": 1, ":env:": 2}
for line in sys.stdin:
    key, sep, raw = line.rstrip("\n").partition("=")
    if not sep or "." not in key:
        continue
    section, option = key.split(".", 1)
    if section not in rank:
        continue
    option = option.replace("_", "-")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw.strip("\x27\"")
    if option not in values or rank[section] >= values[option][0]:
        values[option] = (rank[section], value)
out, dropped = [], []
remote = lambda url: url.startswith(("http://", "https://"))
for option in ("index-url", "extra-index-url"):
    if option in values:
        urls = values[option][1].split()
        keep = [u for u in urls if remote(u)]
        dropped += [f"{option} {u}" for u in urls if not remote(u)]
        if keep:
            out.append(f"{option} = " + "\n    ".join(keep))
for option in ("trusted-host", "timeout", "default-timeout", "retries", "proxy", "client-cert"):
    if option in values:
        name = option.removeprefix("default-")
        out.append(f"{name} = {values[option][1]}")
for option in ("find-links", "constraint", "no-index", "requirement"):
    if option in values:
        dropped.append(f"{option} {values[option][1]}")
cert = values.get("cert", (0, ""))[1] or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(cert):
    out.append("cert = /run/secrets/pipca")
    with open(sys.argv[2], "w") as fh:
        fh.write(cert)
with open(sys.argv[1], "w") as fh:
    fh.write("[global]\n" + "\n".join(out) + "\n")
for item in dropped:
    print(f"build-image: pip: not passed to the build (host-local): {item}", file=sys.stderr)
' "$secrets/pip.conf" "$secrets/ca-path"
secret_args=(--secret "id=pipconf,src=$secrets/pip.conf")
if [ -s "$secrets/ca-path" ]; then
  cp "$(cat "$secrets/ca-path")" "$secrets/ca.crt"
  secret_args+=(--secret "id=pipca,src=$secrets/ca.crt")
fi
log "pip: passing $(grep -c '' "$secrets/pip.conf") lines of index settings$([ -f "$secrets/ca.crt" ] && echo ' and the CA bundle') as build secrets"

# --- 4. image ---------------------------------------------------------------------------------
T=$(now)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || REVISION="$REVISION-dirty"
CREATED=$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
BUILD_ARGS=(--isolation=chroot --layers --pull=never
  --build-arg "BASE_IMAGE=$BASE_TAG"
  --build-arg "VERSION=$VERSION"
  --build-arg "REVISION=$REVISION"
  --build-arg "CREATED=$CREATED"
  "${secret_args[@]}" -f Dockerfile)
# The intermediate stages are tagged too, so pruning dangling images below keeps their layer
# cache (dependency wheels, installed environment): only layers of superseded builds go.
for stage in builder deps app operator-deps operator-app runtime; do
  log "image: buildah bud --target $stage -t $CACHE_TAG-$stage [$(elapsed "$T")]"
  buildah bud "${BUILD_ARGS[@]}" --target "$stage" -t "$CACHE_TAG-$stage" . 2>&1 |
    stamp_steps "${EPOCHREALTIME/./}" >&2
done
log "image: buildah bud --target operator -t $OPERATOR_IMAGE [$(elapsed "$T")]"
buildah bud "${BUILD_ARGS[@]}" --target operator -t "$OPERATOR_IMAGE" . 2>&1 |
  stamp_steps "${EPOCHREALTIME/./}" >&2
log "image: buildah bud --target worker -t $IMAGE (isolation chroot, layer cache on) [$(elapsed "$T")]"
buildah bud "${BUILD_ARGS[@]}" --target worker -t "$IMAGE" . 2>&1 | stamp_steps "${EPOCHREALTIME/./}" >&2
if [ -z "${GISJOB_IMAGE_KEEP_LAYERS:-}" ]; then # superseded builds' layers: ~1 GB each
  pruned=$(podman image prune --force --filter "label=$BASE_LABEL" 2>/dev/null | grep -c . || true)
  [ "$pruned" = 0 ] || log "image: pruned $pruned superseded layer images [$(elapsed "$T")]"
fi
size_of() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }
log "image: built $IMAGE ($(size_of "$IMAGE")) and $OPERATOR_IMAGE ($(size_of "$OPERATOR_IMAGE")) [$(elapsed "$T")]"

if [ -z "${GISJOB_IMAGE_NO_SMOKE:-}" ]; then
  T=$(now)
  podman run --rm --runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --network none --read-only "$IMAGE" --version >&2
  podman run --rm --runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --network none --read-only "$OPERATOR_IMAGE" --help >/dev/null
  log "image: smoke run ok [$(elapsed "$T")]"
fi
log "done [$(elapsed "$T_START")]"
echo "$IMAGE"
