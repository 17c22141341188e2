#!/usr/bin/env python3
"""Benchmark: checkpoint and restore of a container holding N GiB of memory, per image option set.

Against the real runsc (no Docker): a bundle whose rootfs holds bench/memhog.c
(built with ``gcc -static``), which writes GIB GiB of random or zero pages.
For each option set, in one run, interleaved (the order rotates every
repetition), medians of --reps repetitions:

    runsc       the same runsc called directly with its default flags (the baseline)
    <set>       runsc-cuda with that set (config ``tuning = "all"`` and the five
                checkpoint_*/restore_* keys given below), checkpoint + restore

Each cycle: start a fresh container, wait until its memory is written, ask for
its stats once (``runsc events --stats``: what ``docker stats``, the kubelet and
cAdvisor do all the time; it makes the sandbox count touched memory as
committed), checkpoint (the container stops), delete it, optionally drop the
page cache (``--cache cold``), then restore into a new container and time:

    ckpt s        the checkpoint call
    image MiB     the image folder's size (apparent bytes)
    restore s     the restore call until it returns
    running s     restore start until the program writes its first file again
    all back s    restore start until the program has read one word of every page
                  (every page is back; it also checks their sum)

    python3 bench/tuning.py [--runsc PATH] [--gib 0.5] [--patterns random,zero]
                            [--sets runsc,defaults,...] [--reps 3] [--cache cold,warm,copied]
                            [--out results.json]

Needs root (runsc), gcc, and a runsc (default: scripts/build-runsc.sh's, built on first use).
Not a timed test: a measurement to read.  It leaves nothing behind: every sandbox under its runsc
--root is deleted and its folder removed at the end, also when a cycle fails or the run is
interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import sandboxes  # noqa: E402 - scripts/sandboxes.py

MEMHOG = Path(__file__).resolve().parent / "memhog.c"
KEYS = (
    "checkpoint_compression",
    "checkpoint_exclude_committed_zero_pages",
    "checkpoint_direct",
    "restore_background",
    "restore_direct",
)


@dataclass(frozen=True)
class OptionSet:
    name: str
    about: str
    keys: dict[str, str] | None  # None: runsc itself
    flags: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # runsc itself: (checkpoint, restore) flags

    def env(self) -> dict[str, str]:
        assert self.keys is not None
        return {"RUNSC_CUDA_TUNING": "all", **{f"RUNSC_CUDA_{k.upper()}": v for k, v in self.keys.items()}}


def _keys(comp: str = "none", zero: bool = False, cdirect: bool = False, bg: bool = False, rdirect: bool = False):  # type: ignore[no-untyped-def]
    word = {True: "true", False: "false"}
    return dict(
        zip(KEYS, (comp, word[zero], word[cdirect], word[bg], word[rdirect]), strict=True),
    )


SETS = {
    s.name: s
    for s in (
        OptionSet("runsc", "runsc called directly, its default flags", None),
        OptionSet(
            "runsc+flags",
            "runsc called directly with the flags runsc-cuda's defaults add (runsc-cuda's own cost left out)",
            None,
            (("--compression=none", "--exclude-committed-zero-pages"), ("--background", "--direct")),
        ),
        OptionSet("flate", "--compression=flate-best-speed", _keys(comp="flate-best-speed")),
        OptionSet("zero", "--compression=none --exclude-committed-zero-pages", _keys(zero=True)),
        OptionSet("direct", "--compression=none; checkpoint and restore --direct", _keys(cdirect=True, rdirect=True)),
        OptionSet("bg", "--compression=none; restore --background", _keys(bg=True)),
        OptionSet("bg+zero", "zero + restore --background", _keys(zero=True, bg=True)),
        OptionSet(
            "defaults",
            "runsc-cuda's defaults: --compression=none --exclude-committed-zero-pages; restore --background --direct",
            _keys(zero=True, bg=True, rdirect=True),
        ),
        OptionSet("all", "defaults + checkpoint --direct", _keys(zero=True, cdirect=True, bg=True, rdirect=True)),
    )
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def find_runsc(given: str | None) -> str:
    if given:
        return given
    out = subprocess.run(["bash", str(REPO / "scripts" / "build-runsc.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"scripts/build-runsc.sh failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip()


def build_memhog(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    binary = dest / "memhog"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(MEMHOG)], check=True)
    return binary


def write_bundle(folder: Path, rootfs: Path, work: Path, gib: float, pattern: str) -> Path:
    """A bundle running memhog as PID 1, with ``work`` bind-mounted read-write at /work."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/memhog", f"{gib:g}", pattern, "/work"],
            "env": ["PATH=/"],
            "cwd": "/",
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "memhog",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/work", "type": "bind", "source": str(work), "options": ["rbind", "rw"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }
    (folder / "config.json").write_text(json.dumps(spec))
    return folder


