#!/usr/bin/env bash
# Install what the end-to-end tests (tests/e2e) need, then build the pinned runsc,
# containerd 2.x and crictl (scripts/build-runsc.sh, scripts/build-k8s-tools.sh).
#
# Idempotent and non-interactive: installs only what is missing (Debian/Ubuntu
# apt-get, as root), reuses the runsc build in .cache/runsc.  It never fails
# the CI run for something this machine cannot have: it writes the reason to
# .cache/e2e-unavailable instead, and the e2e tests skip with that reason.
# It exits non-zero only if it is itself broken.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reason_file=$repo/.cache/e2e-unavailable
mkdir -p "$repo/.cache"
rm -f "$reason_file"

say() { printf 'ci-install: %s\n' "$*" >&2; }
unavailable() {
    say "e2e tests will be skipped: $*"
    printf '%s\n' "$*" >>"$reason_file"
}

is_static() { # ldd (libc-bin, always there on Debian) says so of static programs
    local out
    [ -x "$1" ] && out=$(LC_ALL=C ldd "$1" 2>&1)
    [[ ${out:-} == *"not a dynamic executable"* ]]
}

# command (or test) -> Debian package that provides it
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
command -v containerd-shim-runc-v2 >/dev/null || missing+=(containerd)
is_static /bin/busybox || missing+=(busybox-static)
command -v criu >/dev/null || missing+=(criu) # containerd's CRI checkpoint wants one, even for runsc
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        unavailable "not root, cannot install ${missing[*]}"
    elif ! command -v apt-get >/dev/null; then
        unavailable "no apt-get to install ${missing[*]}"
    else
        say "installing ${missing[*]}"
        # Keep the packages' services from starting a host dockerd/containerd.
        policy=/usr/sbin/policy-rc.d
        added_policy=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
        log=$(mktemp)
        if ! timeout 600 apt-get "${apt_opts[@]}" update >"$log" 2>&1; then
            say "apt-get update failed (going on with the lists there are): $(tail -n 3 "$log")"
        fi
        if ! timeout 900 apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
            say "apt-get install ${missing[*]} failed:"
            tail -n 20 "$log" >&2
            # Whatever did get installed may still be enough: the checks below decide.
        fi
        rm -f "$log"
        [ -n "$added_policy" ] && rm -f "$policy"
    fi
fi

# What the e2e stack cannot do without (criu is nice to have).
for tool in dockerd docker containerd ctr containerd-shim-runc-v2; do
    command -v "$tool" >/dev/null || unavailable "$tool is not installed (Debian: docker.io, containerd)"
done
is_static /bin/busybox || unavailable "/bin/busybox is missing or not static (Debian: busybox-static)"
command -v criu >/dev/null || say "warning: no criu (only Kubernetes checkpoints need it)"

if runsc=$(bash "$repo/scripts/build-runsc.sh"); then
    say "runsc: $runsc"
else
    unavailable "scripts/build-runsc.sh could not build runsc (its error is above)"
fi
# containerd 2.x (CRI plugin, runc.v2 shim) and crictl for the Kubernetes tests only: when they
# cannot be built, only those skip (the reason goes to .cache/k8s-unavailable).
k8s_reason_file=$repo/.cache/k8s-unavailable
rm -f "$k8s_reason_file"
if k8s_tools=$(bash "$repo/scripts/build-k8s-tools.sh"); then
    say "Kubernetes tools: $(printf '%s' "$k8s_tools" | cut -f2 | tr '\n' ' ')"
else
    say "Kubernetes e2e tests will be skipped: scripts/build-k8s-tools.sh failed (its error is above)"
    printf '%s\n' "scripts/build-k8s-tools.sh could not build containerd 2.x and crictl (see the CI log)" \
        >>"$k8s_reason_file"
fi
command -v criu >/dev/null || printf '%s\n' "no criu (Debian: criu): containerd refuses CRI checkpoints" \
    >>"$k8s_reason_file"
# The kubelet (k8s.io/kubernetes, a few minutes to build on 2 cores) for tests/e2e/test_kubelet.py only:
# when it cannot be built, only those skip (the reason goes to .cache/kubelet-unavailable).
kubelet_reason_file=$repo/.cache/kubelet-unavailable
rm -f "$kubelet_reason_file"
if kubelet=$(bash "$repo/scripts/build-k8s-tools.sh" kubelet); then
    say "kubelet: $(printf '%s' "$kubelet" | cut -f2)"
else
    say "kubelet e2e tests will be skipped: scripts/build-k8s-tools.sh kubelet failed (its error is above)"
    printf '%s\n' "scripts/build-k8s-tools.sh could not build the kubelet (see the CI log)" >>"$kubelet_reason_file"
fi
command -v unshare >/dev/null || printf '%s\n' "no unshare (Debian: util-linux): the kubelet runs in a mount namespace of its own" \
    >>"$kubelet_reason_file"

# Debian's own runsc package (gVisor of December 2022: no --nvproxy), unpacked into a private
# folder for tests/e2e/test_old_runsc.py, never installed over the system.  Optional: when it
# cannot be had, .cache/runsc-debian-unavailable says why and only those tests skip.
old_dir=$repo/.cache/runsc-debian
old_reason=$repo/.cache/runsc-debian-unavailable
rm -f "$old_reason"
old_unavailable() {
    say "Debian's runsc: $* (tests/e2e/test_old_runsc.py will skip)"
    printf '%s\n' "$*" >"$old_reason"
}
if [ -x "$old_dir/usr/bin/runsc" ]; then
    say "Debian's runsc: $old_dir/usr/bin/runsc"
elif ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    old_unavailable "no apt-get and dpkg here"
else
    if ! apt-cache policy runsc 2>/dev/null | grep -q 'Candidate: [0-9]' && [ "$(id -u)" = 0 ]; then
        timeout 600 apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null 2>&1 || say "apt-get update failed"
    fi
    candidate=$(apt-cache policy runsc 2>/dev/null | sed -n 's/^ *Candidate: //p')
    tmp=$(mktemp -d) && chmod 755 "$tmp" # apt's _apt user downloads into it
    log=$tmp/log
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        old_unavailable "apt knows no runsc package here"
    elif ! (cd "$tmp" && timeout 300 apt-get -q download runsc) >"$log" 2>&1; then
        old_unavailable "apt-get download runsc ($candidate) failed: $(tail -n 1 "$log")"
    elif ! dpkg -x "$tmp"/runsc_*.deb "$tmp/root" 2>"$log" || [ ! -x "$tmp/root/usr/bin/runsc" ]; then
        old_unavailable "dpkg -x of runsc $candidate failed: $(tail -n 1 "$log")"
    else
        rm -rf "$old_dir" && mkdir -p "$(dirname "$old_dir")" && mv "$tmp/root" "$old_dir"
        say "Debian's runsc $candidate: $old_dir/usr/bin/runsc"
    fi
    rm -rf "$tmp"
fi

[ -e "$reason_file" ] || say "the e2e tests can run"
exit 0
