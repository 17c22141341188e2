"""A pod created with ``dev.runsc-cuda.restore-from``: its containers' creates become runsc's pod restore.

containerd copies the pod annotation into every container's spec (the
runtime's ``pod_annotations``).  gVisor restores a pod as a whole: the sandbox
(pause container, ``io.kubernetes.cri.container-type: sandbox``) first with
``runsc restore --detach``, which waits for the image's other containers; each
app container then joins by ``runsc restore`` of its own, matched by
``io.kubernetes.cri.container-name``; when the last one is in, the pod runs.
So:

- **sandbox create**: the annotation is checked (``image/archive.py``: restore
  roots, safe unpacking), the image read (``image/statefile.py``: which
  containers it holds) and checked against this host's GPUs (the sidecar), and a
  record of the pod's restore written under ``<state_dir>/pod-restore/``; then
  ``runsc restore --detach --image-path I`` with create's flags.  A small holder
  tells ``start`` that the sandbox runs already.
- **container create**: its name must be one the image holds and not restored
  yet; then ``runsc restore`` through the sub-container holder (create's stdio,
  the holder's PID as the container's init, its exit status:
  ``oci/subcontainer.py``).  After the last one, the exec engine's CUDA processes
  are thawed in the container the image's sidecar names.

A refusal comes before anything runs, as one line (``cannot restore ID from
PATH: ...``) in the runtime log, which containerd shows; a container the image
does not hold also stops the restoring sandbox, so no pod is left half-restored.
A checkpointed container the pod never creates cannot be refused (the CRI does
not say so): a small watcher ends the sandbox once none has joined for
``pod_restore_wait_s`` (``commands/pod_wait.py``).  Never a cold start instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from typing import Any

from runsc_cuda import layout
from runsc_cuda.cuda import host, protocol
from runsc_cuda.errors import ShimError, refusal
from runsc_cuda.files import write_atomic
from runsc_cuda.image import archive, sidecar, statefile
from runsc_cuda.lock import container_lock
from runsc_cuda.modifier import Prepared, prepare
from runsc_cuda.oci import restoring, spec, subcontainer
from runsc_cuda.oci.argv import VerbArgs
from runsc_cuda.oci.cri import CONTAINER_NAME, CONTAINER_TYPE, SANDBOX_ID, SANDBOX_UID
from runsc_cuda.oci.runsc import child_environ
from runsc_cuda.oci.stdio import runsc_root
from runsc_cuda.oci.verbs import container_id
from runsc_cuda.runner import wait_exit
from runsc_cuda.session import Session

ANNOTATION = "dev.runsc-cuda.restore-from"
RECORDS = "pod-restore"
LOCK_ROOT = "pod-restore"
MAX_RECORD = 1 << 20


def requested(doc: dict[str, Any]) -> str | None:
    """The restore-from annotation's value, or None for an ordinary container."""
    annotations = doc.get("annotations")
    if not isinstance(annotations, dict) or ANNOTATION not in annotations:
        return None
    value = annotations[ANNOTATION]
    return value if isinstance(value, str) else ""


def handle(session: Session, args: VerbArgs, doc: dict[str, Any], value: str) -> int:
    """Restore this pod container from ``value``; errors framed once, here."""
    cid = container_id(args) or ""
    annotations = doc.get("annotations") or {}
    kind = annotations.get(CONTAINER_TYPE)
    what = f"{cid} from {value[:200]!r}"
    try:
        if kind == "sandbox":
            return restore_sandbox(session, args, cid, value, annotations.get(SANDBOX_UID))
        if kind == "container":
            return restore_container(session, args, cid, value, annotations)
        raise refusal(f"{ANNOTATION} is for the containers of a Kubernetes pod ({CONTAINER_TYPE} is {kind!r})")
    except SandboxStopped as e:
        raise e.framed_as("restore", what, "the restoring pod sandbox was stopped") from None
    except ShimError as e:
        raise e.framed_as("restore", what, "nothing was started") from None


class SandboxStopped(ShimError):
    """A refusal after which the pod's restoring sandbox was ended (no pod is left half-restored)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, refused=True)


# --- the pod's restore record -------------------------------------------------------------


def record_path(session: Session, sandbox: str) -> str:
    return os.path.join(session.config.state_dir, RECORDS, f"{sandbox}.json")


def load_record(session: Session, sandbox: str) -> dict[str, Any] | None:
    try:
        with open(record_path(session, sandbox), encoding="utf-8") as f:
            record = json.loads(f.read(MAX_RECORD))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ShimError(f"the pod's restore record is unreadable: {e}") from None
    return record if isinstance(record, dict) else None


def save_record(session: Session, sandbox: str, record: dict[str, Any]) -> None:
    path = record_path(session, sandbox)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps(record), durable=False)


def drop_record(session: Session, sandbox: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(session, sandbox))


# --- the sandbox ------------------------------------------------------------------------


def gpu_container(pod: statefile.PodImage, spec_dump: str | None) -> str | None:
    """The name of the container whose CUDA processes the sidecar lists: the one containerd
    checkpointed (spec.dump), else the only container with runsc-cuda's cuda-checkpoint mount."""
    if spec_dump is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(spec_dump, encoding="utf-8") as f:
                name = json.loads(f.read(MAX_RECORD)).get("annotations", {}).get(CONTAINER_NAME)
            if isinstance(name, str) and name in pod.specs:
                return name
    mounted = [n for n, doc in pod.specs.items() if spec.mount_at(doc, layout.CONTAINER_CUDA_CHECKPOINT)]
    return mounted[0] if len(mounted) == 1 else None


