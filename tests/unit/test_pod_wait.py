"""The restoring pod's watcher, its decision (commands/pod_wait.py): when a pod that lacks a checkpointed
container is ended, and what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runsc_cuda.commands import pod_wait
from runsc_cuda.commands.pod_wait import DONE, STOP, WAIT, decide

RECORD: dict[str, Any] = {"from": "/ckpt/pod.tar", "names": ["app", "sidecar"], "joined": {"app": "c1"}, "pid": 42}


def test_a_missing_container_is_waited_for_until_the_time_has_passed_since_the_last_write() -> None:
    assert decide(RECORD, since=100.0, now=100.0, wait_s=300) == (WAIT, ["sidecar"])
    assert decide(RECORD, since=100.0, now=399.9, wait_s=300) == (WAIT, ["sidecar"])
    assert decide(RECORD, since=100.0, now=400.0, wait_s=300) == (STOP, ["sidecar"])
    none_joined = {**RECORD, "joined": {}}
    assert decide(none_joined, since=0.0, now=1.0, wait_s=1) == (STOP, ["app", "sidecar"])


def test_no_record_or_nobody_missing_ends_the_watch() -> None:
    assert decide(None, since=0.0, now=1e9, wait_s=1) == (DONE, [])
    assert decide({**RECORD, "joined": {"app": "c1", "sidecar": "c2"}}, 0.0, 1e9, 1) == (DONE, [])
    assert decide({}, 0.0, 1e9, 1) == (DONE, [])  # a record without names waits for nobody


def test_a_wait_of_zero_is_for_ever() -> None:
    assert decide(RECORD, since=0.0, now=1e12, wait_s=0) == (WAIT, ["sidecar"])


def test_a_clock_that_went_back_waits() -> None:
    assert decide(RECORD, since=500.0, now=100.0, wait_s=300)[0] == WAIT


def test_the_warning_names_the_pod_the_archive_and_the_missing_containers() -> None:
    text = pod_wait.message("0123456789abcdef", RECORD, ["sidecar"], 300.0)
    assert text == (
        "restore of pod 0123456789ab from /ckpt/pod.tar: the pod did not create sidecar within 300s "
        "(the checkpoint holds app, sidecar); the restoring pod sandbox was stopped"
    )


def test_only_a_plain_pod_uid_names_a_remembered_end() -> None:
    assert pod_wait.safe_uid("0b5c1d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e") == "0b5c1d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
    for bad in ("", ".hidden", "../etc", "a/b", "x" * 129, "caf\u00e9", None, 7):
        assert pod_wait.safe_uid(bad) is None, bad


def test_a_remembered_end_refuses_only_the_same_pod_from_the_same_checkpoint_and_ages_out(tmp_path: Path) -> None:
    state = str(tmp_path)
    text = pod_wait.refused_again(["sidecar"], 300)
    assert text == (
        "the pod lacks sidecar of the checkpoint (its earlier sandbox was stopped after waiting 300s); "
        "create a pod with the checkpoint's containers"
    )
    pod_wait.remember(state, "uid-1", "/ckpt/a.tar", text)
    assert pod_wait.remembered(state, "uid-1", "/ckpt/a.tar") == text
    assert pod_wait.remembered(state, "uid-1", "/ckpt/b.tar") is None  # another checkpoint: a new try
    assert pod_wait.remembered(state, "uid-2", "/ckpt/a.tar") is None  # another pod: a new try
    path = Path(pod_wait.refusal_path(state, "uid-1"))
    assert pod_wait.forget(state, 3600, now=path.stat().st_mtime + 10) == []
    assert pod_wait.forget(state, 3600, now=path.stat().st_mtime + 3600) == [str(path)]
    assert pod_wait.remembered(state, "uid-1", "/ckpt/a.tar") is None


def test_a_remembered_end_behind_a_link_is_not_read(tmp_path: Path) -> None:
    state = str(tmp_path)
    pod_wait.remember(state, "uid-1", "/ckpt/a.tar", "x")
    path = Path(pod_wait.refusal_path(state, "uid-1"))
    path.rename(tmp_path / "elsewhere.json")
    path.symlink_to(tmp_path / "elsewhere.json")
    assert pod_wait.remembered(state, "uid-1", "/ckpt/a.tar") is None
