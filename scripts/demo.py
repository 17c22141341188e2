#!/usr/bin/env python3
"""A walk through runsc-cuda's main job, over the fake runsc and cuda-checkpoint in tests/fakes.

create -> start -> pause -> checkpoint --leave-running -> resume -> checkpoint (stop)
-> delete -> restore -> delete, for a container Docker made with --device /dev/nvidia*,
printing at each step what runsc-cuda changed: the bundle, runsc's argv, the calls it
made itself and the CUDA processes' states.

    python3 scripts/demo.py [--engine exec|native]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import fakes  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "docker-bundles"
BOLD, DIM, END = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


class Demo:
    def __init__(self, work: Path, engine: str) -> None:
        self.work = work
        self.root = work / "runsc-root"
        self.bundle = work / "bundle"
        bins = fakes.install(str(work / "bin"))
        self.env = {
            "PATH": f"{work / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "RUNSC_CUDA_CONFIG": os.devnull,
            "RUNSC_CUDA_RUNSC": bins["runsc"],
            "RUNSC_CUDA_CUDA_CHECKPOINT": bins["cuda-checkpoint"],
            "RUNSC_CUDA_ENGINE": engine,
            "RUNSC_CUDA_STATE_DIR": str(work / "state"),
            "RUNSC_CUDA_LOG_FILE": str(work / "runsc-cuda.log"),
        }
        self.seen_calls = 0

    def step(self, title: str, *args: str) -> None:
        print(f"\n{BOLD}$ runsc-cuda {' '.join(args)}{END}   {DIM}# {title}{END}")
        cmd = [
            sys.executable,
            "-m",
            "runsc_cuda",
            "--root",
            str(self.root),
            "--log",
            str(self.bundle / "log.json"),
            "--log-format",
            "json",
            *args,
        ]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        for line in (out.stdout + out.stderr).splitlines():
            print(f"  {line}")
        if out.returncode != 0:
            raise SystemExit(f"step failed with exit status {out.returncode}")
        self.show_calls()

    def show_calls(self) -> None:
        calls = [json.loads(x) for x in (self.root / "calls.jsonl").read_text().splitlines()]
        skip = 6  # --root R --log L --log-format json
        for call in calls[self.seen_calls :]:
            argv = call["argv"][skip:]
            print(f"  {DIM}runsc{END} {' '.join(argv)}")
        self.seen_calls = len(calls)
        states = self.root / "c1" / "cuda.json"
        if states.exists():
            print(f"  CUDA processes: {json.loads(states.read_text())}")

    def run(self) -> None:
        doc = json.loads((FIXTURES / "gpu-devices.json").read_text())
        doc["annotations"] = {"test.fake-runsc/pids": "1,23,24,31", "test.fake-runsc/cuda-pids": "23,24"}
        self.bundle.mkdir()
        (self.bundle / "config.json").write_text(json.dumps(doc, separators=(",", ":")))
        print(
            f"{BOLD}A bundle Docker wrote for `docker run --device /dev/nvidia0 ...`; the fake sandbox will hold "
            f"PIDs 1, 23, 24, 31, of which 23 and 24 use CUDA.{END}"
        )
        self.step(
            "GPU bundle: mount cuda-checkpoint, turn nvproxy on",
            "create",
            "--bundle",
            str(self.bundle),
            "--pid-file",
            str(self.bundle / "init.pid"),
            "c1",
        )
        after = json.loads((self.bundle / "config.json").read_text())
        print(f"  {BOLD}config.json changed:{END}")
        for key in sorted(set(doc) | set(after)):
            if doc.get(key) != after.get(key):
                old, new = doc.get(key) or [], after.get(key) or []
                added = [item for item in new if item not in old] if isinstance(new, list) else [new]
                for item in added:
                    print(f"    {key} += {json.dumps(item)}")
        self.step("pass-through", "start", "c1")
        self.step("docker checkpoint create pauses first", "pause", "c1")
        image1 = self.work / "checkpoint-1"
        self.step(
            "freeze CUDA, save, thaw",
            "checkpoint",
            "--image-path",
            str(image1),
            "--work-path",
            str(self.bundle / "work"),
            "--leave-running",
            "c1",
        )
        self.step("containerd resumes", "resume", "c1")
        self.step("pause again for a checkpoint that stops the container", "pause", "c1")
        image2 = self.work / "checkpoint-2"
        self.step(
            "freeze CUDA and save; the container stops",
            "checkpoint",
            "--image-path",
            str(image2),
            "--work-path",
            str(self.bundle / "work"),
            "c1",
        )
        self.step("docker start --checkpoint deletes the old task first", "delete", "c1")
        self.step(
            "restore: patch the bundle like create, let runsc restore, thaw CUDA",
            "restore",
            "--image-path",
            str(image2),
            "--work-path",
            str(self.bundle / "work"),
            "--detach",
            "--pid-file",
            str(self.bundle / "init.pid"),
            "-no-subreaper",
            "--bundle",
            str(self.bundle),
            "c1",
        )
        self.step("pass-through", "state", "c1")
        self.step("pass-through", "delete", "--force", "c1")
        sidecar = json.loads((image2 / "runsc-cuda.json").read_text())
        print(f"\n{BOLD}The image's runsc-cuda.json:{END}")
        print(
            "  "
            + json.dumps(
                {k: sidecar[k] for k in ("engine", "runsc_version", "cuda_processes", "timings")}, indent=1
            ).replace("\n", "\n  ")
        )
        print(f"\n{BOLD}log.json (what containerd reads):{END}")
        for line in (self.bundle / "log.json").read_text().splitlines():
            print(f"  {json.loads(line)['msg']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("exec", "native"), default="exec")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runsc-cuda-demo-"))
    try:
        Demo(work, args.engine).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