def check_image(session: Session, value: str) -> tuple[archive.Source, statefile.PodImage, dict[str, Any]]:
    """The image ``value`` names, read and checked against this host: (source, pod, record). Refusals only."""
    cfg = session.config
    try:
        source = archive.resolve(value, cfg.restore_roots, cfg.state_dir, cfg.lock_wait_s)
        pod = statefile.read(source.image)
        saved = sidecar.read(source.image)
    except ShimError as e:
        raise refusal(e.message) from None
    if pod.sandbox_name is None:
        raise refusal(f"{source.image} holds no pod (no container of type sandbox)")
    thaw: dict[str, str] = {}
    target = None
    if saved is not None and saved.engine != "none":
        problem = sidecar.mismatch(saved.gpu_info, host.read_gpu_info(cfg.proc_driver_nvidia))
        if problem is not None:
            raise refusal(f"image {source.image}: {problem}")
        if saved.engine == "exec":
            thaw = {str(p.pid): p.state_saved for p in saved.cuda_processes if p.state_saved != protocol.RUNNING}
            target = gpu_container(pod, source.spec_dump)
            if thaw and target is None:
                raise refusal(f"image {source.image}: cannot tell which container holds its CUDA processes")
    record: dict[str, Any] = {"from": value, "image": source.image, "names": pod.container_names, "joined": {}}
    record["gpu_container"] = target
    record["thaw"] = thaw
    return source, pod, record


def restore_sandbox(session: Session, args: VerbArgs, cid: str, value: str, uid: object = None) -> int:
    from runsc_cuda.commands import pod_wait

    pod_uid = pod_wait.safe_uid(uid)
    if pod_uid is not None:
        ended = pod_wait.remembered(session.config.state_dir, pod_uid, value)
        if ended is not None:  # the kubelet's new sandbox for a pod that lacked a container
            raise refusal(ended)
    _source, _pod, record = check_image(session, value)
    record["uid"] = pod_uid
    prepared = prepare(session, "create", args)
    with container_lock(session.config.state_dir, LOCK_ROOT, cid, session.config.lock_wait_s):
        save_record(session, cid, record)
        argv = [
            session.runsc,
            *prepared.cmd.global_tokens(),
            "restore",
            "--detach",
            f"--image-path={record['image']}",
            *prepared.args.tokens(),
        ]
        code = run_restore(session, argv)
        if code != 0:
            drop_record(session, cid)
            return code
    watcher = None
    if not record["names"]:
        drop_record(session, cid)
    else:
        record["pid"] = pid_from_file(session, prepared.args.value("pid-file")) or sandbox_pid(session, cid)
        save_record(session, cid, record)
        mark_waiting(session, cid, cid, record["pid"])
        watcher = watch(session, cid, record["pid"])
    session.report.info(
        f"pod sandbox {cid} restoring from {value}: waiting for {', '.join(record['names']) or 'no containers'}",
        container=cid,
        watcher=watcher,
    )
    subcontainer.answer_start(session, cid, prepared.bundle)
    return 0


def watch(session: Session, sandbox: str, pid: int) -> int | None:
    """The watcher that ends the sandbox if a container stays missing for pod_restore_wait_s (commands/pod_wait.py):
    its PID, or None (the wait is for ever, or the sandbox's PID is unknown)."""
    from runsc_cuda.commands import pod_wait

    if session.config.pod_restore_wait_s <= 0:
        return None
    if pid <= 1:
        session.report.warning(f"pod sandbox {sandbox[:12]}: its PID is unknown; it waits for its containers for ever")
        return None
    return pod_wait.start(session, sandbox, pid)


def pid_from_file(session: Session, pid_file: str | None) -> int:
    """The PID runsc restore wrote to create's --pid-file (the sandbox's, for the pod's sandbox), or 0."""
    if not pid_file:
        return 0
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(session.cwd, pid_file), "rb") as f:
            pid = int(f.read(32).strip())
        return pid if pid > 1 else 0
    return 0


def sandbox_pid(session: Session, sandbox: str) -> int:
    result = session.call_runsc(["state", sandbox])
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return int(json.loads(result.stdout)["pid"])
    return 0


def mark_waiting(session: Session, sandbox: str, cid: str, pid: int) -> None:
    """While the pod waits for its other containers, ``kill`` of ``cid`` ends the sandbox (oci/restoring.py)."""
    path = restoring.marker_path(session.config.state_dir, runsc_root(session.cmd), cid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps({"sandbox": sandbox, "container": cid, "pid": pid}), durable=False)


