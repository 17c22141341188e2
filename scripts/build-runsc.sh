#!/usr/bin/env bash
# Build the pinned gVisor runsc once from the Go module proxy and print its path.
#
#   scripts/build-runsc.sh            -> .cache/runsc/<version>/runsc (built on first use)
#
# Environment:
#   RUNSC_VERSION     module version of gvisor.dev/gvisor (default: the pinned one below)
#   RUNSC_CACHE_DIR   where builds are kept (default: <repo>/.cache/runsc)
#   GO                the go command (default: go on PATH, then /usr/local/go/bin/go)
#
# Only the binary's path goes to stdout; progress and errors go to stderr.
# A failed build exits non-zero and prints go's own error output.
set -euo pipefail

# gvisor.dev/gvisor@latest on 2026-09-05: has `runsc checkpoint --cuda-checkpoint-path`.
PINNED=v0.0.0-20260905035102-160fafc42237
version=${RUNSC_VERSION:-$PINNED}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${RUNSC_CACHE_DIR:-$repo/.cache/runsc}
dest=$cache/$version
binary=$dest/runsc

say() { printf 'build-runsc: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

works() { [ -x "$1" ] && "$1" help checkpoint >/dev/null 2>&1; }

if works "$binary"; then
    printf '%s\n' "$binary"
    exit 0
fi

go=${GO:-}
if [ -z "$go" ]; then
    go=$(command -v go || true)
    [ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; }
fi
[ -n "$go" ] || die "no go command (install Go 1.24+ or set GO=/path/to/go)"

mkdir -p "$dest"
# One build at a time: a second caller waits for the first and reuses its binary.
exec 9>"$dest/.lock"
flock 9
if works "$binary"; then
    printf '%s\n' "$binary"
    exit 0
fi

work=$(mktemp -d "$dest/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/go.log

run_go() {
    # go's output is kept; on failure it is printed whole, then we stop.
    if ! (cd "$work" && "$go" "$@") >"$log" 2>&1; then
        say "'go $*' failed in $work:"
        cat "$log" >&2
        die "cannot build gvisor.dev/gvisor/runsc@$version (see go's output above)"
    fi
}

start=$(date +%s)
say "building gvisor.dev/gvisor/runsc@$version with $("$go" version) (about 2 minutes on 2 cores)"
run_go mod init runscbuild
run_go get "gvisor.dev/gvisor/runsc@$version"
CGO_ENABLED=0 run_go build -trimpath -ldflags="-s -w" -o "$work/runsc" gvisor.dev/gvisor/runsc
works "$work/runsc" || die "the built runsc does not run: $("$work/runsc" help checkpoint 2>&1 | tail -n 3)"
mv -f "$work/runsc" "$binary"
say "built $binary in $(( $(date +%s) - start ))s"
printf '%s\n' "$binary"
