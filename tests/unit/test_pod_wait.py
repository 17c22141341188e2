"""The restoring pod's watcher, its decision (commands/pod_wait.py): when a pod that lacks a checkpointed
container is ended, and what it says."""

from __future__ import annotations

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
