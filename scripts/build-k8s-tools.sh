#!/usr/bin/env bash
# Build the pinned Kubernetes-side tools once from the Go module proxy and print their paths.
#
#   scripts/build-k8s-tools.sh   -> one line per program, "NAME<TAB>PATH":
#       containerd               .cache/k8s-tools/containerd-<version>/containerd
#       containerd-shim-runc-v2  .cache/k8s-tools/containerd-<version>/containerd-shim-runc-v2
#       ctr                      .cache/k8s-tools/containerd-<version>/ctr
#       crictl                   .cache/k8s-tools/cri-tools-<version>/crictl
#   scripts/build-k8s-tools.sh kubelet
#       kubelet                  .cache/k8s-tools/kubernetes-<version>/kubelet
#
# The kubelet (tests/e2e/test_kubelet.py) comes from k8s.io/kubernetes, whose
# go.mod points its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# folders of its own tree (replace => ./staging/src/...), so `go install
# k8s.io/kubernetes/cmd/kubelet@VERSION` is refused.  It is built from a module
# of our own that requires k8s.io/kubernetes and replaces each staging module it
# names by that module's own release of the same minor version (v1.X.Y -> v0.X.Y).
#
# containerd 2.x (its CRI plugin and its runc.v2 shim) and crictl are what the
# Kubernetes end-to-end tests (tests/e2e/test_kubernetes.py) run; the host's
# containerd (Debian's 1.6, for the Docker tests) is not touched.
#
# Environment:
#   CONTAINERD_VERSION  module version of github.com/containerd/containerd/v2 (default: pinned below)
#   CRI_TOOLS_VERSION   module version of sigs.k8s.io/cri-tools (default: pinned below)
#   KUBERNETES_VERSION  module version of k8s.io/kubernetes (default: pinned below)
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
# Kubernetes v1.37.2: the kubelet's checkpoint API (ContainerCheckpoint, beta, on by default).
KUBERNETES_PINNED=v1.37.2
containerd_version=${CONTAINERD_VERSION:-$CONTAINERD_PINNED}
cri_tools_version=${CRI_TOOLS_VERSION:-$CRI_TOOLS_PINNED}
kubernetes_version=${KUBERNETES_VERSION:-$KUBERNETES_PINNED}
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

# build DEST MODULE VERSION TARGETS CHECK-ARGS [PREPARE]
#   PREPARE, when given, is a function run in the new module's folder after `go mod init`.
build() {
    local dest=$1 module=$2 version=$3 targets=$4 check=$5 prepare=${6:-}
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
    if [ -n "$prepare" ]; then
        (cd "$work" && "$prepare" "$version") >>"$log" 2>&1 || {
            tail -n 60 "$log" >&2
            rm -rf "$work"
            die "cannot prepare the build of $module@$version (see the output above)"
        }
    fi
    # The packages, not just the module: go.sum then lists everything they import.
    local pkgs=()
    for target in $targets; do pkgs+=("${target#*=}@$version"); done
    run_go get "${pkgs[@]}"
    for target in $targets; do
        # Static, no cgo: the btrfs snapshotter (cgo only) is left out, which the tests do not use.
        CGO_ENABLED=0 run_go build -trimpath -ldflags="-s -w ${LDFLAGS_X:-}" -o "$work/${target%%=*}" "${target#*=}"
    done
    works "$work" "$check" "${names[@]}" || die "a built $module program does not run ($check)"
    for target in $targets; do mv -f "$work/${target%%=*}" "$dest/${target%%=*}"; done
    rm -rf "$work"
    say "built $module@$version in $(( $(date +%s) - start ))s"
    exec 9>&-
}

# In the new module's folder: replace each staging module k8s.io/kubernetes@VERSION names in its go.mod.
kubernetes_staging() {
    local version=$1 gomod staging
    gomod=$("$go" mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$gomod" ] || { echo "no go.mod for k8s.io/kubernetes@$version"; return 1; }
    staging="v0.${version#v1.}"
    sed -n 's|^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*|\1|p' "$gomod" | while read -r m; do
        "$go" mod edit -replace "$m=$m@$staging"
    done
    grep -q "=> k8s.io/api $staging" go.mod || { echo "no staging module replaced"; return 1; }
}

if [ "${1:-}" = kubelet ]; then
    kube=$cache/kubernetes-$kubernetes_version
    LDFLAGS_X="-X k8s.io/component-base/version.gitVersion=$kubernetes_version" \
        build "$kube" k8s.io/kubernetes "$kubernetes_version" "kubelet=k8s.io/kubernetes/cmd/kubelet" "--version" \
        kubernetes_staging
    printf 'kubelet\t%s\n' "$kube/kubelet"
    exit 0
fi

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
