"""A restoring pod that lacks one of its checkpoint's containers: its sandbox is ended after ``pod_restore_wait_s``.

The CRI tells the runtime only about the containers it creates, so a pod that
lacks one the checkpoint holds never says so, and gVisor's restoring sandbox
waits for it for ever (the pod looks Running; nothing runs).  Once the sandbox
restores and its record is saved (commands/pod_restore.py), ``restore_sandbox``
forks this small detached watcher.  Twice a second it looks at the record (a
``stat``) and at the sandbox process, and exits as soon as either is gone: the
last container joined, the pod was stopped (oci/restoring.py) or refused.  When
``pod_restore_wait_s`` has passed since the record was last written (the
sandbox's restore, or the last container that joined), it takes the pod's lock,
reads the record again and, if containers are still missing, ends the sandbox
as a refusal does (``stop_sandbox``; the markers stay for kill and delete),
drops the record and logs one warning.

``decide`` is the decision, pure; the rest is the process, its files and its clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from runsc_cuda import detach
from runsc_cuda.commands import pod_restore
from runsc_cuda.lock import container_lock
from runsc_cuda.oci import restoring
from runsc_cuda.session import Session

POLL_S = 0.5
WAIT, STOP, DONE = "wait", "stop", "done"


def missing(record: Mapping[str, Any]) -> list[str]:
    """The checkpoint's containers that have not joined the pod yet, sorted."""
    names, joined = record.get("names") or [], record.get("joined") or {}
    return sorted(str(n) for n in names if n not in joined)


def decide(record: Mapping[str, Any] | None, since: float, now: float, wait_s: float) -> tuple[str, list[str]]:
    """What the watcher does now, and the missing containers: DONE when no pod waits (no record, or none
    missing), STOP once ``wait_s`` has passed since ``since`` (the record's last write), else WAIT.
    ``wait_s`` 0 never stops."""
    if record is None:
        return DONE, []
    lacking = missing(record)
    if not lacking:
        return DONE, []
    if wait_s <= 0 or now - since < wait_s:
        return WAIT, lacking
    return STOP, lacking


def message(sandbox: str, record: Mapping[str, Any], lacking: list[str], wait_s: float) -> str:
    held = ", ".join(str(n) for n in record.get("names") or [])
    return (
        f"restore of pod {sandbox[:12]} from {str(record.get('from', ''))[:200]}: the pod did not create "
        f"{', '.join(lacking)} within {wait_s:g}s (the checkpoint holds {held}); the restoring pod sandbox was stopped"
    )


# --- what a pod that was ended this way leaves behind ---------------------------------------
#
# The kubelet makes a new sandbox for a pod whose sandbox ended, with the same containers (a
# pod's containers cannot change): restored again, it would wait again.  So the end is
# remembered by the pod's UID, and its next sandbox is refused at once, with the reason, in
# RunPodSandbox's error (the pod's events).  A new pod (another UID) gets a new try.

REFUSED = "refused"  # <state_dir>/pod-restore/refused/<pod uid>.json
MAX_REFUSAL = 16 << 10


def safe_uid(uid: object) -> str | None:
    """A pod UID fit for a file name (the kubelet's are UUIDs), else None."""
    if not isinstance(uid, str) or not 0 < len(uid) <= 128:
        return None
    return uid if all(c.isascii() and (c.isalnum() or c in "-_.") for c in uid) and uid[0] != "." else None


def refusal_path(state_dir: str, uid: str) -> str:
    return os.path.join(state_dir, pod_restore.RECORDS, REFUSED, f"{uid}.json")


def refused_again(lacking: list[str], wait_s: float) -> str:
    """Why a pod's next sandbox is refused (``lacking``: what its earlier one waited for in vain)."""
    return (
        f"the pod lacks {', '.join(lacking)} of the checkpoint (its earlier sandbox was stopped after "
        f"waiting {wait_s:g}s); create a pod with the checkpoint's containers"
    )


def remember(state_dir: str, uid: str, value: str, text: str) -> None:
    from runsc_cuda.files import write_atomic

    path = refusal_path(state_dir, uid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps({"from": value, "message": text[:4000]}), durable=False)


def remembered(state_dir: str, uid: str, value: str) -> str | None:
    """Why this pod's next sandbox, restored from ``value``, is refused, if its earlier one was ended."""
    from runsc_cuda.files import read_regular

    try:
        raw, _ = read_regular(refusal_path(state_dir, uid), MAX_REFUSAL)
        doc = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("from") != value or not isinstance(doc.get("message"), str):
        return None
    return str(doc["message"])


def forget(state_dir: str, max_age_s: float, now: float | None = None) -> list[str]:
    """Remove the remembered ends older than ``max_age_s`` (0: all); the paths removed (runsc-cuda gc)."""
    folder = os.path.join(state_dir, pod_restore.RECORDS, REFUSED)
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime >= max_age_s:
                    os.unlink(path)
                    removed.append(path)
    return removed


# --- the watcher process --------------------------------------------------------------------


def start(session: Session, sandbox: str, pid: int) -> int | None:
    """Start the detached watcher of a restoring pod whose sandbox process is ``pid``; its PID, or None
    (a warning says why)."""

    def life() -> int:  # the shim waits for create's stdio to close: detach.spawn lets go of it
        detach.fresh_session(session, {"verb": "pod restore watcher", "container": sandbox})
        watch(session, sandbox, pid)
        return 0

    try:
        started = detach.spawn(life)
        why = None if started is not None else "it did not start"
    except OSError as e:
        started, why = None, str(e.strerror)
    if why is not None:
        session.report.warning(f"pod sandbox {sandbox[:12]}: cannot start its restore watcher: {why}")
    return started


def _written(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _ours(record: dict[str, Any] | None, pid: int) -> dict[str, Any] | None:
    """The record, if it is still the one of this sandbox process's restore."""
    return record if record is not None and record.get("pid") == pid else None


def watch(
    session: Session,
    sandbox: str,
    pid: int,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Until the pod needs no watching (DONE) or was ended (STOP); the record is read only when it changed."""
    cfg = session.config
    path = pod_restore.record_path(session, sandbox)
    seen: tuple[float, dict[str, Any] | None] | None = None
    while True:
        since = _written(path)  # the clock of the record's writes: wall time
        if since is None or not restoring.is_runsc_sandbox(pid):
            return DONE
        if seen is None or seen[0] != since:
            seen = (since, _ours(pod_restore.load_record(session, sandbox), pid))
        verdict, _ = decide(seen[1], since, clock(), cfg.pod_restore_wait_s)
        if verdict == STOP:
            with container_lock(cfg.state_dir, pod_restore.LOCK_ROOT, sandbox, cfg.lock_wait_s):
                record = _ours(pod_restore.load_record(session, sandbox), pid)
                verdict, lacking = decide(record, _written(path) or since, clock(), cfg.pod_restore_wait_s)
                if verdict == STOP and record is not None:
                    pod_restore.stop_sandbox(session, sandbox, pid)
                    pod_restore.drop_record(session, sandbox)  # the markers stay (restore_container says why)
                    said = message(sandbox, record, lacking, cfg.pod_restore_wait_s)
                    uid = safe_uid(record.get("uid"))
                    if uid is not None:
                        with contextlib.suppress(OSError):
                            again = refused_again(lacking, cfg.pod_restore_wait_s)
                            remember(cfg.state_dir, uid, str(record.get("from", "")), again)
                    session.report.warning(said)
        if verdict in (DONE, STOP):
            return verdict
        sleep(POLL_S)
