#!/usr/bin/env python3
"""Run the reliability suites and print their figures as a table (tried / survived / lost).

Each suite (tests/reliability/) counts its cases and appends its
figures to the file named by RUNSC_CUDA_RELIABILITY_FIGURES; this script runs
pytest on them with a temporary figures file and prints one Markdown row per
figure line, then one per suite (the table in docs/reliability.md).

    python3 bench/reliability.py [--scale N] [--suites faults,fuzz,crash,load,hostile] [-k EXPR]

The default test run (`make test`) runs the same suites at scale 1.  The suites' pytest session
ends with tests/hygiene.py's check (nothing of what they started may outlive them); Ctrl-C,
SIGTERM and SIGHUP are passed on to it and waited for, so that its fixtures still clean up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
SUITES = OrderedDict(
    [
        ("faults", ("1. Fault matrix (both engines)", ("tests/reliability/test_faults.py",))),
        ("fuzz", ("2. Fuzzing (hypothesis)", ("tests/reliability/test_fuzz.py",))),
        ("crash", ("3. Crash safety (SIGKILL)", ("tests/reliability/test_crash.py",))),
        ("load", ("4. Load", ("tests/reliability/test_load.py",))),
        (
            "hostile",
            (
                "5. Hostile input",
                ("tests/reliability/test_hostile.py", "tests/reliability/test_hostile_state_folders.py"),
            ),
        ),
    ]
)


def run(scale: int, names: list[str], expr: str | None) -> tuple[list[dict[str, object]], int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = dict(os.environ, RUNSC_CUDA_RELIABILITY_SCALE=str(scale), RUNSC_CUDA_RELIABILITY_FIGURES=str(figures))
        files = [f for n in names for f in SUITES[n][1]]
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
        if expr:
            argv += ["-k", expr]
        start = time.monotonic()
        code = run_pytest(argv, env)
        seconds = time.monotonic() - start
        rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    return rows, code, seconds


def run_pytest(argv: list[str], env: dict[str, str]) -> int:
    """pytest in a child process, waited for even when this one is interrupted: Ctrl-C, SIGTERM and
    SIGHUP are passed on, once (the child has a session of its own, so the terminal's Ctrl-C reaches
    only this process), and tests/hygiene.py turns them into an interrupt that runs the fixtures'
    teardown.  (subprocess.run would SIGKILL the child on an interrupt, and whatever its tests
    started would be left running.)"""
    child = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in signals}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def suite_of(row: dict[str, object]) -> str:
    name = str(row["suite"])
    for key, prefix in (
        ("faults", "fault matrix"),
        ("fuzz", "fuzz"),
        ("crash", "crash safety"),
        ("load", "load"),
        ("hostile", "hostile input"),
    ):
        if name.startswith(prefix):
            return key
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="RUNSC_CUDA_RELIABILITY_SCALE (default 1)")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES))
    parser.add_argument("-k", dest="expr", help="pytest -k expression (a subset of the tests)")
    args = parser.parse_args()
    names = [n.strip() for n in args.suites.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suites: {unknown}")
    rows, code, seconds = run(args.scale, names, args.expr)
    print(f"\n## Reliability figures (scale {args.scale}, {seconds:.0f} s, pytest exit {code})\n")
    print("| figure | tried | survived | lost | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['suite']} | {row['tried']} | {row['survived']} | {row['lost']} | {row['seconds']} |")
    print("\n| suite | tried | survived | lost |")
    print("| --- | ---: | ---: | ---: |")
    for key in names:
        mine = [r for r in rows if suite_of(r) == key]
        tried = sum(int(str(r["tried"])) for r in mine)
        survived = sum(int(str(r["survived"])) for r in mine)
        print(f"| {SUITES[key][0]} | {tried} | {survived} | {tried - survived} |")
    lost = [r for r in rows if int(str(r["lost"]))]
    for row in lost:
        print(f"\nlost in {row['suite']}:")
        for case, why in dict(row.get("lost_cases") or {}).items():  # type: ignore[call-overload]
            print(f"  {case}: {'; '.join(why)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
