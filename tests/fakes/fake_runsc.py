"""A fake gVisor runsc for tests: strict where runsc-cuda depends on runsc.

It behaves like runsc release-20260817 in the ways runsc-cuda relies on:
- Go flag parsing, strictly: an unknown global flag exits 2, an unknown flag of
  a subcommand exits 128 with "flag provided but not defined: -x"; booleans
  never take a separate value.
- Containers live in ``--root``: created / running / paused / stopped.
- ``state``, ``ps --format json``, ``pause``, ``resume``, ``kill``, ``delete``,
  ``exec`` (refusing a paused container), ``checkpoint`` and ``restore`` (an
  image folder), ``--version``, ``help VERB``, ``VERB --help`` and ``flags`` (the
  global flags, on stderr, exit 0).
- Errors go to stderr and, as runsc does, to ``--log`` as JSON objects
  *without* a trailing newline; every failure exits 128.
- ``exec`` of a path that a bind mount of the container's spec puts there runs
  the mount's host source (runsc-cuda's cuda-checkpoint mount) with
  FAKE_CONTAINER_DIR set, so a fake cuda-checkpoint can keep per-container state.
- ``checkpoint --cuda-checkpoint-path`` (native engine) finds CUDA processes with
  ``--get-state`` and toggles them, undoing partial toggles on failure; restore
  of such an image toggles them back.

What the fake's container holds comes from its spec's annotations:
  test.fake-runsc/pids       "1,7,9"  sandbox PIDs (default "1")
  test.fake-runsc/cuda-pids  "7,9"    the ones that are CUDA processes

Test switches (environment):
  FAKE_RUNSC_OLD=1             an older runsc: checkpoint has no --cuda-checkpoint-path
  FAKE_RUNSC_OLD=2022          Debian 12's runsc (gVisor of 2022, version 0.0~20221219.0): no nvproxy
                               flags (an unknown global flag exits 2 with the usage), and checkpoint and
                               restore have only the flags that release had (no image flags)
  FAKE_RUNSC_FAULTS=<json>     [{"verb": "checkpoint", "fault": "fail"|"hang"|"garbage"|"die"|"empty",
                                 "times": 1, "skip": 0, "match": "<substring of argv>"}]
    verb:  a subcommand, or "help" / "version" for ``help VERB`` / ``--version``
    times: how many matching calls fail (0: all); skip: let this many matching calls through first
    fault: fail     runsc's own error: exit 128, message on stderr and in --log
           hang     sleep "seconds", then carry the call out
           garbage  print "output" (default: binary junk) and exit 0
           empty    print nothing and exit 0
           vanish   the container ("container", default the last argument) is killed and deleted
                    first, as by a racing `kill` + `delete`; the call then finds no container, and
                    fails as runsc does: "FetchSpec failed: loading container: file does not exist"
           die      SIGKILL itself (runsc dying mid-call); checkpoint with "when": "after-toggle"
                    dies after toggling CUDA processes (native engine), before saving
           output   print "output" (and "stderr"), each "repeat" times, exit "code"
                    ("output_file": print that file's bytes instead: megabytes, binary)
           signal   send "signal" (default TERM) to the caller, "when" before (default) or
                    after the call is carried out ("seconds": wait that long first, as a
                    save that goes on after its caller was killed)
  FAKE_RUNSC_VERSION=<text>    what --version prints as the version
  FAKE_RUNSC_DROP_FLAGS=<list> "restore:background,wait:restore": flags this runsc does not know
  FAKE_RUNSC_COMPRESSION_DEFAULT=<name>  checkpoint's --compression default (older runsc: flate-best-speed)
  FAKE_RUNSC_BACKGROUND_FAIL=<json>  a restore --background whose page loading fails after restore returns:
                               {"message": "...", "seen_by_wait": true}; seen_by_wait false: the sandbox
                               died before `wait --restore` connected (runsc says "connection refused")
  FAKE_RUNSC_BACKGROUND_SECONDS=<s>  how long a background page load takes (`wait --restore` blocks)

Images are faithful in shape: checkpoint.img always (here: JSON), plus
pages_meta.img and pages.img when the image is uncompressed; ``--direct``
opens pages.img with O_DIRECT as runsc does (EINVAL where the filesystem has
none).  ``restore --background`` of a compressed image is accepted and has no
effect, as in runsc (there is no pages file to load in the background).

A pod image (``checkpoint.img`` with runsc's ``gVisorSF`` state-file header, as
commands/pod_restore.py reads it) restores as a pod: ``restore`` of the pod's
sandbox (``io.kubernetes.cri.container-type: sandbox``) starts a stand-in
sandbox process (argv[0] ``runsc-sandbox``, naming ``--root``; it sleeps) whose
PID ``state`` reports, and ``kill`` (KILL/TERM/INT) and ``delete`` end it;
``restore`` of a container of the pod only marks it running.

Every call is appended to ``<root>/calls.jsonl``: argv, stdin (for ``-`` reads),
the open file descriptors, and the exit status.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported where used: most calls never start a process
    import subprocess

GLOBAL_BOOLS = {
    "EXPERIMENTAL-xdp-need-wakeup",
    "TESTONLY-afs-syscall-panic",
    "TESTONLY-autosave-resume",
    "TESTONLY-nftables",
    "TESTONLY-unsafe-nonroot",
    "allow-connected-on-save",
    "allow-flag-override",
    "allow-live-tcp-migration",
    "allow-packet-socket-write",
    "allow-rootfs-tar-annotation",
    "allow-suid",
    "alsologtostderr",
    "app-huge-pages",
    "buffer-pooling",
    "cgroupfs",
    "cpu-num-from-quota",
    "debug",
    "debug-to-user-log",
    "directfs",
    "enable-core-tags",
    "fsgofer-host-uds",
    "fuse",
    "gso",
    "gvisor-gro",
    "gvisor-marker-file",
    "h",
    "help",
    "ignore-cgroups",
    "iouring",
    "kvm-use-cpu-nums",
    "lisafs",
    "log-packets",
    "mount-cgroup-v2",
    "net-disconnect-ok",
    "net-raw",
    "nvproxy",
    "nvproxy-allow-unsupported-driver",
    "nvproxy-docker",
    "oci-seccomp",
    "overlay",
    "pause-external-networking",
    "profile",
    "rdmaproxy",
    "reproduce-nat",
    "reproduce-nftables",
    "rootless",
    "rx-checksum-offload",
    "save-restore-netstack",
    "software-gso",
    "strace",
    "strace-event",
    "systemd-cgroup",
    "systrap-disable-fast-path",
    "systrap-disable-syscall-patching",
    "tpuproxy",
    "tx-checksum-offload",
    "version",
    "vfs2",
}
GLOBAL_VALUES = {
    "root",
    "log",
    "log-format",
    "log-fd",
    "debug-log",
    "debug-log-fd",
    "debug-log-format",
    "debug-command",
    "panic-log",
    "panic-log-fd",
    "platform",
    "platform_device_path",
    "network",
    "overlay2",
    "file-access",
    "file-access-mounts",
    "host-uds",
    "host-fifo",
    "fdlimit",
    "dcache",
    "gofer-network-namespace",
    "qdisc",
    "num-network-channels",
    "network-processors-per-channel",
    "nvproxy-driver-version",
    "nvproxy-allowed-driver-capabilities",
    "strace-syscalls",
    "strace-log-size",
    "watchdog-action",
    "panic-signal",
    "profile-block",
    "profile-cpu",
    "profile-heap",
    "profile-mutex",
    "trace",
    "pcap-log",
    "metric-server",
    "in-sandbox-cgroup",
    "pod-init-config",
    "ref-leak-mode",
    "restore-spec-validation",
    "host-settings",
    "shared-root",
    "character-device-policy",
}

_HELP = {"h", "help"}
VERBS: dict[str, tuple[set[str], set[str]]] = {
    "create": (
        _HELP | {"fs-restore-direct"},
        {"bundle", "console-socket", "pid-file", "user-log", "fs-restore-image-path"},
    ),
    "run": (
        _HELP | {"detach", "fs-restore-direct"},
        {"bundle", "console-socket", "pid-file", "user-log", "fs-restore-image-path", "exec-fd", "pass-fd"},
    ),
    "start": (_HELP, set()),
    "state": (_HELP, set()),
    "ps": (_HELP, {"format"}),
    "pause": (_HELP, set()),
    "resume": (_HELP, set()),
    "kill": (_HELP | {"all"}, {"pid", "pgid"}),
    "delete": (_HELP | {"force"}, set()),
    "exec": (
        _HELP | {"detach"},
        {
            "additional-gids",
            "cap",
            "console-socket",
            "cwd",
            "env",
            "exec-fd",
            "internal-pid-file",
            "pass-fd",
            "pid-file",
            "process",
            "user",
        },
    ),
    "checkpoint": (
        _HELP | {"leave-running", "exclude-committed-zero-pages", "direct", "cuda-checkpoint-sequential"},
        {
            "image-path",
            "compression",
            "cuda-checkpoint-path",
            "save-restore-exec-argv",
            "save-restore-exec-timeout",
            "work-path",
        },
    ),
    "restore": (
        _HELP | {"background", "detach", "direct", "fs-restore-direct", "no-subreaper"},
        {"bundle", "console-socket", "pid-file", "user-log", "fs-restore-image-path", "image-path", "work-path"},
    ),
    "list": (_HELP | {"quiet", "sandbox"}, {"format"}),
    "update": (_HELP, {"resources", "memory", "cpu-quota", "cpu-period", "pids-limit"}),
    "events": (_HELP | {"stats"}, {"interval"}),
    "wait": (_HELP | {"checkpoint", "restore", "fscheckpoint", "fsrestore"}, {"pid", "rootpid"}),
}
OLD_RUNSC_DROPS = {"cuda-checkpoint-path", "cuda-checkpoint-sequential"}
# Debian 12's runsc (0.0~20221219.0), as its `runsc flags` and `runsc help checkpoint|restore` print.
RUNSC_2022_VERSION = "0.0~20221219.0"
RUNSC_2022_VERBS: dict[str, set[str]] = {
    "checkpoint": {"help", "h", "image-path", "leave-running", "work-path"},
    "restore": {"help", "h", "bundle", "console-socket", "detach", "image-path", "no-subreaper", "pid-file"}
    | {"user-log", "work-path"},
}
COMPRESSIONS = {"none", "flate-best-speed"}
PIDS_ANNOTATION = "test.fake-runsc/pids"
CUDA_PIDS_ANNOTATION = "test.fake-runsc/cuda-pids"
IMAGE_FILE = "checkpoint.img"
POD_IMAGE_MAGIC = b"gVisorSF"  # runsc's state-file header: a pod image (image/statefile.py)
STAND_IN_SECONDS = 600  # a stand-in sandbox process ends by itself after this long at the latest
PAGES_META_FILE = "pages_meta.img"
PAGES_FILE = "pages.img"
# runsc's own help lines for the flags runsc-cuda reads more than the name of.
HELP_LINES: dict[tuple[str, str], tuple[str, str]] = {
    ("checkpoint", "compression"): ("value", "compress checkpoint image on disk. Values: none|flate-best-speed."),
    ("checkpoint", "direct"): ("", "use O_DIRECT for writing checkpoint pages file"),
    ("checkpoint", "exclude-committed-zero-pages"): ("", "exclude committed zero-filled pages from checkpoint"),
    ("restore", "background"): (
        "",
        "allow image loading to continue after restore exits (requires uncompressed checkpoint)",
    ),
    ("restore", "direct"): ("", "use O_DIRECT for reading checkpoint pages file"),
    ("wait", "restore"): ("", "wait for the restore to complete"),
}


def is_fake_cuda_checkpoint(path: str) -> bool:
    """Whether ``path`` is the wrapper ``fakes.install`` wrote for the fake cuda-checkpoint."""
    try:
        if not os.access(path, os.X_OK):
            return False
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"import fake_cuda_checkpoint" in head


def run_fake_cuda_checkpoint(path: str, args: list[str], env: dict[str, str]) -> NoReturn:
    """What ``execve`` of the fake cuda-checkpoint would do, without starting a second interpreter.

    The process, its PID, parent, environment, output and exit status are the
    same as after the exec; it only saves an interpreter start per call.
    """
    os.environ.clear()
    os.environ.update(env)
    import fake_cuda_checkpoint

    try:
        fake_cuda_checkpoint.main([path, *args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def signal_number(name: str | int) -> int:
    """``"TERM"``, ``"SIGTERM"`` or 15."""
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    text = str(name).upper()
    return int(getattr(signal, text if text.startswith("SIG") else "SIG" + text))


class Fatal(Exception):
    def __init__(self, message: str, code: int = 128) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class GoFlags:
    """Go's flag package, strictly."""

    def __init__(self, bools: set[str], values: set[str]) -> None:
        self.bools = bools
        self.values = values

    def parse(self, args: list[str]) -> tuple[dict[str, str], list[str]]:
        out: dict[str, str] = {}
        i = 0
        while i < len(args):
            token = args[i]
            if len(token) < 2 or token[0] != "-":
                break
            if token == "--":
                i += 1
                break
            body = token[2:] if token.startswith("--") else token[1:]
            if not body or body[0] in "-=":
                raise Fatal(f"bad flag syntax: {token}", 2)
            name, eq, value = body.partition("=")
            if name in self.bools:
                if eq and value.lower() not in ("1", "0", "t", "f", "true", "false"):
                    raise Fatal(f'invalid boolean value "{value}" for -{name}: parse error', 2)
                out[name] = value.lower() if eq else "true"
                i += 1
            elif name in self.values:
                if not eq:
                    if i + 1 >= len(args):
                        raise Fatal(f"flag needs an argument: -{name}", 2)
                    value = args[i + 1]
                    i += 1
                out[name] = value
                i += 1
            else:
                raise Fatal(f"flag provided but not defined: -{name}", 2)
        return out, args[i:]


