#!/usr/bin/env python3
"""Benchmark: exec-engine freeze + thaw wall time against the number of CUDA processes.

A fake cuda-checkpoint that takes a fixed time per call (FAKE_CUDA_DELAY) stands
in for the real one (0.4-7 s per call, most of it CUDA initialisation). Each run
is a real `runsc-cuda checkpoint --leave-running` over the fake runsc; the
phase timings come from the image sidecar. "one by one" is the same code with
max_parallel_cuda_calls = 1, the seed design's behaviour, measured side by side.

    python3 bench/freeze.py [--delay 0.5] [--repeat 3] [--counts 1,2,4,8,16]

Goal (issue 3): 16 processes within 2x the freeze + thaw time of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import fakes  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "docker-bundles" / "gpu-devices.json"


def one_run(work: Path, env: dict[str, str], count: int, run: int) -> dict[str, float]:
    cid = f"c{count}-{run}"
    bundle = work / cid
    bundle.mkdir()
    doc = json.loads(FIXTURE.read_text())
    cuda = [100 + i for i in range(count)]
    doc["annotations"] = {
        "test.fake-runsc/pids": ",".join(map(str, [1, *cuda])),
        "test.fake-runsc/cuda-pids": ",".join(map(str, cuda)),
    }
    (bundle / "config.json").write_text(json.dumps(doc))
    base = [sys.executable, "-m", "runsc_cuda", "--root", str(work / "root")]
    for args in (["create", "--bundle", str(bundle), cid], ["start", cid]):
        subprocess.run([*base, *args], env=env, check=True)
    image = work / f"image-{cid}"
    subprocess.run([*base, "checkpoint", "--image-path", str(image), "--leave-running", cid], env=env, check=True)
    timings = json.loads((image / "runsc-cuda.json").read_text())["timings"]
    subprocess.run([*base, "delete", "--force", cid], env=env, check=True)
    freeze = timings.get("lock", 0) + timings.get("checkpoint", 0)
    thaw = timings.get("restore", 0) + timings.get("unlock", 0)
    return {"discover": timings.get("discover", 0), "freeze": freeze, "thaw": thaw, "freeze+thaw": freeze + thaw}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds each fake cuda-checkpoint call takes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--counts", default="1,2,4,8,16")
    parser.add_argument("--sequential-counts", default="1,16", help="counts also run one by one")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    seq_counts = [int(c) for c in args.sequential_counts.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="runsc-cuda-bench-"))
    try:
        bins = fakes.install(str(work / "bin"))
        env = {
            "PATH": f"{work / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "RUNSC_CUDA_CONFIG": os.devnull,
            "RUNSC_CUDA_RUNSC": bins["runsc"],
            "RUNSC_CUDA_CUDA_CHECKPOINT": bins["cuda-checkpoint"],
            "RUNSC_CUDA_ENGINE": "exec",
            "RUNSC_CUDA_STATE_DIR": str(work / "state"),
            "FAKE_CUDA_DELAY": str(args.delay),
        }
        serial = iter(range(1_000_000))
        designs = [("parallel", "64", counts), ("one by one", "1", seq_counts)]
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        # Interleave designs and counts in every repetition so machine noise hits all alike.
        for run in range(args.repeat):
            for design, parallel, which in designs:
                for count in which:
                    if design == "one by one" and run > 0 and count > 1:
                        continue  # 16 one by one is long and steady: one run tells
                    env_run = dict(env, RUNSC_CUDA_MAX_PARALLEL_CUDA_CALLS=parallel)
                    results.setdefault((design, count), []).append(one_run(work, env_run, count, next(serial)))
        base = statistics.median(r["freeze+thaw"] for r in results[("parallel", 1)])
        print(f"exec engine, fake cuda-checkpoint taking {args.delay}s per call, medians of {args.repeat} runs")
        print(
            f"{'design':<12} {'CUDA procs':>10} {'discover s':>10} {'freeze s':>9} {'thaw s':>8} "
            f"{'freeze+thaw s':>13} {'x of 1 proc':>11}"
        )
        for (design, count), runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{design:<12} {count:>10} {med['discover']:>10.2f} {med['freeze']:>9.2f} {med['thaw']:>8.2f} "
                f"{med['freeze+thaw']:>13.2f} {med['freeze+thaw'] / base:>11.2f}"
            )
        sixteen = results.get(("parallel", 16))
        if sixteen:
            ratio = statistics.median(r["freeze+thaw"] for r in sixteen) / base
            print(f"goal: 16 processes within 2.0x of 1 -> {ratio:.2f}x {'MET' if ratio <= 2.0 else 'MISSED'}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
