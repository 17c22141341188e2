#!/usr/bin/env python3
"""Benchmark: a pod restored through Kubernetes' CRI (runsc-cuda's restore-from) against runsc directly.

On a private containerd 2.x node (tests/e2e/cri_stack.py) a pod (pause + ``mem``, a
container that holds ``--mib`` MiB (a power of two) in awk's memory with non-zero bytes and sleeps) is:

- checkpointed through the CRI (``crictl checkpoint --export``: containerd pauses,
  runsc-cuda checkpoints, containerd writes the archive) and with ``runsc checkpoint
  --leave-running`` on the same container;
- restored until running through the CRI: ``crictl runp`` with
  ``dev.runsc-cuda.restore-from`` + ``crictl create`` + ``crictl start`` of ``mem``,
  from the archive (first: unpacked into the cache; then: the cache reused) and from
  the image folder; against ``runsc restore --detach`` of the same image for the pause
  container and then ``mem`` (copies of the original bundles, fresh root filesystems).

Goal: CRI restore within 1.25x of runsc's. Not a timed test: a measurement to read.
Needs root. Leaves nothing behind (the stack's own cleanup).

The node runs ``--program`` as runsc-cuda (default: the venv's console script; the
packages install dist/runsc-cuda-*/runsc-cuda, ``make dist``) with the shipped
logging (no detailed log; ``--detail-log``: debug, as the tests' node).

    python bench/k8s_restore.py [--mib 1024] [--rounds 3] [--program PATH] [--detail-log] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.cri_stack import CriStack, Pod, running  # noqa: E402
from tests.e2e.stack import busybox_rootfs, wait_for  # noqa: E402

RESTORE_FROM = "dev.runsc-cuda.restore-from"


def fill(mib: int) -> list[str]:
    """awk holds a string of ``mib`` MiB (a power of two) in its own memory, made by doubling."""
    doublings = (mib * 2**20).bit_length() - 1
    script = f'BEGIN {{ s = "x"; for (i = 0; i < {doublings}; i++) s = s s; print "filled"; fflush(); '
    script += 'while (1) system("sleep 3600") }'
    return ["awk", script]


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def cri_restore(cri: CriStack, source: str, mib: int, tag: str) -> tuple[float, Pod]:
    """runp + create + start until the container runs: seconds, and the pod."""
    started = time.monotonic()
    pod = cri.run_pod(f"bench-{tag}", {RESTORE_FROM: source})
    cid = cri.create(pod, "mem", fill(mib))
    cri.start_container(cid)
    seconds = time.monotonic() - started
    assert cri.container_state(cid) == "CONTAINER_RUNNING"
    held = cri.exec(cid, "ps")
    assert "awk" in held.stdout, (held.stdout, held.stderr)
    return seconds, pod


def direct(cri: CriStack, image: str, work: Path, n: int, cold: bool = False) -> float:
    """runsc restore --detach of the pause container, then of mem: the specs the image saved, fresh root
    filesystems (what runsc compares on restore is the saved spec).  ``cold``: runsc create + start of the
    same two containers instead, mem sleeping (the CRI cold start's reference without containerd)."""
    from runsc_cuda.image import statefile

    pod = statefile.read(image)
    rootfs = busybox_rootfs(cri.tools.busybox)
    names = {"pause": pod.sandbox_name or "", "mem": "mem"}
    ids = {name: f"direct{n}{'c' if cold else ''}-{name}" for name in names}
    made = {}
    for name, saved in names.items():
        folder = work / f"{n}{'c' if cold else ''}-{name}"
        (folder / "rootfs").mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(rootfs)) as tar:
            tar.extractall(folder / "rootfs", filter="tar")
        doc = pod.specs[saved]
        doc["root"] = {**doc.get("root", {}), "path": str(folder / "rootfs")}
        doc.setdefault("annotations", {})["io.kubernetes.cri.sandbox-id"] = ids["pause"]
        if cold and name == "mem":
            doc["process"]["args"] = ["sleep", "100000"]
        (folder / "config.json").write_text(json.dumps(doc))
        made[name] = folder
    runsc = [cri.tools.runsc, "--root", str(cri.runsc_root)]
    # Not a pipe: the sandbox keeps the container's stdio and a pipe would never close.
    quiet = {"check": True, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "timeout": 300}
    started = time.monotonic()
    for name in ("pause", "mem"):
        if cold:
            subprocess.run([*runsc, "create", "--bundle", str(made[name]), ids[name]], **quiet)  # type: ignore[call-overload]
            subprocess.run([*runsc, "start", ids[name]], **quiet)  # type: ignore[call-overload]
        else:
            argv = [*runsc, "restore", "--detach", f"--image-path={image}", "--bundle", str(made[name]), ids[name]]
            subprocess.run(argv, **quiet)  # type: ignore[call-overload]
    seconds = time.monotonic() - started
    state = json.loads(subprocess.run([*runsc, "state", ids["mem"]], capture_output=True, check=True).stdout)
    assert state["status"] == "running", state
    for name in ("mem", "pause"):
        subprocess.run([*runsc, "kill", ids[name], "KILL"], capture_output=True, check=False)
    for name in ("mem", "pause"):
        subprocess.run([*runsc, "delete", "--force", ids[name]], capture_output=True, check=False, timeout=60)
    return seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    node_arguments(parser, rounds=3)
    ns = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rkb-", dir="/tmp"))
    rows: dict[str, list[float]] = {}
    with running(root, program=ns.program and str(ns.program.resolve()), detail_log=ns.detail_log) as cri:
        pod = cri.run_pod("bench-origin")
        mem = cri.create(pod, "mem", fill(ns.mib))
        cri.start_container(mem)
        wait_for("the fill", lambda: "filled" in cri.logs(mem), 600, 0.5)
        for n in range(ns.rounds):
            archive = cri.checkpoints / f"bench-{n}.tar"
            rows.setdefault("checkpoint: crictl checkpoint --export", []).append(
                timed(lambda a=archive: cri.crictl("checkpoint", f"--export={a}", mem, timeout=600))
            )
            image = root / f"runsc-image-{n}"
            argv_ = [cri.tools.runsc, "--root", str(cri.runsc_root), "checkpoint", "--leave-running",
                     f"--image-path={image}", mem]  # fmt: skip
            rows.setdefault("checkpoint: runsc checkpoint --leave-running", []).append(
                timed(lambda a=argv_: subprocess.run(a, check=True, capture_output=True, timeout=600))
            )
            shutil.rmtree(image)
        archive = cri.checkpoints / "bench-0.tar"
        folder = cri.checkpoints / "bench-folder"
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        size = sum(f.stat().st_size for f in (folder / "checkpoint").iterdir())
        work = root / "direct"  # the origin pod keeps running: its bundles' mount sources stay
        for n in range(ns.rounds):
            if n > 0:  # a changed archive each round but the first: unpacked again
                os.utime(archive)
            for label, source in (
                ("restore: CRI, archive (unpacked now)", archive),
                ("restore: CRI, archive (cached)", archive),
                ("restore: CRI, image folder", folder),
            ):
                seconds, restored = cri_restore(cri, str(source), ns.mib, f"{n}-{len(rows)}")
                rows.setdefault(label, []).append(seconds)
                cri.remove_pod(restored)
            started = time.monotonic()
            cold = cri.run_pod(f"bench-cold-{n}")
            cri.start_container(cri.create(cold, "mem", ["sleep", "100000"]))
            rows.setdefault("reference: CRI cold start of the same pod, no memory (containerd's own cost)", []).append(
                time.monotonic() - started
            )
            cri.remove_pod(cold)
            rows.setdefault("reference: runsc create + start of the same pod, no memory", []).append(
                direct(cri, str(folder / "checkpoint"), work, n, cold=True)
            )
            rows.setdefault("restore: runsc restore --detach (pause, mem)", []).append(
                direct(cri, str(folder / "checkpoint"), work, n)
            )
        cri.remove_pod(pod)
    shutil.rmtree(root, ignore_errors=True)
    lines = table_lines(
        f"pod: pause + mem ({ns.mib} MiB held by awk); image {size / 2**20:.0f} MiB; {ns.rounds} rounds; "
        f"{node_words(ns)}",
        rows,
    )
    median = {label: statistics.median(values) for label, values in rows.items()}
    base = median["restore: runsc restore --detach (pause, mem)"]
    for label in ("restore: CRI, archive (cached)", "restore: CRI, image folder"):
        ratio = median[label] / base
        lines.append(f"{label} / runsc: {ratio:.2f}x (goal <= 1.25x: {'met' if ratio <= 1.25 else 'missed'})")
    cold = median["reference: CRI cold start of the same pod, no memory (containerd's own cost)"]
    cold -= median["reference: runsc create + start of the same pod, no memory"]
    extra = median["restore: CRI, archive (cached)"] - base
    lines.append(f"what the CRI adds: to a cold pod {cold:.2f} s, to a restored pod {extra:.2f} s; the goal allows "
                 f"{0.25 * base:.2f} s")  # fmt: skip
    report(lines, rows, ns)
    return 0


