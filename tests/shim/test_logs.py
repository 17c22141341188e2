"""The runtime log containerd reads, and runsc-cuda's own detailed log."""

from __future__ import annotations

import json
from pathlib import Path

from runsc_cuda import logs

from support import Shim, fixture_spec


def test_runtime_log_lines_are_runc_json_objects(tmp_path: Path) -> None:
    log = logs.RuntimeLog(str(tmp_path / "log.json"), "json", clock=lambda: 1795890000.25)
    log.write("error", "runsc-cuda: it broke\nbadly")
    line = (tmp_path / "log.json").read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    obj = json.loads(line)
    assert obj == {"level": "error", "msg": "runsc-cuda: it broke badly", "time": "2026-11-28T18:20:00.250000Z"}


def test_runtime_log_text_format_is_logrus_like(tmp_path: Path) -> None:
    log = logs.RuntimeLog(str(tmp_path / "log"), "text", clock=lambda: 0.0)
    log.write("warning", 'say "hi"')
    assert (tmp_path / "log").read_text() == 'time="1970-01-01T00:00:00.000000Z" level=warning msg="say \\"hi\\""\n'


def test_a_line_after_runscs_newline_less_object_starts_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text('{"msg":"runsc says","level":"error","time":"2026-01-01T00:00:00Z"}')
    logs.RuntimeLog(str(path), "json").write("error", "runsc-cuda: ours")
    lines = path.read_text().splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["runsc says", "runsc-cuda: ours"]


def test_an_unwritable_runtime_log_does_not_break_the_call(tmp_path: Path) -> None:
    logs.RuntimeLog(str(tmp_path / "no" / "such" / "dir" / "log.json"), "json").write("error", "x")


def test_every_line_runsc_cuda_appends_is_json_and_the_last_error_is_ours(shim: Shim) -> None:
    doc = fixture_spec("gpu-devices")
    doc["mounts"][0]["destination"] = 1
    bundle = shim.bundle("gpu", doc)
    log = bundle / "log.json"
    out = shim.run("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 1
    objects = [json.loads(x) for x in log.read_text().splitlines()]
    assert all(set(o) == {"level", "msg", "time"} for o in objects)
    assert [o for o in objects if o["level"] == "error"][-1]["msg"] == (
        "runsc-cuda: config.json: mounts[0].destination: expected a string"
    )


def test_the_detailed_log_is_json_lines_with_fields(shim: Shim) -> None:
    detail = shim.tmp / "detail.log"
    shim.env["RUNSC_CUDA_LOG_FILE"] = str(detail)
    bundle = shim.bundle("gpu", fixture_spec("gpu-devices"))
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    records = [json.loads(x) for x in detail.read_text().splitlines()]
    assert records, "nothing logged"
    assert all({"time", "level", "msg"} <= set(r) for r in records)
    assert any(r.get("container") == "c1" and "mounted" in r["msg"] for r in records)
    assert not any(r["level"] == "DEBUG" for r in records)


def test_debug_on_the_command_line_raises_the_detail_level(shim: Shim) -> None:
    detail = shim.tmp / "detail.log"
    shim.env["RUNSC_CUDA_LOG_FILE"] = str(detail)
    bundle = shim.bundle()
    assert shim.run("--debug", "create", "--bundle", str(bundle), "c1").returncode == 0
    records = [json.loads(x) for x in detail.read_text().splitlines()]
    assert any(r["level"] == "DEBUG" and "not a GPU container" in r["msg"] for r in records)


def test_log_level_from_config(shim: Shim) -> None:
    detail = shim.tmp / "detail.log"
    shim.write_config(f'log_file = "{detail}"\nlog_level = "debug"\n')
    assert shim.run("create", "--bundle", str(shim.bundle()), "c1").returncode == 0
    assert "not a GPU container" in detail.read_text()


def test_a_field_named_like_a_log_record_attribute_does_not_break_logging(tmp_path: Path) -> None:
    logger = logs.detail_logger(str(tmp_path / "d.log"), "debug")
    report = logs.Reporter(None, logger)
    report.debug("cuda-checkpoint call", args=["--get-state"], name="x", msg="y")
    record = json.loads((tmp_path / "d.log").read_text())
    assert record["args_"] == ["--get-state"] and record["name_"] == "x" and record["msg"] == "cuda-checkpoint call"


def test_a_debug_level_checkpoint_logs_every_cuda_call(shim: Shim) -> None:
    detail = shim.tmp / "detail.log"
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOG_FILE=str(detail), RUNSC_CUDA_LOG_LEVEL="debug")
    bundle = shim.gpu_container("c1", (1, 7), (7,))
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
    assert out.returncode == 0, out.stderr
    calls = [json.loads(x) for x in detail.read_text().splitlines()]
    assert any(c["msg"] == "cuda-checkpoint call" and c["args_"][:2] == ["--action", "lock"] for c in calls)
