#!/usr/bin/env python3
"""Benchmark: where the time of a pod restored through the CRI goes (runsc, runsc-cuda, the rest).

On a private containerd 2.x node (tests/e2e/cri_stack.py) whose runtime calls are
recorded (tests/e2e/recorder.py: each call's start and duration, caller ->
runsc-cuda and runsc-cuda -> runsc), a pod (pause + ``mem``, ``--mib`` MiB held
by awk) is checkpointed with ``crictl checkpoint --export`` and restored
``--rounds`` times from the image folder (``crictl runp`` with
``dev.runsc-cuda.restore-from``, ``create``, ``start``).  Each restore splits
into:

- runsc: the runsc calls runsc-cuda made;
- runsc-cuda: its own processes (create, start), less their runsc calls;
- the rest: containerd, its shim, crictl (the whole, less runsc-cuda's calls).

The recorder costs a Python start per hop; it is measured (around ``runsc
--version``, against the bare call) and taken off each hop. Not a timed test: a
measurement to read, beside bench/k8s_restore.py's ratio. Needs root.

    python bench/k8s_overhead.py [--mib 1024] [--rounds 5] [--program PATH] [--detail-log] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(REPO / "bench"))

from k8s_restore import RESTORE_FROM, fill, node_arguments, node_words, report, table_lines  # noqa: E402

from tests.e2e.cri_stack import CriStack, running  # noqa: E402
from tests.e2e.stack import wait_for  # noqa: E402

OUTER, INNER = "caller->runsc-cuda", "runsc-cuda->runsc"


def median_run(argv: list[str], n: int = 7) -> float:
    times = []
    for _ in range(n):
        started = time.monotonic()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def one_restore(cri: CriStack, folder: Path, mib: int, tag: str, recorder: float) -> list[tuple[str, float]]:
    """A pod restored from ``folder`` (and removed): each row's seconds."""
    seen = len(cri.recorded_calls.read_text().splitlines())
    started = time.monotonic()
    restored = cri.run_pod(f"restored-{tag}", {RESTORE_FROM: str(folder)})
    cri.start_container(cri.create(restored, "mem", fill(mib)))
    total = time.monotonic() - started
    calls = [json.loads(line) for line in cri.recorded_calls.read_text().splitlines()[seen:]]
    outer = [c["seconds"] for c in calls if c["tag"] == OUTER]
    inner = [c["seconds"] for c in calls if c["tag"] == INNER]
    # A hop's "seconds" runs from its recorder's start to the end of the program it ran; the
    # recorder's Python start and its bookkeeping fall outside them, inside its caller's time.
    runsc = sum(inner)
    own = sum(outer) - sum(inner) - recorder * len(inner)
    rest = total - sum(outer) - recorder * len(outer)
    cri.remove_pod(restored)
    return [
        ("whole restore (crictl runp + create + start)", total),
        (f"runsc ({len(inner)} calls)", runsc),
        (f"runsc-cuda's own ({len(outer)} calls: create, start of pause and mem)", own),
        ("the rest: containerd, its shim, crictl", rest),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    node_arguments(parser, rounds=5)
    parser.add_argument("--against", type=Path, help="another runsc-cuda (an earlier build): each round restores "
                        "with both, in turns, and its rows say (against)")  # fmt: skip
    ns = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rko-", dir="/tmp"))
    rows: dict[str, list[float]] = {}
    with running(root, record=True, program=ns.program and str(ns.program.resolve()), detail_log=ns.detail_log) as cri:
        recorder = median_run([str(cri.bin / "rec-runsc"), "--version"]) - median_run([cri.tools.runsc, "--version"])
        pod = cri.run_pod("origin")
        mem = cri.create(pod, "mem", fill(ns.mib))
        cri.start_container(mem)
        wait_for("the fill", lambda: "filled" in cri.logs(mem), 600, 0.5)
        archive = cri.checkpoints / "origin.tar"
        cri.crictl("checkpoint", f"--export={archive}", mem, timeout=600)
        folder = cri.checkpoints / "origin"
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        programs = [("", cri.runsc_cuda)]
        if ns.against is not None:
            programs.append((" (against)", str(ns.against.resolve())))
        for n in range(ns.rounds):
            for suffix, program in programs if n % 2 == 0 else programs[::-1]:
                cri.use_program(program)
                for label, value in one_restore(cri, folder, ns.mib, f"{n}{suffix[2:3]}", recorder):
                    rows.setdefault(label + suffix, []).append(value)
        cri.remove_pod(pod)
    shutil.rmtree(root, ignore_errors=True)
    head = f"pod: pause + mem ({ns.mib} MiB); restored from the image folder; {ns.rounds} rounds; recorder "
    head += f"{recorder * 1000:.0f} ms a hop (taken off); {node_words(ns)}"
    if ns.against is not None:
        head += f"; against: {ns.against}"
    report(table_lines(head, rows), rows, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
