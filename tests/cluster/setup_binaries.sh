#!/usr/bin/env bash
# Provide etcd, kube-apiserver and kube-controller-manager for the dev cluster, and make sure
# kubectl is on PATH for the cluster tests (Debian's kubernetes-client when it is missing).
#
# Idempotent. The LAST line printed on stdout is the directory holding the three
# binaries (everything else goes to stderr), so callers can do:
#
#     BIN="$(bash tests/cluster/setup_binaries.sh | tail -n1)"
#
# Resolution order:
#   1. $KUBEBUILDER_ASSETS, if it holds all three binaries (envtest convention);
#   2. the cache ${GISJOB_CACHE:-$HOME/.cache/gisjob}/k8s-<version>/bin;
#   3. a build from Debian's `kubernetes` source package (1.20.2) with Debian's
#      golang-go, etcd from Debian's etcd-server. Takes minutes on a cold machine.
#
# Environment:
#   GISJOB_CACHE        cache root (default $HOME/.cache/gisjob)
#   GISJOB_NO_BUILD=1   never install or build; fail if nothing usable is found
#   GISJOB_BUILD_JOBS   parallel Go compile jobs (default: nproc)
set -euo pipefail

log() { printf '[setup_binaries] %s\n' "$*" >&2; }
die() { printf '[setup_binaries] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

# ensure_command CMD PACKAGE: install Debian's PACKAGE when CMD is not on PATH.
ensure_command() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ "${GISJOB_NO_BUILD:-0}" == 1 ]] && die "$1 not installed and GISJOB_NO_BUILD=1"
    log "installing Debian $2 (for $1)"
    as_root apt-get install -y --no-install-recommends "$2" >&2 \
        || { as_root apt-get update >&2 && as_root apt-get install -y --no-install-recommends "$2" >&2; }
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

# The cluster tests drive the API server with kubectl too; the dev cluster makes its
# certificates (and the test kubelet its serving certificate) with openssl; the operator tests
# hide the data folder from the operator in a mount namespace (unshare, nsenter).
ensure_command kubectl kubernetes-client
ensure_command openssl openssl
ensure_command unshare util-linux
ensure_command nsenter util-linux

has_all() {
    local d="$1"
    [[ -n "$d" && -x "$d/etcd" && -x "$d/kube-apiserver" && -x "$d/kube-controller-manager" ]]
}

# 1. KUBEBUILDER_ASSETS --------------------------------------------------------
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if has_all "$KUBEBUILDER_ASSETS"; then
        log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
        echo "$KUBEBUILDER_ASSETS"
        exit 0
    fi
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks etcd/kube-apiserver/kube-controller-manager; ignoring"
fi

