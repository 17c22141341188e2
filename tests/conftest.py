"""Shared fixtures: the fake runsc and cuda-checkpoint, bundles from real Docker fixtures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fakes
from fakes.fake_runsc import GLOBAL_BOOLS, GLOBAL_VALUES, GoFlags

pytest_plugins = ["hygiene"]  # tests/hygiene.py: the session fails if it leaves sandboxes or system files behind

REPO = Path(__file__).resolve().parent.parent
# config.json files Docker 20.10 + containerd 1.6 wrote for real containers (copied from shared/fixtures).
FIXTURES = REPO / "tests" / "fixtures" / "docker-bundles"


def fixture_spec(name: str) -> dict[str, Any]:
    """A config.json that Docker wrote for a real container (see shared/fixtures)."""
    with open(FIXTURES / f"{name}.json") as f:
        return dict(json.load(f))


# The entry points every `shim` test runs against: the Python module, and the
# PyInstaller onedir binary when one is named (`make test` builds one and
# names it).  Without a binary those cases skip and say why.
ENV_TEST_BINARY = "RUNSC_CUDA_TEST_BINARY"
ENTRY_POINTS = ("python", "binary")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--binary",
        default=os.environ.get(ENV_TEST_BINARY, ""),
        help=f"a built runsc-cuda binary to run the shim tests against too (env {ENV_TEST_BINARY})",
    )


def pytest_configure(config: pytest.Config) -> None:
    binary = config.getoption("--binary")
    if binary and not os.access(binary, os.X_OK):
        raise pytest.UsageError(f"--binary / {ENV_TEST_BINARY}: {binary} is not an executable file")


def entry_command(config: pytest.Config, kind: str) -> list[str]:
    """The command line that starts runsc-cuda for an entry point (skips when there is none)."""
    if kind == "python":
        return [sys.executable, "-m", "runsc_cuda"]
    binary = config.getoption("--binary")
    if not binary:
        pytest.skip(f"no built binary (make test, or {ENV_TEST_BINARY}=PATH)")
    return [os.path.abspath(binary)]


def pytest_report_header(config: pytest.Config) -> str:
    binary = config.getoption("--binary")
    if binary:
        return f"runsc-cuda entry points: python module, binary {binary}"
    return (
        "runsc-cuda entry points: python module only; the [binary] cases skip. `make test` builds "
        f"the binary and runs them, or set {ENV_TEST_BINARY}=dist/runsc-cuda-<version>-linux-<arch>/runsc-cuda"
    )


@dataclass
class Shim:
    """runsc-cuda over the fake runsc, in a private root, with its own config."""

    tmp: Path
    bin: Path
    root: Path
    env: dict[str, str]
    fakes: dict[str, str]
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "runsc_cuda"])
    entry: str = "python"  # or "binary"

    def bundle(self, name: str = "plain", spec: dict[str, Any] | None = None, raw: bytes | None = None) -> Path:
        folder = self.tmp / "bundles" / name
        folder.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            (folder / "config.json").write_bytes(raw)
        else:
            doc = spec if spec is not None else fixture_spec("plain")
            (folder / "config.json").write_text(json.dumps(doc, separators=(",", ":")))
        return folder

    def run(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = dict(self.env)
        full_env.update(env or {})
        return subprocess.run(
            [*self.command, "--root", str(self.root), *args],
            input=stdin,
            capture_output=True,
            env=full_env,
            timeout=timeout,
            check=False,
            **kw,
        )

    def calls(self) -> list[dict[str, Any]]:
        path = self.root / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def runsc_argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    @staticmethod
    def verb_of(argv: list[str]) -> str:
        """The runsc verb of a recorded call (after its global flags); "" for --version."""
        _, rest = GoFlags(GLOBAL_BOOLS, GLOBAL_VALUES).parse(argv)
        return rest[0] if rest else ""

    def calls_of(self, verb: str, since: int = 0) -> list[list[str]]:
        """The recorded runsc calls of one verb (``help restore`` is a help call, not a restore)."""
        return [a for a in self.runsc_argvs()[since:] if self.verb_of(a) == verb]

    def wait_background(self, bundle: Path, timeout: float = 30) -> str:
        """The runtime-log line of the background-restore watcher, once it has written it."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.log_entries(bundle):
                if "background restore of" in entry.get("msg", ""):
                    return str(entry["msg"])
            time.sleep(0.05)
        raise AssertionError(f"no background-restore line in {bundle / 'log.json'} after {timeout}s")

    def gpu_container(
        self,
        cid: str,
        pids: tuple[int, ...] = (1,),
        cuda_pids: tuple[int, ...] = (),
        status: str = "running",
        doc: dict[str, Any] | None = None,
    ) -> Path:
        """A GPU container created and started through runsc-cuda (paused if asked)."""
        doc = doc if doc is not None else fixture_spec("gpu-devices")
        annotations = doc.setdefault("annotations", {})
        annotations["test.fake-runsc/pids"] = ",".join(map(str, pids))
        annotations["test.fake-runsc/cuda-pids"] = ",".join(map(str, cuda_pids))
        bundle = self.bundle(cid, doc)
        for args in (["create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), cid], ["start", cid]):
            out = self.run(*args)
            assert out.returncode == 0, out.stderr
        if status == "paused":
            assert self.run("pause", cid).returncode == 0
        return bundle

    def cuda_states(self, cid: str) -> dict[int, str]:
        path = self.root / cid / "cuda.json"
        return {int(k): v for k, v in json.loads(path.read_text()).items()}

    def status(self, cid: str) -> str:
        return str(json.loads((self.root / cid / "state.json").read_text())["status"])

    def cuda_calls(self, cid: str) -> list[list[str]]:
        path = self.root / cid / "cuda-calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines() if line.strip()]

    def docker(self, bundle: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        """A call with the global flags Docker/containerd pass (runtime log in the bundle)."""
        return self.run("--log", str(bundle / "log.json"), "--log-format", "json", *args, **kw)

    def docker_restore(
        self, bundle: Path, image: Path, cid: str = "c1", **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """containerd's restore call for `docker start --checkpoint` (the stopped container already deleted)."""
        return self.docker(
            bundle,
            "restore",
            "--image-path",
            str(image),
            "--work-path",
            str(bundle / "work"),
            "--detach",
            "--pid-file",
            str(bundle / "init.pid"),
            "-no-subreaper",
            "--bundle",
            str(bundle),
            cid,
            **kw,
        )

    def log_entries(self, bundle: Path) -> list[dict[str, Any]]:
        path = bundle / "log.json"
        if not path.exists():
            return []
        decoder = json.JSONDecoder()
        text, pos, out = path.read_text(), 0, []
        while pos < len(text):  # containerd reads it as a stream of JSON values, not lines
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            obj, pos = decoder.raw_decode(text, pos)
            out.append(obj)
        return out

    def last_error(self, bundle: Path) -> str:
        errors = [e["msg"] for e in self.log_entries(bundle) if e.get("level") == "error"]
        return errors[-1] if errors else ""

    def write_config(self, text: str) -> Path:
        path = self.tmp / "config.toml"
        path.write_text(text)
        self.env["RUNSC_CUDA_CONFIG"] = str(path)
        return path


@pytest.fixture(params=ENTRY_POINTS)
def shim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shim]:
    """runsc-cuda as the Python module, and as the built binary (see ENTRY_POINTS)."""
    command = entry_command(request.config, request.param)
    bin_dir = tmp_path / "bin"
    paths = fakes.install(str(bin_dir))
    root = tmp_path / "root"
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "RUNSC_CUDA_CONFIG": str(tmp_path / "no-config.toml"),
        "RUNSC_CUDA_CUDA_CHECKPOINT": paths["cuda-checkpoint"],
        "RUNSC_CUDA_NVPROXY": "true",
        "RUNSC_CUDA_STATE_DIR": str(tmp_path / "state"),
        "RUNSC_CUDA_LOCK_TIMEOUT_MS": "500",
        "RUNSC_CUDA_CUDA_CALL_TIMEOUT_S": "20",
        "HOME": str(tmp_path),
    }
    if request.param == "binary":
        del env["PYTHONPATH"]  # the binary carries its own runsc_cuda
    (tmp_path / "no-config.toml").write_text("")
    yield Shim(tmp_path, bin_dir, root, env, paths, command, request.param)
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
