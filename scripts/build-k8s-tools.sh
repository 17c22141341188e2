#!/usr/bin/env bash
# Build the pinned Kubernetes-side tools once from the Go module proxy and print their paths.
#
#   scripts/build-k8s-tools.sh   -> one line per program, "NAME<TAB>PATH":
#       containerd               .cache/k8s-tools/containerd-<version>/containerd
#       containerd-shim-runc-v2  .cache/k8s-tools/containerd-<version>/containerd-shim-runc-v2
#       ctr                      .cache/k8s-tools/containerd-<version>/ctr
#       crictl                   .cache/k8s-tools/cri-tools-<version>/crictl
#
# containerd 2.x (its CRI plugin and its runc.v2 shim) and crictl are what the
# Kubernetes end-to-end tests (tests/e2e/test_kubernetes.py) run; the host's
# containerd (Debian's 1.6, for the Docker tests) is not touched.
#
# Environment:
#   CONTAINERD_VERSION  module version of github.com/containerd/containerd/v2 (default: pinned below)
#   CRI_TOOLS_VERSION   module version of sigs.k8s.io/cri-tools (default: pinned below)
#   K8S_TOOLS_CACHE_DIR where builds are kept (default: <repo>/.cache/k8s-tools)
#   GO                  the go command (default: go on PATH, then /usr/local/go/bin/go)
#
# Only the NAME<TAB>PATH lines go to stdout; progress and errors go to stderr.
# A failed build exits non-zero and prints go's own error output.
set -euo pipefail

# containerd v2.3.7: CRI CheckpointContainer for the runc.v2 shim (any BinaryName).
CONTAINERD_PINNED=v2.3.7
# cri-tools v1.37.0: `crictl checkpoint --export`.
CRI_TOOLS_PINNED=v1.37.0
containerd_version=${CONTAINERD_VERSION:-$CONTAINERD_PINNED}
cri_tools_version=${CRI_TOOLS_VERSION:-$CRI_TOOLS_PINNED}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${K8S_TOOLS_CACHE_DIR:-$repo/.cache/k8s-tools}

say() { printf 'build-k8s-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

go=${GO:-}
if [ -z "$go" ]; then
    go=$(command -v go || true)
    [ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; }
fi

# build DEST MODULE VERSION "NAME=PACKAGE ..." CHECK-ARGS
#   Builds each PACKAGE of MODULE@VERSION into DEST/NAME (once; a second caller waits
#   for the first and reuses its binaries).  A binary counts as built when
#   `DEST/NAME CHECK-ARGS` exits 0.
works() { # DEST CHECK-ARGS NAME...
    local dest=$1 check=$2 name
    shift 2
    for name in "$@"; do
        [ -x "$dest/$name" ] && "$dest/$name" $check >/dev/null 2>&1 || return 1
    done
}

build() {
    local dest=$1 module=$2 version=$3 targets=$4 check=$5
    local names=() target
    for target in $targets; do names+=("${target%%=*}"); done
    works "$dest" "$check" "${names[@]}" && return 0
    [ -n "$go" ] || die "no go command (install Go 1.24+ or set GO=/path/to/go)"
    mkdir -p "$dest"
    exec 9>"$dest/.lock"
    flock 9
    if works "$dest" "$check" "${names[@]}"; then
        exec 9>&-
        return 0
    fi
    local work log start
    work=$(mktemp -d "$dest/build.XXXXXX")
    log=$work/go.log
    run_go() {
        if ! (cd "$work" && "$go" "$@") >>"$log" 2>&1; then
            say "'go $*' failed in $work:"
            tail -n 60 "$log" >&2
            rm -rf "$work"
            die "cannot build $module@$version (see go's output above)"
        fi
    }
    start=$(date +%s)
    say "building $module@$version ($targets) with $("$go" version) (a few minutes on 2 cores)"
    run_go mod init k8stoolsbuild
    # The packages, not just the module: go.sum then lists everything they import.
    local pkgs=()
    for target in $targets; do pkgs+=("${target#*=}@$version"); done
    run_go get "${pkgs[@]}"
    for target in $targets; do
        # Static, no cgo: the btrfs snapshotter (cgo only) is left out, which the tests do not use.
        CGO_ENABLED=0 run_go build -trimpath -ldflags="-s -w" -o "$work/${target%%=*}" "${target#*=}"
    done
    works "$work" "$check" "${names[@]}" || die "a built $module program does not run ($check)"
    for target in $targets; do mv -f "$work/${target%%=*}" "$dest/${target%%=*}"; done
    rm -rf "$work"
    say "built $module@$version in $(( $(date +%s) - start ))s"
    exec 9>&-
}

ctd=$cache/containerd-$containerd_version
build "$ctd" github.com/containerd/containerd/v2 "$containerd_version" \
    "containerd=github.com/containerd/containerd/v2/cmd/containerd \
     containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
     ctr=github.com/containerd/containerd/v2/cmd/ctr" \
    "-v"
cri=$cache/cri-tools-$cri_tools_version
build "$cri" sigs.k8s.io/cri-tools "$cri_tools_version" "crictl=sigs.k8s.io/cri-tools/cmd/crictl" "--version"

printf 'containerd\t%s\n' "$ctd/containerd"
printf 'containerd-shim-runc-v2\t%s\n' "$ctd/containerd-shim-runc-v2"
printf 'ctr\t%s\n' "$ctd/ctr"
printf 'crictl\t%s\n' "$cri/crictl"