def unmark_waiting(session: Session, sandbox: str, joined: dict[str, str]) -> None:
    for cid in (sandbox, *joined.values()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(restoring.marker_path(session.config.state_dir, runsc_root(session.cmd), cid))


def run_restore(session: Session, argv: list[str]) -> int:
    why = session.interrupted()
    if why is not None:
        raise refusal(f"{why} before runsc started")
    limit = session.config.checkpoint_timeout_s
    session.report.debug("runsc call", argv=argv)
    with subprocess.Popen(argv, env=child_environ(session.environ)) as proc:
        if not wait_exit(proc, limit):
            proc.kill()
            proc.wait()
            raise ShimError(f"runsc restore did not finish in {limit:g}s")
    code = proc.returncode
    return code if code >= 0 else 128 - code


# --- the pod's other containers -----------------------------------------------------------


def restore_container(session: Session, args: VerbArgs, cid: str, value: str, annotations: dict[str, Any]) -> int:
    cfg = session.config
    sandbox = annotations.get(SANDBOX_ID)
    name = annotations.get(CONTAINER_NAME)
    if not isinstance(sandbox, str) or not isinstance(name, str) or not sandbox or "/" in sandbox:
        raise refusal(f"no {SANDBOX_ID} or {CONTAINER_NAME} annotation")
    with container_lock(cfg.state_dir, LOCK_ROOT, sandbox, cfg.lock_wait_s):
        record = load_record(session, sandbox)
        if record is None or record.get("from") != value:
            raise refusal(f"pod sandbox {sandbox[:12]} was not restored from it (the pod has to be created with it)")
        names, joined = list(record.get("names", [])), dict(record.get("joined", {}))
        if name not in names or name in joined:
            held = ", ".join(names)
            why = "was restored already" if name in joined else f"is not in the checkpoint (it holds {held})"
            stop_sandbox(session, sandbox, int(record.get("pid") or 0))
            # The markers stay: a kill that comes before the shim has seen the pod end (runsc would say
            # "sandbox is not running", which the runc.v2 shim calls an unknown error) succeeds, and
            # removes them (oci/restoring.py).
            drop_record(session, sandbox)
            raise SandboxStopped(f"container {name!r} {why}")
        prepared = prepare(session, "create", args)
        code = subcontainer.create(session, prepared.cmd, prepared.bundle, prepared.args, str(record["image"]))
        if code is None:
            raise ShimError("cannot hold the container's stdio and exit status (see the warning above)")
        if code != 0:  # runsc refused it (its spec differs from the saved one, ...): no half-restored pod
            stop_sandbox(session, sandbox, int(record.get("pid") or 0))
            drop_record(session, sandbox)  # the markers stay (see above)
            session.report.warning(f"restore of {name} failed: the restoring pod sandbox {sandbox[:12]} was stopped")
            return code
        joined[name] = cid
        record["joined"] = joined
        if set(joined) != set(names):
            save_record(session, sandbox, record)
            mark_waiting(session, sandbox, cid, int(record.get("pid") or 0))
            session.report.info(f"{name} joined the restoring pod {sandbox[:12]}", container=cid)
            return 0
        unmark_waiting(session, sandbox, joined)
        drop_record(session, sandbox)
        thaw(session, prepared, record, joined)
    session.report.info(f"pod {sandbox[:12]} restored: {', '.join(sorted(joined))}", container=cid)
    return 0


def stop_sandbox(session: Session, sandbox: str, pid: int) -> None:
    """End a sandbox that waits for containers: its process, as recorded at its restore (runsc kill cannot
    signal a root container that is only restoring, and after a failed restore of a container runsc may
    call the sandbox stopped while its process lives on); the shim then sees the pod's init exit."""
    import signal

    if pid <= 1:
        pid = sandbox_pid(session, sandbox)
    try:
        if not restoring.is_runsc_sandbox(pid):
            raise ProcessLookupError(f"PID {pid} is not a runsc sandbox")
        os.kill(pid, signal.SIGKILL)
    except OSError as e:
        session.report.debug(f"restoring pod sandbox {sandbox[:12]} not stopped: {e}")


def thaw(session: Session, prepared: Prepared, record: dict[str, Any], joined: dict[str, str]) -> None:
    """Thaw the exec engine's CUDA processes once the whole pod runs."""
    states = {int(pid): str(state) for pid, state in dict(record.get("thaw") or {}).items()}
    target = record.get("gpu_container")
    if not states or not isinstance(target, str) or target not in joined:
        return
    from runsc_cuda.engines.exec_engine import ExecRestore  # a pod with CUDA processes to thaw only

    saved = sidecar.read(str(record["image"]))
    if saved is None:
        raise ShimError(f"{record['image']}: its runsc-cuda.json is gone")
    ExecRestore(session, dataclasses.replace(prepared, container_id=joined[target]), saved)._thaw()
