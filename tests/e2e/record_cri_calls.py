"""Record how containerd 2.x's CRI plugin (through its runc.v2 shim) calls the runtime for a pod.

Run as root (about half a minute):  .venv/bin/python -m tests.e2e.record_cri_calls [OUTPUT.md]

crictl makes the kubelet's calls against a private containerd 2.x (tests/e2e/cri_stack.py)
whose runsc-cuda runtime records every call twice, as tests/e2e/record_calls.py does for
Docker: what the shim asked runsc-cuda for, and what runsc-cuda passed on to runsc.
The recordings replace the block between BEGIN and END in tests/e2e/recorded-calls.md
(written above record_calls.py's marker, so that script keeps them).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .cri_stack import COUNTER, GPU_ANNOTATION, CriStack, CriTools, check_machine
from .record_calls import INNER, MARKER, OUTER, Recording
from .stack import build_runsc, runsc_cuda_program, wait_for

BEGIN = "<!-- containerd 2.x CRI recordings: written by tests/e2e/record_cri_calls.py -->"
END = "<!-- end of the containerd 2.x CRI recordings -->"
SIDECAR = ["sh", "-c", "echo sidecar up; trap 'exit 0' TERM; while :; do sleep 1; done"]


class CriRecording(Recording):
    def crictl(self, *args: str) -> str:
        result = self.stack.crictl(*args, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.describe())
        return f"crictl {' '.join(args)}"


def scenario(rec: CriRecording, cri: CriStack) -> None:
    made: dict[str, Any] = {}

    def run_pod() -> str:
        made["pod"] = cri.run_pod("recorded")
        rec.ids[made["pod"].id] = "<pause-id>"
        return "crictl runp --runtime runsc-cuda pod.json"

    rec.step("RunPodSandbox (host network): the pause container", run_pod)

    def create(name: str, command: list[str], notes: dict[str, str]) -> str:
        cid = cri.create(made["pod"], name, command, notes)
        made[name] = cid
        rec.ids[cid] = f"<{name}-id>"
        return f"crictl create <pause-id> {name}.json pod.json"

    rec.step("CreateContainer: app (GPU-flagged, counting)", lambda: create("app", ["sh", "-c", COUNTER],
                                                                           {GPU_ANNOTATION: "true"}))  # fmt: skip
    rec.step("StartContainer: app", lambda: rec.crictl("start", made["app"]))
    rec.step("CreateContainer: sidecar (plain)", lambda: create("sidecar", SIDECAR, {}))
    rec.step("StartContainer: sidecar", lambda: rec.crictl("start", made["sidecar"]))
    wait_for("the app to count", lambda: cri.count(made["app"]) >= 5, 30)
    rec.step("ExecSync: cat /tmp/count in app", lambda: rec.crictl("exec", made["app"], "cat", "/tmp/count"))
    archive = cri.checkpoints / "app-checkpoint.tar"
    rec.step(
        "CheckpointContainer (kubelet's checkpoint API): app, exported",
        lambda: rec.crictl("checkpoint", f"--export={archive}", made["app"]),
    )
    restore(rec, cri, made, archive)
    rec.step("StopContainer: sidecar (SIGTERM, 10 s)", lambda: rec.crictl("stop", "--timeout", "10", made["sidecar"]))
    rec.step("StopContainer: app (SIGKILL at once)", lambda: rec.crictl("stop", made["app"]))
    rec.step("RemoveContainer: app and sidecar", lambda: rec.crictl("rm", made["app"], made["sidecar"]))
    rec.step("StopPodSandbox", lambda: rec.crictl("stopp", made["pod"].id))
    rec.step("RemovePodSandbox", lambda: rec.crictl("rmp", made["pod"].id))


def restore(rec: CriRecording, cri: CriStack, made: dict[str, Any], archive: Path) -> None:
    """A second pod restored from the archive (annotation dev.runsc-cuda.restore-from), then removed."""
    new: dict[str, Any] = {}

    def run_pod() -> str:
        new["pod"] = cri.run_pod("restored", {"dev.runsc-cuda.restore-from": str(archive)})
        rec.ids[new["pod"].id] = "<restored-pause-id>"
        return "crictl runp --runtime runsc-cuda restored-pod.json"

    rec.step("RunPodSandbox with dev.runsc-cuda.restore-from: <root>/checkpoints/app-checkpoint.tar", run_pod)
    for name, command, notes in (("app", ["sh", "-c", COUNTER], {GPU_ANNOTATION: "true"}), ("sidecar", SIDECAR, {})):
        cid = cri.create(new["pod"], name, command, notes)
        rec.ids[cid] = f"<restored-{name}-id>"
        rec.step(f"CreateContainer + StartContainer: restored {name}", lambda c=cid: rec.crictl("start", c))
    rec.step("ExecSync: cat /tmp/count in the restored app", lambda: rec.crictl("exec", rec_id(rec, "app"), "cat",
                                                                                "/tmp/count"))  # fmt: skip
    rec.step("StopPodSandbox + RemovePodSandbox: the restored pod", lambda: (
        rec.crictl("stopp", new["pod"].id), rec.crictl("rmp", new["pod"].id))[0])  # fmt: skip
    cri.pods.pop(new["pod"].id, None)


def rec_id(rec: CriRecording, name: str) -> str:
    return next(cid for cid, label in rec.ids.items() if label == f"<restored-{name}-id>")


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("recorded-calls.md")
    check_machine()
    root = Path(tempfile.mkdtemp(prefix="rkr-", dir="/tmp"))
    cri = CriStack(root, CriTools.find(build_runsc()), runsc_cuda_program(), record=True)
    rec = CriRecording(cri)  # type: ignore[arg-type]  # the same layout names as stack.Stack
    try:
        cri.start()
        version = cri.crictl("version").stdout.split("RuntimeVersion:")[-1].split()[0]
        rec.note(
            "## containerd 2.x CRI (crictl as the kubelet)\n\n"
            f"Generated by `tests/e2e/record_cri_calls.py` on {time.strftime('%Y-%m-%d')}: containerd {version} "
            f"(CRI plugin, runc.v2 shim with `BinaryName` = runsc-cuda, `Root` = `<root>/runsc`), crictl "
            f"{Path(cri.tools.crictl).parent.name.removeprefix('cri-tools-')}, runsc "
            f'{Path(cri.tools.runsc).parent.name}, runsc-cuda config `nvproxy = false`, `engine = "exec"`. '
            'A host-network pod: pause, app (annotation `dev.runsc-cuda.gpu: "true"`), sidecar. '
            f"`{OUTER}` is what the shim asked for, `{INNER}` what runsc-cuda passed on (its own calls "
            "included: the sub-container holder's `runsc wait`, the exec engine's `runsc exec` of "
            "cuda-checkpoint).\n\n"
            "What they show (B = bundle, ID = container id):\n\n"
            "- CreateContainer makes no runtime call: containerd 2.x creates the task in StartContainer, "
            "`create --bundle B --pid-file B/init.pid ID` then `start ID`, for the pause container and "
            "sub-containers alike.\n"
            "- For a sub-container runsc-cuda runs `runsc create` without `--pid-file` (runsc would write "
            "the sandbox's PID there) and writes its holder's PID instead; the holder's first `runsc wait` "
            "may come before `start` got through (rc=128, then `state`, then `wait` again).\n"
            "- StopContainer: `kill ID 15` (or `9`), and once the container's init (the holder) exited, "
            "`kill --all ID 9` (twice) and `delete ID`. RemoveContainer and RemovePodSandbox make no call.\n"
            "- StopPodSandbox: `kill <pause-id> 9`, then `kill --all <pause-id> 9`, which runsc fails with "
            '"sandbox is not running": runsc-cuda adds runc\'s "container not running" so that the shim '
            "takes it as gone; then `delete` and `delete --force`.\n"
            "- CheckpointContainer: `pause ID`, `checkpoint --image-path <TMPDIR>/ctrd-checkpointN "
            "--work-path <containerd root>/io.containerd.grpc.v1.cri/containers/ID/ctrd-checkpoint "
            "--leave-running ID`, `resume ID`.\n"
            "- A pod restored by annotation (`dev.runsc-cuda.restore-from`): the pause container's `create` "
            "becomes `runsc restore --detach --image-path <restore cache>/checkpoint --bundle B --pid-file "
            "B/init.pid ID` (the archive is unpacked once into `<state_dir>/restore-cache/`), its `start` "
            "makes no runsc call; each container's `create` becomes `runsc restore --detach --image-path ... "
            "--bundle B ID` (no `--pid-file`: the holder's PID), its `start` none either; after the last one "
            "runsc-cuda thaws the CUDA processes (`runsc exec` of cuda-checkpoint in the restored app).\n"
        )
        scenario(rec, cri)
    finally:
        notes = cri.stop()
        if notes:
            rec.note("Teardown: " + rec.shorten("; ".join(notes)))
        block = f"{BEGIN}\n\n{rec.render()}\n{END}\n"
        text = output.read_text() if output.exists() else ""
        if BEGIN in text and END in text:
            text = text.split(BEGIN)[0] + block + text.split(END, 1)[1].lstrip("\n")
        elif MARKER in text:
            head, tail = text.split(MARKER, 1)
            text = head + block + "\n" + MARKER + tail
        else:
            text += "\n" + block
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv))