CACHE="${GISJOB_CACHE:-$HOME/.cache/gisjob}"
# Bump when the build recipe changes so stale caches are not reused.
RECIPE=r2
# Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, which crashes under Go >= 1.18
# (SIGSEGV in mapiterinit while encoding maps, e.g. on the first custom resource
# write). Debian ships the fixed 1.0.2 and json-iterator 1.1.12 (what later
# Kubernetes releases vendor); they replace the vendored copies before building.
VENDOR_FIX_PKGS=(golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
VENDOR_FIX_PATHS=(github.com/modern-go/reflect2 github.com/json-iterator/go)
SRC_LIST=/etc/apt/sources.list.d/gisjob-deb-src.sources
export DEBIAN_FRONTEND=noninteractive

# Version of Debian's kubernetes source, from local apt metadata only (no network).
local_version() {
    local v=""
    v="$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/{print $2; exit}')" || true
    if [[ -z "$v" ]]; then
        v="$(apt-cache policy kubernetes-client 2>/dev/null | awk '/Candidate:/{print $2; exit}')" || true
        [[ "$v" == "(none)" ]] && v=""
    fi
    printf '%s' "$v"
}

safe() { printf '%s' "$1" | tr -c 'A-Za-z0-9._+-' '_'; }

ensure_etcd() {
    # $1: bin dir; links Debian's etcd into it.
    ensure_command etcd etcd-server
    ln -sfn "$(command -v etcd)" "$1/etcd"
}

# 2. cache -----------------------------------------------------------------
version="$(local_version)"
if [[ -n "$version" ]]; then
    bin="$CACHE/k8s-$(safe "$version")-$RECIPE/bin"
    if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" ]]; then
        ensure_etcd "$bin"
        log "cached build for kubernetes $version"
        echo "$bin"
        exit 0
    fi
else
    # No apt metadata (fresh machine before `apt-get update`): any complete cached build.
    for d in "$CACHE"/k8s-*-"$RECIPE"/bin; do
        if [[ -x "$d/kube-apiserver" && -x "$d/kube-controller-manager" ]]; then
            ensure_etcd "$d"
            log "cached build at $d"
            echo "$d"
            exit 0
        fi
    done
fi

[[ "${GISJOB_NO_BUILD:-0}" == 1 ]] && die "no binaries found and GISJOB_NO_BUILD=1"

# 3. build from Debian's source package -----------------------------------
t0=$(date +%s)

# deb-src entry derived from the machine's own Debian entry (no host names here).
has_src() { [[ -n "$(apt-cache showsrc kubernetes 2>/dev/null | head -n1)" ]]; }
if [[ ! -f "$SRC_LIST" && ! -f "${SRC_LIST%.sources}.list" ]] && ! has_src; then
    log "adding deb-src entries derived from the existing Debian sources"
    tmp="$(mktemp)"
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ "$f" == "$SRC_LIST" ]] && continue
        # deb822: copy every Debian stanza whose Types include "deb", as deb-src.
        awk 'BEGIN{RS=""; ORS="\n\n"}
             /(^|\n)Types:[^\n]*(^|[ \t])deb([ \t]|\n|$)/ && /debian/ {
                 sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f" >>"$tmp"
    done
    if [[ ! -s "$tmp" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f "$f" ]] || continue
            sed -n '/debian/s/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >>"$tmp"
        done
        shopt -u nullglob
        [[ -s "$tmp" ]] || die "no Debian 'deb' entry found in /etc/apt to derive deb-src from"
        SRC_LIST="${SRC_LIST%.sources}.list"
    fi
    shopt -u nullglob
    as_root install -m 0644 "$tmp" "$SRC_LIST"
    rm -f "$tmp"
    as_root apt-get update >&2 || log "apt-get update reported errors; continuing"
elif ! has_src; then
    as_root apt-get update >&2 || log "apt-get update reported errors; continuing"
fi

need=()
command -v go >/dev/null || need+=(golang-go)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v make >/dev/null || need+=(make)
command -v rsync >/dev/null || need+=(rsync)
command -v jq >/dev/null || need+=(jq)
command -v etcd >/dev/null || need+=(etcd-server)
for p in "${VENDOR_FIX_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    as_root apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

version="$(apt-cache showsrc kubernetes | awk '/^Version:/{print $2; exit}')"
[[ -n "$version" ]] || die "apt-cache showsrc kubernetes found nothing (deb-src entry not working?)"
key="k8s-$(safe "$version")-$RECIPE"
root="$CACHE/$key"
bin="$root/bin"
if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" ]]; then
    ensure_etcd "$bin"
    echo "$bin"
    exit 0
fi
mkdir -p "$root/dl" "$bin"

log "downloading source package kubernetes $version"
(cd "$root/dl" && apt-get source --download-only "kubernetes=$version" >&2)
dsc="$(ls "$root"/dl/kubernetes_*.dsc | head -n1)"

gopath="$root/gopath"
tree="$root/src"
if [[ ! -f "$tree/.gisjob-unpacked" ]]; then
    log "unpacking $(basename "$dsc")"
    rm -rf "$tree"
    dpkg-source --no-check -x "$dsc" "$tree" >&2
    touch "$tree/.gisjob-unpacked"
fi
for p in "${VENDOR_FIX_PATHS[@]}"; do
    src="/usr/share/gocode/src/$p"
    [[ -d "$src" ]] || die "missing $src (from ${VENDOR_FIX_PKGS[*]})"
    rm -rf "${tree:?}/vendor/$p"
    mkdir -p "$tree/vendor/$p"
    (cd "$src" && find . -name '*.go' ! -name '*_test.go' -print0 | xargs -0 cp --parents -t "$tree/vendor/$p")
done
log "replaced vendored ${VENDOR_FIX_PATHS[*]} with Debian's Go 1.18+-compatible versions"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"

log "building kube-apiserver and kube-controller-manager with $(go version) (takes minutes)"
# Debian's own recipe (debian/rules): GOPATH with k8s.io/kubernetes linked to the
# tree, then upstream's `make WHAT=...` (which also runs the code generators).
upstream="${version#*really}"; upstream="${upstream#*:}"
upstream="${upstream%%[+~-]*}"
cd "$tree"
(
    export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0
    export HOME="$root/home" GOCACHE="$root/gocache"
    export KUBE_GIT_VERSION="v$upstream" KUBE_GIT_TREE_STATE=archive
    export KUBE_GIT_MAJOR="${upstream%%.*}" KUBE_GIT_MINOR="$(echo "$upstream" | cut -d. -f2)"
    mkdir -p "$HOME"
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
) || die "build failed (see output above)"
for cmd in kube-apiserver kube-controller-manager; do
    install -m 0755 "$tree/_output/bin/$cmd" "$bin/$cmd.tmp"
    mv "$bin/$cmd.tmp" "$bin/$cmd"
done
ensure_etcd "$bin"
if [[ "${GISJOB_KEEP_BUILD_TREE:-0}" != 1 ]]; then
    # 2+ GB of source and objects; the downloaded source package stays for rebuilds.
    rm -rf "$tree" "$gopath" "$root/gocache" "$root/home" "$root"/kubernetes_*.orig.tar.*
fi
log "cold build finished in $(( $(date +%s) - t0 ))s; cached in $bin"
echo "$bin"