def truthy(flags: dict[str, str], name: str) -> bool:
    return flags.get(name, "false") in ("true", "1", "t")


class Fake:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.env = os.environ
        self.globals: dict[str, str] = {}
        self.root = "/var/run/runsc"
        self.stdin_data: str | None = None
        self.signal_after: int | None = None  # a "signal" fault with "when": "after"
        self.die_after_toggle = False  # a "die" fault with "when": "after-toggle"

    # --- plumbing -------------------------------------------------------------

    def record(self, code: int) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
            entry = {
                "argv": self.argv[1:],
                "code": code,
                "fds": fds,
                "time": time.time(),
                "pid": os.getpid(),
                "cwd": os.getcwd(),
            }
            if self.stdin_data is not None:
                entry["stdin"] = self.stdin_data
            line = (json.dumps(entry) + "\n").encode()
            fd = os.open(os.path.join(self.root, "calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            pass

    def log_error(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        path = self.globals.get("log")
        if path and self.globals.get("log-format", "text") == "json":
            obj = {"msg": message, "level": "error", "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z")}
            with open(path, "a") as f:
                f.write(json.dumps(obj, separators=(",", ":")))  # no newline: as runsc does
        elif path:
            with open(path, "a") as f:
                f.write(f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ")}" level=error msg="{message}"\n')

    def cdir(self, cid: str) -> str:
        if not cid or "/" in cid or cid in (".", ".."):
            raise Fatal(f"invalid container id: {cid!r}")
        return os.path.join(self.root, cid)

    def load(self, cid: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.cdir(cid), "state.json")) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            raise Fatal("FetchSpec failed: loading container: file does not exist") from None

    def save(self, state: dict[str, Any]) -> None:
        folder = self.cdir(state["id"])
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(folder, "state.json"))

    def require(self, state: dict[str, Any], action: str, *statuses: str) -> None:
        if state["status"] not in statuses:
            raise Fatal(f'cannot {action} container "{state["id"]}" in state {state["status"]}')

    def fault(self, verb: str) -> None:
        """Apply a planned fault for this call, if any."""
        raw = self.env.get("FAKE_RUNSC_FAULTS")
        if not raw:
            return
        plans = json.loads(raw)
        joined = " ".join(self.argv[1:])
        for index, plan in enumerate(plans):
            if plan.get("verb") != verb or plan.get("match", "") not in joined:
                continue
            if not self.consume(f"runsc-{index}", int(plan.get("times", 1)), int(plan.get("skip", 0))):
                continue
            kind = plan["fault"]
            if kind == "fail":
                raise Fatal(plan.get("message", f"injected failure in {verb}"))
            if kind == "hang":
                time.sleep(float(plan.get("seconds", 3600)))
            if kind == "garbage":
                sys.stdout.write(plan.get("output", "\x00garbage{{{not json\n"))
                sys.stdout.flush()
                raise SystemExit(0)
            if kind == "empty":
                raise SystemExit(0)
            if kind == "vanish":  # a racing `kill` + `delete`: the container's folder goes, then the call
                import shutil

                shutil.rmtree(self.cdir(plan.get("container") or self.argv[-1]), ignore_errors=True)
            if kind == "die":
                if plan.get("when") == "after-toggle":
                    self.die_after_toggle = True
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            if kind == "output":
                repeat = int(plan.get("repeat", 1))
                if plan.get("output_file"):
                    with open(plan["output_file"], "rb") as f:
                        data = f.read()
                    sys.stdout.flush()
                    for _ in range(repeat):
                        sys.stdout.buffer.write(data)
                for _ in range(repeat if plan.get("output") else 0):
                    sys.stdout.write(plan["output"])
                for _ in range(repeat if plan.get("stderr") else 0):
                    sys.stderr.write(plan["stderr"])
                sys.stdout.flush()
                sys.stderr.flush()
                raise SystemExit(int(plan.get("code", 0)))
            if kind == "signal":
                signum = signal_number(plan.get("signal", "TERM"))
                if plan.get("when", "before") == "after":
                    self.signal_after = signum
                else:
                    os.kill(os.getppid(), signum)
                    time.sleep(float(plan.get("seconds", 0)))  # the call goes on after its caller is gone

    def consume(self, key: str, times: int, skip: int = 0) -> bool:
        """Count matching calls of a fault in <root>/faults-used.json.

        The fault applies to the matches after the first ``skip``, ``times`` of
        them (``times`` 0: all of them).
        """
        os.makedirs(self.root, exist_ok=True)
        path = os.path.join(self.root, "faults-used.json")
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            used = json.loads(text) if text.strip() else {}
            seen = used.get(key, 0)
            used[key] = seen + 1
            f.seek(0)
            f.truncate()
            f.write(json.dumps(used))
        return seen >= skip and (times <= 0 or seen < skip + times)

    # --- main -----------------------------------------------------------------

    def main(self) -> int:
        code = 0
        try:
            code = self.dispatch()
        except Fatal as e:
            self.log_error(e.message)
            code = e.code
        except SystemExit as e:
            code = int(e.code or 0)
        self.record(code)
        if self.signal_after is not None:
            sys.stdout.flush()
            os.kill(os.getppid(), self.signal_after)
        return code

    def is_2022(self) -> bool:
        return self.env.get("FAKE_RUNSC_OLD") == "2022"

    def global_flag_names(self) -> tuple[set[str], set[str]]:
        if self.is_2022():
            return {n for n in GLOBAL_BOOLS if not n.startswith("nvproxy")}, {
                n for n in GLOBAL_VALUES if not n.startswith("nvproxy")
            }
        return GLOBAL_BOOLS, GLOBAL_VALUES

    def dispatch(self) -> int:
        try:
            self.globals, rest = GoFlags(*self.global_flag_names()).parse(self.argv[1:])
        except Fatal as e:
            sys.stderr.write(e.message + "\nUsage: runsc <flags> <subcommand> <subcommand args>\n")
            raise SystemExit(2) from None
        self.root = self.globals.get("root", "/var/run/runsc")
        if truthy(self.globals, "version"):
            self.fault("version")
            default = RUNSC_2022_VERSION if self.is_2022() else "fake-20260817.0"
            version = self.env.get("FAKE_RUNSC_VERSION", default)
            print(f"runsc version {version}\nspec: {'1.0.2-dev' if self.is_2022() else '1.2.1'}")
            return 0
        if not rest:
            sys.stderr.write("Usage: runsc <flags> <subcommand> <subcommand args>\n")
            raise SystemExit(2)
        verb, args = rest[0], rest[1:]
        if verb == "help":
            self.fault("help")
            return self.help(args)
        if verb == "flags":  # runsc prints every global flag on stderr (Go's PrintDefaults) and exits 0
            self.fault("flags")
            bools, values = self.global_flag_names()
            for name in sorted(bools | values):
                sys.stderr.write(f"  -{name}{' string' if name in values else ''}\n    \tfake flag\n")
            return 0
        if verb not in VERBS:
            sys.stderr.write("Usage: runsc <flags> <subcommand> <subcommand args>\n")
            raise SystemExit(128)
        bools, values = self.verb_flags(verb)
        try:
            flags, positional = GoFlags(bools, values).parse(args)
        except Fatal as e:
            raise Fatal(f'failed to parse flags for "{verb}": {e.message}') from None
        if truthy(flags, "help") or truthy(flags, "h"):
            sys.stderr.write(self.usage(verb))
            raise SystemExit(128)
        self.fault(verb)
        handler: Callable[[dict[str, str], list[str]], int] = getattr(self, "cmd_" + verb)
        return handler(flags, positional)

    def verb_flags(self, verb: str) -> tuple[set[str], set[str]]:
        bools, values = VERBS[verb]
        drops = {
            name
            for item in self.env.get("FAKE_RUNSC_DROP_FLAGS", "").split(",")
            if item.strip()
            for v, _, name in [item.strip().partition(":")]
            if v == verb
        }
        if verb == "checkpoint" and self.env.get("FAKE_RUNSC_OLD"):
            drops |= OLD_RUNSC_DROPS
        if self.is_2022():
            drops |= (bools | values) - RUNSC_2022_VERBS.get(verb, bools | values)
        return bools - drops, values - drops

    def compression_default(self) -> str:
        return self.env.get("FAKE_RUNSC_COMPRESSION_DEFAULT", "none")

    def usage(self, verb: str) -> str:
        bools, values = self.verb_flags(verb)
        lines = [f"{verb} [flags] <container id>"]
        for name in sorted(bools | values):
            kind, text = HELP_LINES.get((verb, name), ("string" if name in values else "", "fake flag"))
            if (verb, name) == ("checkpoint", "compression"):
                text += f" (default {self.compression_default()})"
            lines.append(f"  -{name}" + (f" {kind}" if kind else ""))
            lines.append(f"    \t{text}")
        return "\n".join(lines) + "\n"

    def help(self, args: list[str]) -> int:
        if not args:
            print("Usage: runsc <flags> <subcommand> <subcommand args>")
            return 0
        if args[0] not in VERBS:
            sys.stderr.write(f"Unknown help topic {args[0]!r}\n")
            raise SystemExit(2)
        sys.stdout.write(self.usage(args[0]))
        return 0

    def one_id(self, positional: list[str], verb: str) -> str:
        if len(positional) != 1:
            sys.stderr.write(self.usage(verb))
            raise SystemExit(128)
        return positional[0]

    # --- lifecycle ------------------------------------------------------------

    def read_spec(self, bundle: str) -> dict[str, Any]:
        path = os.path.join(bundle, "config.json")
        try:
            with open(path) as f:
                return dict(json.load(f))
        except (OSError, ValueError) as e:
            raise Fatal(f"reading spec: {e}") from None

    def new_state(self, cid: str, bundle: str, spec: dict[str, Any], status: str) -> dict[str, Any]:
        annotations = spec.get("annotations") or {}
        pids = [int(p) for p in annotations.get(PIDS_ANNOTATION, "1").split(",") if p.strip()]
        cuda = [int(p) for p in annotations.get(CUDA_PIDS_ANNOTATION, "").split(",") if p.strip()]
        return {
            "id": cid,
            "status": status,
            "pid": 100000 + zlib.crc32(cid.encode()) % 100000,
            "bundle": bundle,
            "annotations": annotations,
            "spec": spec,
            "pids": pids,
            "nvproxy": truthy(self.globals, "nvproxy"),
            "created": time.time(),
            "cuda": {str(p): "running" for p in cuda},
            "counter": 0,
        }

    def write_pid_file(self, flags: dict[str, str], state: dict[str, Any]) -> None:
        if flags.get("pid-file"):
            with open(flags["pid-file"], "w") as f:
                f.write(str(state["pid"]))

    def cmd_create(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "create")
        if os.path.exists(os.path.join(self.cdir(cid), "state.json")):
            raise Fatal(f'creating container: container with id "{cid}" already exists')
        bundle = os.path.abspath(flags.get("bundle") or os.getcwd())
        state = self.new_state(cid, bundle, self.read_spec(bundle), "created")
        self.save(state)
        self.save_cuda(cid, state["cuda"])
        self.write_pid_file(flags, state)
        return 0

    def save_cuda(self, cid: str, states: dict[str, str]) -> None:
        """Per-PID CUDA states, kept where the fake cuda-checkpoint reads and writes them."""
        path = os.path.join(self.cdir(cid), "cuda.json")
        with open(path + ".tmp", "w") as f:
            json.dump(states, f)
        os.replace(path + ".tmp", path)

    def cmd_start(self, flags: dict[str, str], positional: list[str]) -> int:
        state = self.load(self.one_id(positional, "start"))
        self.require(state, "start", "created")
        state["status"] = "running"
        self.save(state)
        return 0

    def cmd_run(self, flags: dict[str, str], positional: list[str]) -> int:
        self.cmd_create({k: v for k, v in flags.items() if k != "detach"}, positional)
        self.cmd_start({}, positional)
        if truthy(flags, "detach"):
            return 0
        return self.wait_stopped(positional[0])

    def wait_stopped(self, cid: str) -> int:
        """Stand in for the container's init: return when it is stopped."""
        while True:
            try:
                state = self.load(cid)
            except Fatal:
                return 0
            if state["status"] == "stopped":
                return int(state.get("exit_status", 0))
            time.sleep(0.02)

    def cmd_state(self, flags: dict[str, str], positional: list[str]) -> int:
        state = self.load(self.one_id(positional, "state"))
        out = {
            "ociVersion": "1.2.1",
            "id": state["id"],
            "status": state["status"],
            "pid": state["pid"],
            "bundle": state["bundle"],
            "annotations": state["annotations"],
        }
        print(json.dumps(out, indent=2))
        return 0

    def cmd_ps(self, flags: dict[str, str], positional: list[str]) -> int:
        state = self.load(self.one_id(positional, "ps"))
        self.require(state, "get processes of", "running", "paused")
        fmt = flags.get("format", "table")
        if fmt == "json":
            print(json.dumps(state["pids"], separators=(",", ":")))
        elif fmt == "table":
            print("UID       PID       PPID      C         TTY       STIME     TIME      CMD")
            for pid in state["pids"]:
                print(f"0         {pid:<10}0         0         ?         00:00     0s        app")
        else:
            raise Fatal(f"unsupported format: {fmt}")
        return 0

    def cmd_pause(self, flags: dict[str, str], positional: list[str]) -> int:
        state = self.load(self.one_id(positional, "pause"))
        self.require(state, "pause", "running")
        state["status"] = "paused"
        self.save(state)
        return 0

    def cmd_resume(self, flags: dict[str, str], positional: list[str]) -> int:
        state = self.load(self.one_id(positional, "resume"))
        self.require(state, "resume", "paused")
        state["status"] = "running"
        self.save(state)
        return 0

    def cmd_kill(self, flags: dict[str, str], positional: list[str]) -> int:
        if len(positional) not in (1, 2):
            raise SystemExit(128)
        state = self.load(positional[0])
        self.require(state, "signal", "running", "stopped", "paused")
        sig = positional[1] if len(positional) == 2 else "TERM"
        if sig.upper().lstrip("SIG") in ("9", "15", "KILL", "TERM", "2", "INT"):
            state["status"] = "stopped"
            state["exit_status"] = 128 + (9 if sig.upper().lstrip("SIG") in ("9", "KILL") else 15)
            self.end_stand_in(state)
        self.save(state)
        return 0

    def cmd_delete(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "delete")
        state = self.load(cid)
        if state["status"] not in ("created", "stopped") and not truthy(flags, "force"):
            raise Fatal(f'cannot delete container "{cid}" in state {state["status"]}')
        self.end_stand_in(state)
        folder = self.cdir(cid)
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
        return 0

    def cmd_list(self, flags: dict[str, str], positional: list[str]) -> int:
        ids = (
            sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
            if os.path.isdir(self.root)
            else []
        )
        print("\n".join(ids))
        return 0

    def cmd_update(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "update")
        if flags.get("resources") == "-":
            self.stdin_data = sys.stdin.read()
        state = self.load(cid)
        self.require(state, "set resources for", "created", "running")
        return 0

    def cmd_events(self, flags: dict[str, str], positional: list[str]) -> int:
        self.load(self.one_id(positional, "events"))
        print(json.dumps({"type": "stats", "id": positional[0], "data": {}}))
        return 0

    def cmd_wait(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "wait")
        if truthy(flags, "restore"):
            return self.wait_restore(cid)
        return self.wait_stopped(cid)

    def wait_restore(self, cid: str) -> int:
        """``wait --restore``: until a (background) restore has loaded every page, or its error."""
        state = self.load(cid)
        background = state.get("background")
        if not state.get("restored_from"):
            raise Fatal(
                "waiting for restore to complete: sandbox is not being restored, cannot wait for restore: "
                f"state={'started' if state['status'] != 'created' else 'created'}"
            )
        if not background:
            return 0
        time.sleep(max(0.0, float(background.get("done_at", 0)) - time.time()))
        failure = background.get("failure")
        if failure is None:
            return 0
        if failure.get("seen_by_wait", True):
            raise Fatal(f"waiting for restore to complete: async MemoryFile loading failed: {failure['message']}")
        raise Fatal(
            f"waiting for restore to complete: connecting to control server at PID {state['pid']}: connection refused"
        )

    # --- exec -----------------------------------------------------------------

    def resolve_in_container(self, state: dict[str, Any], path: str) -> str | None:
        for mount in state["spec"].get("mounts") or []:
            if mount.get("destination") == path and mount.get("type") == "bind":
                return str(mount.get("source"))
        return None

    def run_in_container(
        self, state: dict[str, Any], argv: list[str], capture: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        import subprocess

        source = self.resolve_in_container(state, argv[0])
        if source is None:
            raise Fatal(f"executing processes for container: failed to load {argv[0]}: no such file or directory")
        env = dict(self.env)
        env["FAKE_CONTAINER_DIR"] = self.cdir(state["id"])
        if capture:
            return subprocess.run([source, *argv[1:]], env=env, capture_output=True, check=False)
        return subprocess.run([source, *argv[1:]], env=env, check=False)

    def cmd_exec(self, flags: dict[str, str], positional: list[str]) -> int:
        if flags.get("process"):
            with open(flags["process"]) as f:
                process = json.load(f)
            if len(positional) != 1:
                raise SystemExit(128)
            cid, argv = positional[0], list(process.get("args") or [])
        else:
            if len(positional) < 2:
                raise SystemExit(128)
            cid, argv = positional[0], positional[1:]
        state = self.load(cid)
        self.require(state, "execute in", "created", "running")
        if flags.get("pid-file"):
            with open(flags["pid-file"], "w") as f:
                f.write(str(os.getpid()))
        source = self.resolve_in_container(state, argv[0])
        if source is None:
            raise Fatal(f"executing processes for container: failed to load {argv[0]}: no such file or directory")
        # Become the process (its exit status is runsc exec's): one process fewer per call.
        self.record(-1)
        env = dict(self.env)
        env["FAKE_CONTAINER_DIR"] = self.cdir(state["id"])
        sys.stdout.flush()
        if is_fake_cuda_checkpoint(source):
            run_fake_cuda_checkpoint(source, argv[1:], env)
        os.execve(source, [source, *argv[1:]], env)
        return 128  # not reached

    # --- checkpoint / restore ---------------------------------------------------

    def cuda_call(self, state: dict[str, Any], path: str, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return self.run_in_container(state, [path, *args], capture=True)

    def native_toggle(self, state: dict[str, Any], path: str, pids: list[int], sequential: bool) -> None:
        """Toggle every PID; on failure toggle back those that succeeded, as runsc does."""

        import subprocess

        def start(pid: int) -> subprocess.Popen[bytes]:
            source = self.resolve_in_container(state, path)
            if source is None:
                raise Fatal(f"checkpoint failed: cuda-checkpoint {path} not found in container")
            env = dict(self.env)
            env["FAKE_CONTAINER_DIR"] = self.cdir(state["id"])
            return subprocess.Popen(
                [source, "--toggle", "--pid", str(pid)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )

        results: dict[int, int] = {}
        if sequential:
            for pid in pids:
                proc = start(pid)
                proc.communicate()
                results[pid] = proc.returncode
        else:
            procs = {pid: start(pid) for pid in pids}
            for pid, proc in procs.items():
                proc.communicate()
                results[pid] = proc.returncode
        failed = [pid for pid, code in results.items() if code != 0]
        if failed:
            for pid, code in results.items():
                if code == 0:
                    back = start(pid)
                    back.communicate()
            raise Fatal(f"checkpoint failed: cuda-checkpoint --toggle failed for PID(s) {failed}")

    def cuda_states(self, state: dict[str, Any]) -> dict[str, str]:
        path = os.path.join(self.cdir(state["id"]), "cuda.json")
        try:
            with open(path) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            return dict(state.get("cuda") or {})

    def cmd_checkpoint(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "checkpoint")
        state = self.load(cid)
        image = flags.get("image-path", "")
        if not image:
            raise Fatal("image-path flag must be provided")
        compression = flags.get("compression", self.compression_default())
        if compression not in COMPRESSIONS:
            raise Fatal(
                f'failed to parse flags for "checkpoint": invalid value "{compression}" for flag -compression: '
                f'invalid checkpoint compression type "{compression}"',
                2,
            )
        self.require(state, "checkpoint", "created", "running", "paused")
        os.makedirs(image, exist_ok=True)
        cuda_path = flags.get("cuda-checkpoint-path", "")
        native_pids: list[int] = []
        if cuda_path:
            for pid in state["pids"]:
                probe = self.cuda_call(state, cuda_path, ["--get-state", "--pid", str(pid)])
                if probe.returncode == 0:
                    native_pids.append(pid)
            self.native_toggle(state, cuda_path, native_pids, truthy(flags, "cuda-checkpoint-sequential"))
        if self.die_after_toggle:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-save: CUDA processes toggled, nothing saved
        snapshot = {
            "id": cid,
            "spec": state["spec"],
            "pids": state["pids"],
            "cuda": self.cuda_states(state),
            "counter": state.get("counter", 0),
            "status": state["status"],
            "native": {
                "path": cuda_path,
                "pids": native_pids,
                "sequential": truthy(flags, "cuda-checkpoint-sequential"),
            }
            if cuda_path
            else None,
            "compression": compression,
            "direct": truthy(flags, "direct"),
            "exclude_committed_zero_pages": truthy(flags, "exclude-committed-zero-pages"),
        }
        self.write_pages_files(image, compression, truthy(flags, "direct"))
        with open(os.path.join(image, IMAGE_FILE), "w") as f:
            json.dump(snapshot, f)
        if truthy(flags, "leave-running"):
            if cuda_path and native_pids:
                self.native_toggle(state, cuda_path, native_pids, truthy(flags, "cuda-checkpoint-sequential"))
        else:
            state = self.load(cid)
            state["status"] = "stopped"
            state["exit_status"] = 0
            self.save(state)
        return 0

    def write_pages_files(self, image: str, compression: str, direct: bool) -> None:
        """An uncompressed image keeps its pages apart (pages_meta.img, pages.img), as runsc does."""
        if compression != "none":
            return
        with open(os.path.join(image, PAGES_META_FILE), "w") as f:
            f.write("fake pages metadata\n")
        path = os.path.join(image, PAGES_FILE)
        mode = os.O_CREAT | os.O_EXCL | os.O_RDWR | (os.O_DIRECT if direct else 0)
        try:
            os.close(os.open(path, mode, 0o644))
        except OSError as e:
            raise Fatal(f'checkpoint failed: creating checkpoint pages file "{path}": {e.strerror.lower()}') from None

    def open_pages_file(self, image: str, direct: bool) -> bool:
        """Whether the image has a pages file (restore opens it, with O_DIRECT for --direct)."""
        if not os.path.exists(os.path.join(image, PAGES_META_FILE)):
            return False
        path = os.path.join(image, PAGES_FILE)
        try:
            os.close(os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0)))
        except OSError as e:
            raise Fatal(f'starting container: opening pages file "{path}" failed: {e.strerror.lower()}') from None
        return True

    def cmd_restore(self, flags: dict[str, str], positional: list[str]) -> int:
        cid = self.one_id(positional, "restore")
        image = flags.get("image-path", "")
        if not image:
            raise Fatal("image-path flag must be provided")
        try:
            with open(os.path.join(image, IMAGE_FILE), "rb") as f:
                raw = f.read()
            if raw.startswith(POD_IMAGE_MAGIC):
                return self.pod_restore(cid, flags, image)
            snapshot = json.loads(raw)
        except (OSError, ValueError) as e:
            raise Fatal(f"restoring container: reading image: {e}") from None
        # --background needs a pages file; without one (compressed image) it has no effect.
        background = self.open_pages_file(image, truthy(flags, "direct")) and truthy(flags, "background")
        existing = os.path.exists(os.path.join(self.cdir(cid), "state.json"))
        if existing:
            state = self.load(cid)
            self.require(state, "restore", "created")
            spec = state["spec"]
        else:
            bundle = os.path.abspath(flags.get("bundle") or os.getcwd())
            spec = self.read_spec(bundle)
            state = self.new_state(cid, bundle, spec, "created")
        self.compare_mounts(snapshot["spec"], spec)
        state["pids"] = snapshot["pids"]
        state["counter"] = snapshot.get("counter", 0)
        state["status"] = "running"
        state["restored_from"] = image
        state["restore_flags"] = sorted(flags)
        state["background"] = self.background_load() if background else None
        self.save(state)
        self.save_cuda(cid, snapshot.get("cuda") or {})
        native = snapshot.get("native")
        if native and native.get("pids"):
            self.native_toggle(state, native["path"], native["pids"], native.get("sequential", False))
        self.write_pid_file(flags, state)
        if truthy(flags, "detach"):
            return 0
        return self.wait_stopped(cid)

    def pod_restore(self, cid: str, flags: dict[str, str], image: str) -> int:
        """A container of a pod image: the sandbox gets a stand-in process; the others only run."""
        import subprocess

        if os.path.exists(os.path.join(self.cdir(cid), "state.json")):
            raise Fatal(f'creating container: container with id "{cid}" already exists')
        bundle = os.path.abspath(flags.get("bundle") or os.getcwd())
        state = self.new_state(cid, bundle, self.read_spec(bundle), "running")
        state["restored_from"] = image
        if state["annotations"].get("io.kubernetes.cri.container-type") == "sandbox":
            stand_in = subprocess.Popen(
                ["runsc-sandbox", "-c", f"import time; time.sleep({STAND_IN_SECONDS})", f"--root={self.root}", cid],
                executable=sys.executable,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            state["pid"] = state["stand_in"] = stand_in.pid
        self.save(state)
        self.save_cuda(cid, {})
        self.write_pid_file(flags, state)
        return 0

    def end_stand_in(self, state: dict[str, Any]) -> None:
        """SIGKILL a pod sandbox's stand-in process, if it is still the one this fake started."""
        pid = state.get("stand_in")
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if pid and f.read().startswith(b"runsc-sandbox\0"):
                    os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    def background_load(self) -> dict[str, Any]:
        """What the sandbox's background page loading will do after restore returns."""
        seconds = float(self.env.get("FAKE_RUNSC_BACKGROUND_SECONDS", "0"))
        raw = self.env.get("FAKE_RUNSC_BACKGROUND_FAIL")
        return {"done_at": time.time() + seconds, "failure": json.loads(raw) if raw else None}

    def compare_mounts(self, saved: dict[str, Any], now: dict[str, Any]) -> None:
        def key(m: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
            return (m.get("destination", ""), m.get("type", ""), tuple(sorted(m.get("options") or [])))

        before = [key(m) for m in saved.get("mounts") or []]
        after = [key(m) for m in now.get("mounts") or []]
        if before != after:
            missing = sorted(set(before) - set(after))
            extra = sorted(set(after) - set(before))
            raise Fatal(f"restoring container: mounts do not match the checkpoint: missing {missing}, new {extra}")


def main(argv: list[str]) -> NoReturn:
    sys.exit(Fake(argv).main())


if __name__ == "__main__":
    main(sys.argv)