def node_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options both Kubernetes benchmarks take: the pod's memory, the rounds, the output, the node's runsc-cuda."""
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--out", type=Path, help="also write the table as JSON (bench/results/)")
    parser.add_argument("--program", type=Path, help="the runsc-cuda the node runs (default: the venv's console "
                        "script; dist/runsc-cuda-*/runsc-cuda is what the packages install)")  # fmt: skip
    parser.add_argument("--detail-log", action="store_true", help="runsc-cuda writes its detailed log at debug "
                        "level, as the tests' node does (default: the shipped config, no detailed log)")  # fmt: skip


def node_words(ns: argparse.Namespace) -> str:
    """Which runsc-cuda the node ran, and how it logged (for a table's head)."""
    log = "detailed log at debug" if ns.detail_log else "no detailed log"
    return f"runsc-cuda: {ns.program or 'the console script'}, {log}"


def table_lines(head: str, rows: dict[str, list[float]]) -> list[str]:
    """The head line (with the machine), then a markdown table of each row's median, min and max."""
    lines = [f"{head}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", "| what | median s | min s | max s |",
             "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for label, values in rows.items():
        lines.append(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    return lines


def report(lines: list[str], rows: dict[str, list[float]], ns: argparse.Namespace) -> None:
    """Print the table; with ``--out``, also write it and the raw figures as JSON (bench/results/)."""
    table = "\n".join(lines)
    print(table)
    if ns.out is not None:
        ns.out.write_text(json.dumps(
            {"mib": ns.mib, "rounds": ns.rounds, "program": str(ns.program or "console script"), "rows": rows,
             "table": table}, indent=2))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
