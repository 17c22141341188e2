"""Record how Docker and containerd call the OCI runtime, and what runsc-cuda passes on to runsc.

Run as root (about a minute):  .venv/bin/python -m tests.e2e.record_calls [OUTPUT.md]
Writes tests/e2e/recorded-calls.md by default (keeping what is written above its marker line).

Every runtime call goes through two recorders:

    dockerd/ctr -> containerd runc.v2 shim -> [caller->runsc-cuda] -> runsc-cuda -> [runsc-cuda->runsc] -> runsc

so each scenario shows what the caller asked for and what runsc really got.
Paths are shortened: <bundle> is the container's bundle folder (containerd's
state/io.containerd.runtime.v2.task/<namespace>/<id>), <id> its id (<hex-id>: another container's or an exec's), <root>
the stack's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .stack import (
    IMAGE,
    Stack,
    Tools,
    build_runsc,
    check_machine,
    runsc_cuda_program,
    wait_for,
)

COUNTER = 'trap "exit 42" TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo $i; sleep 0.2; done'
OUTER, INNER = "caller->runsc-cuda", "runsc-cuda->runsc"
MARKER = "<!-- Everything below is written by tests/e2e/record_calls.py; the text above is kept. -->"


class Recording:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sections: list[str] = []
        self.ids: dict[str, str] = {}
        self.leaked: list[Path] = []  # containerd's temporary checkpoint folders it left in /tmp

    def calls_since(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        path = self.stack.recorded_calls
        if not path.exists():
            return [], offset
        data = path.read_bytes()
        lines = data[offset:].decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()], len(data)

    def shorten(self, text: str) -> str:
        text = re.sub(
            re.escape(str(self.stack.containerd_state)) + r"/io\.containerd\.runtime\.v2\.task/[^/ ]+/[^/ \"]+",
            "<bundle>",
            text,
        )
        text = text.replace(str(self.stack.root), "<root>")
        text = re.sub(r"/tmp/runc-process\d+", "/tmp/runc-process<N>", text)
        text = re.sub(r"/tmp/(ctr?d-checkpoint)\d+", r"/tmp/\1<N>", text)
        return re.sub(r"/tmp/pty\d+/", "/tmp/pty<N>/", text)

    def render(self) -> str:
        """The sections, container ids named (they are known only after their container started)."""
        text = "\n".join(self.sections)
        for cid, label in self.ids.items():
            text = re.sub(rf"\b{re.escape(cid)}\b", label, text)
        return re.sub(r"\b[0-9a-f]{64}\b", "<hex-id>", text)

    def step(self, title: str, action: Callable[[], str]) -> str:
        """Run one user action; write down the runtime calls it made."""
        offset = self.stack.recorded_calls.stat().st_size if self.stack.recorded_calls.exists() else 0
        before = {p.name for p in Path("/tmp").glob("ct*d-checkpoint*")}
        started = time.monotonic()
        shown = action()
        seconds = time.monotonic() - started
        time.sleep(0.5)  # late calls (the shim's delete after an exit)
        calls, _ = self.calls_since(offset)
        left = sorted({p.name for p in Path("/tmp").glob("ct*d-checkpoint*")} - before)
        self.leaked.extend(Path("/tmp") / name for name in left)
        out = [f"#### {title}", "", f"`{self.shorten(shown)}` ({seconds:.1f} s)", "", "```"]
        for call in calls:
            argv = self.shorten(" ".join(call["argv"]))
            cwd = "" if self.shorten(call["cwd"]) == "<bundle>" else f"   (cwd {self.shorten(call['cwd'])})"
            out.append(f"[{call['tag']}] rc={call['rc']} {call['seconds']:.2f}s: {argv}{cwd}")
            if call["tag"] == OUTER and call.get("log_added"):
                out.append(f"    --log got: {self.shorten(call['log_added'])[:600]}")
            for key in ("image-path_files", "work-path_files"):
                if call["tag"] == INNER and call.get(key):
                    out.append(f"    {key.replace('_files', '')} afterwards: {', '.join(call[key])}")
        out.append("```")
        if left:
            out.append(f"Left behind in /tmp: {', '.join(left)}")
        out.append("")
        self.sections.append("\n".join(out))
        return shown

    def docker(self, *args: str, check: bool = True) -> str:
        result = self.stack.docker(*args, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(result.describe())
        return f"docker {' '.join(args)}" + (f"  -> exit {result.returncode}" if result.returncode else "")

    def ctr(self, *args: str, check: bool = True) -> str:
        result = self.stack.ctr(*args, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(result.describe())
        return f"ctr {' '.join(args)}" + (f"  -> exit {result.returncode}" if result.returncode else "")

    def note(self, text: str) -> None:
        self.sections.append(text + "\n")


def docker_count(stack: Stack, name: str) -> int:
    out = stack.docker("exec", name, "cat", "/tmp/count", check=False).stdout.strip()
    return int(out) if out.isdigit() else -1


def ctr_count(stack: Stack, name: str) -> int:
    out = stack.ctr("tasks", "exec", "--exec-id", f"count{time.monotonic_ns()}", name, "cat", "/tmp/count", check=False)
    return int(out.stdout.strip()) if out.stdout.strip().isdigit() else -1


def docker_scenarios(rec: Recording) -> None:
    stack = rec.stack
    rt = "--runtime=runsc-cuda-rec"
    rec.note("### Docker 20.10.24 + containerd 1.6.20 (runc.v2 shim), plain container")
    rec.step(
        "docker run -d",
        lambda: rec.docker("run", "-d", "--name", "c1", rt, "--network=none", IMAGE, "sh", "-c", COUNTER),
    )
    rec.ids[stack.docker("inspect", "-f", "{{.Id}}", "c1").stdout.strip()] = "<id>"
    wait_for("c1 to count", lambda: docker_count(stack, "c1") >= 1, 30)
    rec.step("docker exec", lambda: rec.docker("exec", "c1", "cat", "/tmp/count"))
    rec.step("docker exec -t (a terminal)", lambda: rec.docker("exec", "-t", "c1", "true"))
    rec.step("docker top", lambda: rec.docker("top", "c1"))
    rec.step("docker update", lambda: rec.docker("update", "--cpu-shares", "512", "c1"))
    rec.step("docker pause", lambda: rec.docker("pause", "c1"))
    rec.step("docker unpause", lambda: rec.docker("unpause", "c1"))
    rec.step(
        "docker checkpoint create --leave-running",
        lambda: rec.docker("checkpoint", "create", "--leave-running", "c1", "cp1"),
    )
    wait_for("c1 to reach 20", lambda: docker_count(stack, "c1") >= 20, 30)
    rec.step("docker checkpoint create (stops the container)", lambda: rec.docker("checkpoint", "create", "c1", "cp2"))
    wait_for("c1 to exit", lambda: "exited" in stack.docker("inspect", "-f", "{{.State.Status}}", "c1").stdout, 30)
    saved = int(stack.docker("logs", "c1").stdout.split()[-1])
    folder = stack.root / "data" / "containers" / stack.docker("inspect", "-f", "{{.Id}}", "c1").stdout.strip()
    kept = sorted(str(p.relative_to(folder)) for p in (folder / "checkpoints").rglob("*") if p.is_file())
    rec.note(f"Docker keeps the checkpoints in its data-root: `containers/<id>/checkpoints/`: {', '.join(kept)}\n")
    rec.step("docker start --checkpoint cp2", lambda: rec.docker("start", "--checkpoint", "cp2", "c1"))
    first = docker_count(stack, "c1")
    time.sleep(1)
    later = docker_count(stack, "c1")
    rec.note(
        f"Restore check: the last count printed before the checkpoint was {saved}; right after "
        f"`docker start --checkpoint` /tmp/count was {first}, a second later {later} "
        f"({'it resumed from the image' if first >= saved and later > first else 'it did NOT resume'}).\n"
    )
    rec.step("docker stop", lambda: rec.docker("stop", "c1"))
    rec.step("docker rm", lambda: rec.docker("rm", "c1"))
    rec.step(
        "docker run of a missing program (an error: what reaches --log)",
        lambda: rec.docker("run", "--name", "bad", rt, "--network=none", IMAGE, "/nonexistent", check=False),
    )
    bad = stack.docker("inspect", "-f", "{{.Id}}", "bad").stdout.strip()
    rec.ids[bad] = "<bad-id>"
    rec.step("docker rm of the container that failed to start", lambda: rec.docker("rm", "bad"))
    time.sleep(1)
    shims = [pid for pid, cmdline in stack.leftover_processes() if f"-id {bad}" in cmdline]
    in_runsc = bad in stack.runsc(stack.docker_runtime_root, "list", "--quiet").stdout.split()
    rec.note(
        f"After `docker rm`: shim processes still running for it: {len(shims)}; runsc still lists it: "
        f"{'yes' if in_runsc else 'no'}; bundle still there: {'yes' if stack.docker_bundle(bad).exists() else 'no'} "
        "(no `delete` is ever sent for a container whose `start` failed).\n"
    )
    rec.step(
        "docker run -t --rm (a terminal)", lambda: rec.docker("run", "-t", "--rm", rt, "--network=none", IMAGE, "true")
    )

    rec.step(
        'docker run --rm with a runtime whose "runtimeArgs" are --platform=systrap --debug-log=/dev/null',
        lambda: rec.docker("run", "--rm", "--runtime=runsc-cuda-rec-args", "--network=none", IMAGE, "true"),
    )

    rec.note("### Docker, GPU container (`--device /dev/null:/dev/nvidia0`; nvproxy = false in the config)")
    rec.step(
        "docker run -d --device /dev/null:/dev/nvidia0",
        lambda: rec.docker(
            "run",
            "-d",
            "--name",
            "g1",
            rt,
            "--network=none",
            "--device",
            "/dev/null:/dev/nvidia0",
            IMAGE,
            "sh",
            "-c",
            COUNTER,
        ),
    )
    rec.ids[stack.docker("inspect", "-f", "{{.Id}}", "g1").stdout.strip()] = "<gpu-id>"
    wait_for("g1 to count", lambda: docker_count(stack, "g1") >= 1, 30)
    rec.step("docker checkpoint create (GPU)", lambda: rec.docker("checkpoint", "create", "g1", "gcp", check=False))
    wait_for("g1 to exit", lambda: "exited" in stack.docker("inspect", "-f", "{{.State.Status}}", "g1").stdout, 30)
    rec.step("docker start --checkpoint (GPU)", lambda: rec.docker("start", "--checkpoint", "gcp", "g1", check=False))
    rec.step("docker rm -f (GPU)", lambda: rec.docker("rm", "-f", "g1"))


def ctr_scenarios(rec: Recording) -> None:
    stack = rec.stack
    image = stack.ctr_image()
    runtime = ["--runc-binary", str(stack.bin / "runsc-cuda-rec"), "--runc-root", str(stack.ctr_runc_root)]
    rec.ids["t1"] = "<id>"
    rec.note("### containerd 1.6.20 alone: `ctr run --runc-binary ... --runc-root <root>/ctr-runc-root` (runc.v2 shim)")
    rec.step("ctr run -d", lambda: rec.ctr("run", "-d", *runtime, image, "t1", "sh", "-c", COUNTER))
    wait_for("t1 to count", lambda: ctr_count(stack, "t1") >= 1, 30)
    rec.step("ctr tasks exec", lambda: rec.ctr("tasks", "exec", "--exec-id", "e1", "t1", "cat", "/tmp/count"))
    rec.step("ctr tasks ps", lambda: rec.ctr("tasks", "ps", "t1"))
    rec.step("ctr tasks pause", lambda: rec.ctr("tasks", "pause", "t1"))
    rec.step("ctr tasks resume", lambda: rec.ctr("tasks", "resume", "t1"))
    image_path = stack.root / "ctr-checkpoint"
    rec.step(
        "ctr tasks checkpoint --image-path (leaves it running)",
        lambda: rec.ctr("tasks", "checkpoint", "--image-path", str(image_path), "t1"),
    )
    rec.step(
        "ctr containers checkpoint --task (a checkpoint image in the content store)",
        lambda: rec.ctr("containers", "checkpoint", "--task", "t1", "t1-cp"),
    )
    wait_for("t1 to reach 20", lambda: ctr_count(stack, "t1") >= 20, 30)
    rec.step(
        "ctr tasks checkpoint --exit --image-path",
        lambda: rec.ctr("tasks", "checkpoint", "--exit", "--image-path", f"{image_path}-exit", "t1"),
    )
    rec.step("ctr tasks kill -s SIGKILL", lambda: rec.ctr("tasks", "kill", "--signal", "SIGKILL", "t1", check=False))
    time.sleep(1)
    rec.step("ctr tasks delete", lambda: rec.ctr("tasks", "delete", "t1", check=False))
    rec.step("ctr containers delete", lambda: rec.ctr("containers", "delete", "t1"))
    rec.step("ctr containers restore --live", lambda: rec.ctr("containers", "restore", "--live", "t1", "t1-cp"))
    first = ctr_count(stack, "t1")
    time.sleep(1)
    rec.note(f"Restore check: /tmp/count right after the restore {first}, a second later {ctr_count(stack, 't1')}.\n")
    rec.step("ctr tasks kill (SIGTERM)", lambda: rec.ctr("tasks", "kill", "t1"))
    time.sleep(1)
    rec.step("ctr tasks delete", lambda: rec.ctr("tasks", "delete", "t1", check=False))
    rec.step("ctr containers delete", lambda: rec.ctr("containers", "delete", "t1"))
    for ref in stack.ctr("images", "list", "--quiet").stdout.split():
        if "checkpoint" in ref or ref == "t1-cp":
            stack.ctr("images", "remove", ref, check=False)
    rec.ids["g2"] = "<gpu-id>"
    rec.step(
        "ctr run -d --annotation dev.runsc-cuda.gpu=true",
        lambda: rec.ctr("run", "-d", *runtime, "--annotation", "dev.runsc-cuda.gpu=true", image, "g2", "sleep", "1000"),
    )
    rec.step("ctr tasks kill -s SIGKILL (GPU)", lambda: rec.ctr("tasks", "kill", "--signal", "SIGKILL", "g2"))
    time.sleep(1)
    rec.step("ctr tasks delete (GPU)", lambda: rec.ctr("tasks", "delete", "g2", check=False))
    stack.ctr("containers", "delete", "g2", check=False)


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("recorded-calls.md")
    check_machine()
    root = Path(tempfile.mkdtemp(prefix="rcr-", dir="/tmp"))
    stack = Stack(root, Tools.find(build_runsc()), runsc_cuda_program(), private_tmp=False)
    stack.bin.mkdir(parents=True, exist_ok=True)
    inner = stack.write_recorder("rec-inner", INNER, stack.tools.runsc)
    via_cuda = stack.bin / "runsc-cuda-via-recorder"
    via_cuda.write_text(
        f"#!/bin/sh\nRECORDER_SIDECAR=1 RUNSC_CUDA_CONFIG={stack.runsc_cuda_config} RUNSC_CUDA_RUNSC={inner} "
        f'exec {stack.runsc_cuda} "$@"\n'
    )
    via_cuda.chmod(0o755)
    stack.extra_runtimes["runsc-cuda-rec"] = str(stack.write_recorder("runsc-cuda-rec", OUTER, str(via_cuda)))
    stack.extra_runtimes["runsc-cuda-rec-args"] = stack.extra_runtimes["runsc-cuda-rec"]
    stack.runtime_args["runsc-cuda-rec-args"] = ["--platform=systrap", "--debug-log=/dev/null"]
    rec = Recording(stack)
    try:
        stack.start()
        versions = stack.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        rec.note(
            "## Recordings\n\n"
            f"Generated by `tests/e2e/record_calls.py` on {time.strftime('%Y-%m-%d')}: Docker {versions}, "
            f"{stack.ctr('version').stdout.split('Server:')[-1].split()[1]} containerd, runsc "
            f"{Path(stack.tools.runsc).parent.name}, runsc-cuda config `nvproxy = false`.\n\n"
            f"Each line: `[hop] rc=<exit status> <seconds>: <argv after the program name>`; the cwd is "
            f"always the bundle unless shown. `{OUTER}` is what Docker/containerd asked for, "
            f"`{INNER}` what runsc-cuda passed on to runsc. Every successful checkpoint also got a file "
            "`recorder-sidecar.json` in its --image-path, to see whether it comes back on restore.\n"
        )
        docker_scenarios(rec)
        ctr_scenarios(rec)
    finally:
        notes = stack.stop()
        for folder in rec.leaked:
            shutil.rmtree(folder, ignore_errors=True)
        kept = ""  # what a person wrote above the marker stays
        if output.exists() and MARKER in output.read_text():
            kept = output.read_text().split(MARKER)[0]
        if notes:
            rec.note("Teardown: " + rec.shorten("; ".join(notes)))
        output.write_text(kept + MARKER + "\n\n" + rec.render())
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv))