def wait_file(path: Path, timeout: float, poll: float = 0.002) -> float:
    """time.monotonic() when ``path`` appears (RuntimeError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return time.monotonic()
        time.sleep(poll)
    raise RuntimeError(f"{path} did not appear in {timeout:.0f}s")


def run_to_files(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """Exit status, stderr and wall time of a call whose stdio goes to files, not pipes: a sandbox that
    runsc run/restore --detach leaves behind keeps them open."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        code = subprocess.run(
            argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout, check=False
        ).returncode
        seconds = time.monotonic() - start
        err.seek(0)
        return code, err.read().decode(errors="replace"), seconds


def image_bytes(image: Path) -> int:
    return sum(p.stat().st_size for p in image.rglob("*") if p.is_file())


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runsc = find_runsc(args.runsc)
        self.work = Path(tempfile.mkdtemp(prefix="tuning-", dir=args.work))
        self.root = self.work / "root"
        self.rootfs = self.work / "rootfs"
        try:
            build_memhog(self.rootfs)
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        (self.rootfs / "work").mkdir()
        (self.rootfs / "proc").mkdir()
        self.config = self.work / "runsc-cuda.toml"
        self.config.write_text(
            f"runsc = {json.dumps(self.runsc)}\n"
            f"state_dir = {json.dumps(str(self.work / 'state'))}\n"
            f"log_file = {json.dumps(str(self.work / 'runsc-cuda.log'))}\n"
        )
        self.results: list[dict[str, Any]] = []
        self.cycle_no = 0

    def globals(self, log: Path) -> list[str]:
        return ["--root", str(self.root), "--network=none", "--log", str(log), "--log-format", "json"]

    def call(self, which: OptionSet, log: Path, *args: str, timeout: float = 900) -> float:
        """One checkpoint/restore call, as runsc or as runsc-cuda; its wall time."""
        if which.keys is None:
            verb, rest = args[0], args[1:]
            extra = which.flags[0] if verb == "checkpoint" else which.flags[1]
            argv = [self.runsc, *self.globals(log), verb, *extra, *rest]
            env = dict(os.environ)
        else:
            argv = [sys.executable, "-m", "runsc_cuda", *self.globals(log), *args]
            env = {**os.environ, "PYTHONPATH": str(REPO), "RUNSC_CUDA_CONFIG": str(self.config), **which.env()}
        code, err, seconds = run_to_files(argv, env, timeout)
        if code != 0:
            raise RuntimeError(f"{' '.join(args[:1])} ({which.name}) failed: {err.strip()[-800:]}")
        return seconds

    def runsc_quiet(self, *args: str) -> None:
        run_to_files([self.runsc, "--root", str(self.root), *args], dict(os.environ), 120)

    def cycle(self, which: OptionSet, gib: float, pattern: str, cache: str, rep: int) -> dict[str, Any]:
        self.cycle_no += 1
        load = float(Path("/proc/loadavg").read_text().split()[0])
        cid = f"mh{self.cycle_no}"
        box = self.work / cid
        work = box / "work"
        work.mkdir(parents=True)
        bundle = write_bundle(box / "bundle", self.rootfs, work, gib, pattern)
        log = box / "log.json"
        image = box / "image"
        try:
            code, err, _ = run_to_files(
                [self.runsc, *self.globals(log), "run", "--detach", "--bundle", str(bundle), cid], dict(os.environ), 120
            )
            if code != 0:
                raise RuntimeError(f"runsc run {cid}: {err.strip()[-800:]}")
            wait_file(work / "ready", 600)
            if self.args.stats:
                self.runsc_quiet("events", "--stats", cid)
            ckpt_s = self.call(which, log, "checkpoint", "--image-path", str(image), cid)
            size = image_bytes(image)
            self.runsc_quiet("delete", "--force", cid)
            (work / "trigger").write_text("1\n")
            if cache == "copied":  # as containerd unpacks a checkpoint right before restore: dirty page cache
                shutil.copytree(image, box / "copied")
                shutil.rmtree(image)
                image = box / "copied"
            cold = cache == "cold" and drop_caches()
            start = time.monotonic()
            restore_s = self.call(
                which, log, "restore", "--image-path", str(image), "--bundle", str(bundle), "--detach", cid
            )
            running = wait_file(work / "running.1", 600) - start
            all_back = wait_file(work / "done.1", 600) - start
            touch_s, ok = (work / "done.1").read_text().split()
            if ok != "1":
                raise RuntimeError(f"{cid}: the memory changed across checkpoint/restore")
            watched = ""
            if which.keys is not None and which.keys["restore_background"] == "true":
                watched = self.watcher_line(log)
        finally:
            self.runsc_quiet("kill", cid, "KILL")
            self.runsc_quiet("delete", "--force", cid)
            shutil.rmtree(box, ignore_errors=True)
        mb = gib * 1024
        row = {
            "set": which.name,
            "gib": gib,
            "pattern": pattern,
            "cache": "cold" if cold else ("copied" if cache == "copied" else "warm"),
            "rep": rep,
            "ckpt_s": ckpt_s,
            "image_mib": size / (1 << 20),
            "restore_s": restore_s,
            "running_s": running,
            "all_back_s": all_back,
            "touch_s": float(touch_s),
            "ckpt_mb_s": mb / ckpt_s,
            "restore_mb_s": mb / all_back,
            "watcher": watched,
            "load": load,
        }
        say(
            f"  {which.name:>10} {pattern:>6} {gib:g} GiB {row['cache']}: ckpt {ckpt_s:6.2f}s image "
            f"{row['image_mib']:8.1f} MiB restore {restore_s:5.2f}s running {running:5.2f}s all back {all_back:5.2f}s"
        )
        return row

    def watcher_line(self, log: Path, timeout: float = 60) -> str:
        """runsc-cuda's background-restore line in log.json (the load is done: every page was read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in log.read_text().replace("}{", "}\n{").splitlines():
                    if "background restore of" in line:
                        msg = str(json.loads(line)["msg"])
                        if "failed" in msg:
                            raise RuntimeError(msg)
                        return msg
            time.sleep(0.05)
        raise RuntimeError(f"no background-restore line in {log}")

    def run(self) -> int:
        sets = [SETS[name] for name in self.args.sets.split(",")]
        gibs = [float(g) for g in self.args.gib.split(",")]
        patterns = self.args.patterns.split(",")
        caches = self.args.cache.split(",")
        say(f"runsc {self.runsc}; work folder {self.work} ({self.filesystem()})")
        started = time.monotonic()
        try:
            for rep in range(self.args.reps):
                for gib in gibs:
                    for pattern in patterns:
                        for cache in caches:
                            k = rep % len(sets)
                            for which in sets[k:] + sets[:k]:
                                self.results.append(self.cycle(which, gib, pattern, cache, rep))
        finally:
            self.remove()
        elapsed = time.monotonic() - started
        table = self.table(sets)
        print(table)
        load = statistics.median(r["load"] for r in self.results) if self.results else 0.0
        print(
            f"\n{len(self.results)} cycles in {elapsed / 60:.1f} min; medians of {self.args.reps} repetitions; "
            f"median 1-minute load average {load:.1f} on {os.cpu_count()} CPUs"
        )
        if self.args.out:
            doc = {
                "args": vars(self.args),
                "runsc": self.runsc,
                "sets": {s.name: s.about for s in sets},
                "results": self.results,
                "table": table,
            }
            Path(self.args.out).write_text(json.dumps(doc, indent=2))
        return 0

    def remove(self) -> None:
        """Every sandbox under the root (kill, delete --force, leftover processes, runsc's null-netns mount),
        then the folder."""
        for note in sandboxes.remove_sandboxes(self.runsc, self.root, [self.work]):
            say(f"cleanup: {note}")
        shutil.rmtree(self.work, ignore_errors=True)

    def filesystem(self) -> str:
        out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(self.work)], capture_output=True)
        return out.stdout.decode().strip() or "unknown filesystem"

    def table(self, sets: list[OptionSet]) -> str:
        head = (
            "| set | pattern | GiB | cache | ckpt s | image MiB | restore s | running s | all back s "
            "| ckpt MB/s | restore MB/s | running vs runsc |"
        )
        rows = [head, "|" + " --- |" * 12]
        groups: dict[tuple[float, str, str], dict[str, dict[str, float]]] = {}
        for r in self.results:
            key = (r["gib"], r["pattern"], r["cache"])
            cell = groups.setdefault(key, {}).setdefault(r["set"], {})
            for field in ("ckpt_s", "image_mib", "restore_s", "running_s", "all_back_s", "ckpt_mb_s", "restore_mb_s"):
                cell.setdefault(field, [])  # type: ignore[arg-type]
                cell[field].append(r[field])  # type: ignore[attr-defined]
        for (gib, pattern, cache), by_set in sorted(groups.items()):
            med = {name: {f: statistics.median(v) for f, v in cells.items()} for name, cells in by_set.items()}  # type: ignore[call-overload]
            base = med.get("runsc", {}).get("running_s")
            for s in sets:
                m = med.get(s.name)
                if m is None:
                    continue
                speed = f"{base / m['running_s']:.1f}x" if base else ""
                rows.append(
                    f"| {s.name} | {pattern} | {gib:g} | {cache} | {m['ckpt_s']:.2f} | {m['image_mib']:.1f} "
                    f"| {m['restore_s']:.2f} | {m['running_s']:.2f} | {m['all_back_s']:.2f} | {m['ckpt_mb_s']:.0f} "
                    f"| {m['restore_mb_s']:.0f} | {speed} |"
                )
        legend = "\n".join(f"- `{s.name}`: {s.about}" for s in sets)
        return "\n".join(rows) + "\n\n" + legend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runsc", help="the runsc binary (default: scripts/build-runsc.sh's pinned build)")
    parser.add_argument("--gib", default="0.5", help="memory sizes, comma-separated (default 0.5; full: 1,2,4)")
    parser.add_argument("--patterns", default="random,zero", help="random,zero (default both)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"option sets (default all: {','.join(SETS)})")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every cycle (default 3)")
    parser.add_argument(
        "--cache",
        default="cold",
        help="cold (drop the page cache before restore), warm (the image as checkpoint left it), copied (copied "
        "to a new folder just before restore, as containerd unpacks one), comma-separated (default cold)",
    )
    parser.add_argument("--no-stats", dest="stats", action="store_false", help="skip `runsc events --stats`")
    parser.add_argument("--work", default="/var/tmp", help="where images are written (default /var/tmp)")
    parser.add_argument("--out", help="write every measurement and the table to this JSON file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("SKIP: runsc needs root")
        return 0
    if not shutil.which("gcc"):
        print("SKIP: no gcc to build bench/memhog.c")
        return 0
    sandboxes.interrupt_on_termination()  # SIGTERM/SIGHUP: Bench.run's clean-up still runs
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
