#!/usr/bin/env python3
"""Benchmark: what runsc-cuda's pass-through costs per call (a benchmark, never a timed test).

containerd calls the runtime for every state/start/kill/delete/exec, and
runsc-cuda hands each of those to runsc with execv.  This measures the whole
call, ``runsc-cuda state ID`` with runsc pointed (RUNSC_CUDA_RUNSC) at a
trivial program, for:

  (a) ``python3 -S -c pass`` on the same interpreter: the baseline;
  (b) the console script pip installs (non-editable, a fresh venv that holds
      only runsc-cuda and its dependencies, byte code compiled);
  (c) the PyInstaller onedir binary, when one is built (``make dist``);

plus two reference rows: the trivial runsc alone (the floor) and the (b)
venv's ``python -c pass`` (interpreter and site, none of runsc-cuda).  Runs are interleaved (every round runs every
variant once, in a shuffled order) so drifts in machine load hit all alike;
the table shows medians and ratios against (a).  Goals: (b) <= 2.5x, (c) <= 2.0x.

    python bench/passthrough.py [--rounds 400] [--binary PATH] [--importtime]

``--importtime`` also prints ``-X importtime`` for the console script's
pass-through (the binary's needs a build with RUNSC_CUDA_PYI_IMPORTTIME=1, see
shim.spec).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
TRUE_C = "int main(void) { return 0; }\n"
GOALS = {"console script": 2.5, "binary": 2.0}


def log(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def base_python() -> str:
    """The interpreter behind this one (a venv's python is a link to it)."""
    return os.path.realpath(sys.executable)


def version() -> str:
    sys.path.insert(0, str(REPO))
    from runsc_cuda import __version__

    return __version__


def trivial_runsc() -> str:
    """A static program that exits 0 at once, or /bin/true without a C compiler."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / "true-static"
    if out.exists():
        return str(out)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        src = CACHE / "true.c"
        src.write_text(TRUE_C)
        for flags in (["-static", "-O2"], ["-O2"]):
            done = subprocess.run([cc, *flags, "-o", str(out), str(src)], capture_output=True, check=False)
            if done.returncode == 0:
                return str(out)
    log("no C compiler: using /bin/true as runsc")
    return shutil.which("true") or "/bin/true"


def console_script(venv: Path, reinstall: bool) -> Path:
    """``runsc-cuda`` pip-installed from this checkout into a venv of its own (not editable)."""
    script = venv / "bin" / "runsc-cuda"
    python = venv / "bin" / "python"
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # pip compiles .pyc files; make sure nothing stops it
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
        reinstall = True
    if reinstall or not script.exists():
        log(f"pip install {REPO} into {venv} (non-editable)")
        pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--force-reinstall"]
        subprocess.run([*pip, str(REPO)], check=True, env=env)
    site = subprocess.run(
        [str(python), "-c", "import runsc_cuda, os; print(os.path.dirname(runsc_cuda.__file__))"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=venv,  # not this checkout, whose runsc_cuda would shadow the installed one
    ).stdout.strip()
    if "site-packages" not in site:
        raise SystemExit(f"bench: runsc_cuda in {venv} resolves to {site}, not an installed copy")
    subprocess.run([str(python), "-m", "compileall", "-q", site], check=True, env=env)
    return script


def default_binary() -> Path | None:
    path = REPO / "dist" / f"runsc-cuda-{version()}-linux-{platform.machine()}" / "runsc-cuda"
    return path if path.exists() else None


def time_one(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def measure(variants: dict[str, list[str]], env: dict[str, str], rounds: int, warmup: int) -> dict[str, list[float]]:
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            time_one(variants[name], env)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(time_one(variants[name], env))
    return samples


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(samples: dict[str, list[float]], order: list[str], base: str) -> str:
    base_median = statistics.median(samples[base])
    lines = [
        f"| {'variant':<34} | median ms | p10 ms | p90 ms | vs (a) | goal |",
        f"| {'-' * 34} | --------: | -----: | -----: | -----: | ---- |",
    ]
    for name in order:
        values = samples[name]
        median = statistics.median(values)
        ratio = median / base_median
        key = name.split(") ", 1)[-1]
        goal = GOALS.get(key)
        verdict = "" if goal is None else f"<= {goal}x {'met' if ratio <= goal else 'MISSED'}"
        lines.append(
            f"| {name:<34} | {median * 1e3:9.2f} | {quantile(values, 0.1) * 1e3:6.2f} "
            f"| {quantile(values, 0.9) * 1e3:6.2f} | {ratio:5.2f}x | {verdict} |"
        )
    return "\n".join(lines)


def importtime(script: Path, env: dict[str, str]) -> str:
    python = script.parent / "python"
    done = subprocess.run(
        [str(python), "-X", "importtime", str(script), "state", "bench"], env=env, capture_output=True, text=True
    )
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    rows.sort(reverse=True)
    out = ["cumulative us | self us | module (console script pass-through, -X importtime)"]
    out += [f"{cum:13d} | {own:7d} | {name}" for cum, own, name in rows[:25]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400, help="timed runs of each variant (default 400)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs of each variant first")
    parser.add_argument("--binary", type=Path, help="the onedir binary (default: dist/ when built)")
    parser.add_argument("--no-binary", action="store_true", help="leave the binary out")
    parser.add_argument("--venv", type=Path, default=CACHE / "venv", help="the console script's venv")
    parser.add_argument("--no-reinstall", action="store_true", help="reuse the venv's runsc-cuda as it is")
    parser.add_argument("--no-script", action="store_true", help="leave the console script out (no pip, no network)")
    parser.add_argument("--importtime", action="store_true", help="also print the console script's import times")
    parser.add_argument("--json", type=Path, help="also write the samples and medians here")
    args = parser.parse_args(argv)

    runsc = trivial_runsc()
    script = None if args.no_script else console_script(args.venv.resolve(), not args.no_reinstall)
    binary = None if args.no_binary else (args.binary or default_binary())
    python = base_python()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["RUNSC_CUDA_RUNSC"] = runsc  # with it set, the pass-through never reads the config file

    variants = {"(a) python3 -S -c pass": [python, "-S", "-c", "pass"]}
    if script is not None:
        variants["(b) console script"] = [str(script), "state", "bench"]
    if binary is not None:
        variants["(c) binary"] = [str(binary), "state", "bench"]
    else:
        log("no binary (make dist builds one): leaving (c) out")
    variants["runsc alone (the floor)"] = [runsc, "state", "bench"]
    if script is not None:
        variants["venv python -c pass (site only)"] = [str(script.parent / "python"), "-c", "pass"]

    log(f"{args.rounds} rounds of {len(variants)} variants, interleaved")
    samples = measure(variants, env, args.rounds, args.warmup)
    print(
        f"pass-through: `runsc-cuda state bench`, runsc = {runsc}; "
        f"{args.rounds} interleaved rounds; python {platform.python_version()} ({python}); "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
    )
    print(table(samples, list(variants), "(a) python3 -S -c pass"))
    if binary is not None:
        print(f"binary: {binary}")
    if script is not None:
        print(f"console script: {script}")
    if args.importtime and script is not None:
        print()
        print(importtime(script, env))
    if args.json:
        medians = {name: statistics.median(values) for name, values in samples.items()}
        args.json.write_text(json.dumps({"medians_s": medians, "samples_s": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
