"""Load: many containers created, checkpointed and deleted at once, all through runsc-cuda.

50 x scale GPU containers, each with its own sandbox PIDs, go through
Docker's whole sequence at the same time in one runsc root, one state folder
and one detailed log: create, start, pause, checkpoint --leave-running
(exec engine), resume, and every tenth one also a checkpoint that stops it,
a delete and a restore; then kill and delete. Afterwards:

- no cross-talk: every cuda-checkpoint call of a container names only its
  own PIDs, every image's sidecar names its own container and PIDs, every
  runtime-log line of a bundle names only its own container;
- no lost or mixed-up log lines: every line of every log is whole JSON, the
  shared detailed log has the same number of lines for every container (and
  each names its container), the fake runsc's call log has every call;
- every lock released, one lock file per container.

Plus many processes writing large records to one detailed log at once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from runsc_cuda import logs

from suite import Tally, entry_point, held_locks, in_parallel, lock_files, scale
from support import Shim, fixture_spec


def pids_of(index: int) -> tuple[int, int]:
    """(a non-CUDA PID, a CUDA PID) unique to container ``index``: any cross-talk shows."""
    return 1000 + 2 * index, 1001 + 2 * index


def test_many_containers_at_once(shim: Shim) -> None:
    entry_point(shim)
    count = 50 * scale()
    detail = shim.tmp / "detail.log"
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOG_FILE=str(detail), RUNSC_CUDA_LOCK_WAIT_S="120")
    shim.env["RUNSC_CUDA_CUDA_CALL_TIMEOUT_S"] = "120"
    shim.env["RUNSC_CUDA_RUNSC_CALL_TIMEOUT_S"] = "120"
    tally = Tally(f"load: {count} containers at once")
    tally.notes["containers"] = count
    start = threading.Barrier(count)
    results: dict[str, list[str]] = {}

    def lifecycle(index: int) -> None:
        cid = f"load{index}"
        other, cuda = pids_of(index)
        doc = fixture_spec("gpu-devices")
        doc["annotations"] = {"test.fake-runsc/pids": f"{other},{cuda}", "test.fake-runsc/cuda-pids": str(cuda)}
        bundle = shim.bundle(cid, doc)
        problems: list[str] = []
        results[cid] = problems

        def step(*args: str) -> bool:
            out = shim.docker(bundle, *args, timeout=600)
            if out.returncode != 0:
                problems.append(f"{args[0]} failed: {out.stderr.decode(errors='replace')[-200:]!r}")
            return out.returncode == 0

        start.wait()
        image = shim.tmp / "images" / cid
        ok = step("create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), cid)
        ok = ok and step("start", cid) and step("pause", cid)
        ok = ok and step(
            "checkpoint", "--image-path", str(image), "--work-path", str(bundle / "work"), "--leave-running", cid
        )
        ok = ok and step("resume", cid)
        if ok and shim.cuda_states(cid) != {cuda: "running"}:
            problems.append(f"CUDA not running after the checkpoint: {shim.cuda_states(cid)}")
        if ok and index % 10 == 0:
            stopped = shim.tmp / "images" / f"{cid}-stop"
            ok = step("pause", cid) and step("checkpoint", "--image-path", str(stopped), cid) and step("delete", cid)
            restore = ["restore", "--image-path", str(stopped), "--detach", "--bundle", str(bundle), cid]
            ok = ok and step(*restore)
            if ok and shim.cuda_states(cid) != {cuda: "running"}:
                problems.append(f"CUDA not running after the restore: {shim.cuda_states(cid)}")
        if ok:
            check_own_calls(shim, cid, (other, cuda), problems)
        if ok:
            step("kill", cid, "KILL")
            step("delete", cid)
        sidecar = json.loads((image / "runsc-cuda.json").read_text()) if (image / "runsc-cuda.json").exists() else {}
        if sidecar.get("container") != cid or [p["pid"] for p in sidecar.get("cuda_processes", [])] != [cuda]:
            problems.append(f"the image's sidecar is not this container's: {str(sidecar)[:200]}")
        for entry in shim.log_entries(bundle):
            msg = str(entry.get("msg", ""))
            foreign = [w for w in re.findall(r"\bload\d+\b", msg) if w != cid]
            if foreign:
                problems.append(f"log.json of {cid} names {foreign}")

    in_parallel(lifecycle, range(count), n=count)
    check_shared_logs(shim, detail, count, tally)
    for cid, problems in sorted(results.items()):
        tally.add(cid, problems)
    held = held_locks(shim)
    tally.add("every lock released", [f"{len(held)} locks still held"] if held else [])
    files = lock_files(shim)
    tally.add("one lock file per container", [] if len(files) == count else [f"{len(files)} lock files"])
    tally.report()


def check_own_calls(shim: Shim, cid: str, pids: tuple[int, int], problems: list[str]) -> None:
    for argv in shim.cuda_calls(cid):
        if "--pid" in argv and int(argv[argv.index("--pid") + 1]) not in pids:
            problems.append(f"cuda-checkpoint of {cid} called for another container's PID: {argv}")


def check_shared_logs(shim: Shim, detail: Path, count: int, tally: Tally) -> None:
    problems: list[str] = []
    per_container: Counter[str] = Counter()
    for number, line in enumerate(detail.read_text().splitlines(), 1):
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            problems.append(f"detailed log line {number} is not whole JSON: {line[:80]!r}")
            continue
        cid = record.get("container")
        if isinstance(cid, str):
            per_container[cid] += 1
            index = int(cid.removeprefix("load"))
            own = set(pids_of(index))
            for key in ("pids",):
                if isinstance(record.get(key), list) and not set(record[key]) <= own:
                    problems.append(f"a record of {cid} names other PIDs: {record[key]}")
    by_kind = Counter(n for c, n in per_container.items() if int(c.removeprefix("load")) % 10)
    if len(per_container) != count:
        problems.append(f"{len(per_container)} containers in the detailed log, not {count}")
    if len(by_kind) > 1:
        problems.append(f"containers with the same work wrote different numbers of lines: {dict(by_kind)}")
    for number, line in enumerate((shim.root / "calls.jsonl").read_text().splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            problems.append(f"the fake runsc's call log line {number} is torn")
    tally.add("shared logs whole and complete", problems)
    tally.notes["detail_log_lines"] = sum(per_container.values())


def _writer(path: str, index: int, records: int, size: int) -> None:
    logger = logs.detail_logger(path, "info")
    for n in range(records):
        logger.info("record", extra={"writer": index, "n": n, "payload": str(index % 10) * size})


def test_many_processes_writing_large_records_to_one_detailed_log(tmp_path: Path) -> None:
    """python-json-logger through one FileHandler per process: large records must not interleave."""
    path = str(tmp_path / "detail.log")
    writers, records, size = 8, 50 * scale(), 20_000
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, i, records, size)) for i in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    tally = Tally("load: concurrent writers to one detailed log")
    seen: Counter[int] = Counter()
    problems = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"torn line: {line[:60]!r}")
            continue
        if record["payload"] != str(record["writer"] % 10) * size:
            problems.append("a record's payload is mixed up")
        seen[record["writer"]] += 1
    if seen != dict.fromkeys(range(writers), records):
        problems.append(f"lost records: {dict(seen)}")
    tally.add(f"{writers} processes x {records} records of {size // 1000} kB", problems)
    tally.report()
    assert all(p.exitcode == 0 for p in procs)
    assert os.path.getsize(path) > writers * records * size
