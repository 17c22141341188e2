"""Fuzzing: property tests for everything runsc-cuda parses.

- the argv model: parse/render round trips, the verb is the one Go's flag
  package finds, no exception but ArgvError/ShimError on any token list;
- GPU detection and patching: any JSON value as config.json gives a clean
  patch or a clean error (ShimError), never a traceback, never a partial file;
  a few of them end to end through ``runsc-cuda create``;
- cuda-checkpoint and runsc output parsing (``--get-state``, ``--help``,
  ``runsc state``/``ps``/``help``/``--version``, error text), the image
  sidecar, the runtime log line, the driver's /proc files.

Each property runs ``200 x scale`` examples (``RUNSC_CUDA_RELIABILITY_SCALE``);
the figures count every example.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsc_cuda import layout, logs
from runsc_cuda.cuda import host, protocol
from runsc_cuda.errors import ShimError
from runsc_cuda.image import sidecar
from runsc_cuda.oci import help, sandbox, schema, spec, verbs
from runsc_cuda.oci.argv import GLOBAL_BOOL_FLAGS, ArgvError, Flag, VerbFlags, parse, parse_verb_args
from runsc_cuda.runner import Result

from fakes import fake_runsc
from suite import Tally, entry_point, scale
from support import Shim, fixture_spec


def examples(n: int = 200) -> int:
    return n * scale()


def fuzz(name: str, strategy: st.SearchStrategy[Any], check: Callable[[Any], None], n: int = 200) -> None:
    """Run ``check`` on ``n x scale`` examples and report them as a suite of the figures."""
    tally = Tally(f"fuzz {name}")

    @settings(
        max_examples=examples(n),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(strategy)
    def prop(value: Any) -> None:
        try:
            check(value)
        except BaseException as e:
            tally.add(repr(value)[:200], [f"{type(e).__name__}: {e}"])
            raise
        tally.add("", [])

    prop()
    tally.report()


# --- argv ---------------------------------------------------------------------------------

VERBS = ["create", "run", "start", "state", "kill", "delete", "checkpoint", "restore", "exec", "ps", "pause"]
NAMES = sorted({"root", "log", "log-format", "debug", "nvproxy", "platform", "network", "x", "-", "=", "h"})
tokens_any = st.lists(st.text(max_size=12), max_size=12)
token_like = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["-", "--", "---", "-=", "--=x", "-root", "--root=", "--debug=false", "-log", *VERBS]),
    st.builds(lambda d, n, v: f"{d}{n}{v}", st.sampled_from(["-", "--"]), st.sampled_from(NAMES), st.text(max_size=4)),
)
token_lists = st.lists(token_like, max_size=14)


def check_argv(tokens: list[str]) -> None:
    argv = ["runsc-cuda", *tokens]
    try:
        cmd = parse(argv)
    except ArgvError:
        return
    assert cmd.tokens() == argv, "parse/render is not a round trip"
    # The verb is the token Go's flag package stops at (the strict fake runsc parses like runsc).
    try:
        _, rest = fake_runsc.GoFlags(fake_runsc.GLOBAL_BOOLS, fake_runsc.GLOBAL_VALUES | _unknown(tokens)).parse(tokens)
    except fake_runsc.Fatal:
        rest = None
    if rest is not None and cmd.verb is not None:
        assert rest and rest[0] == cmd.verb, (rest, cmd.verb)
    # Adding a flag never moves the verb.
    again = parse(cmd.with_global(Flag.make("nvproxy", "true")).tokens())
    assert again.verb == cmd.verb and again.rest == cmd.rest
    assert again.global_value("nvproxy") == "true"
    if cmd.verb in verbs.VERBS:
        try:
            args = parse_verb_args(cmd.rest, verbs.known_flags(cmd.verb))
        except ArgvError:
            return
        assert args.tokens() == list(cmd.rest), "verb args are not a round trip"
        with contextlib.suppress(ShimError):
            verbs.translate(cmd.verb, args)


def _unknown(tokens: list[str]) -> set[str]:
    """Names runsc-cuda treats as value flags because it does not know them (as runsc would fail on them)."""
    out = set()
    for token in tokens:
        if token.startswith("-") and len(token) > 1:
            name = token.lstrip("-").partition("=")[0]
            if name and name not in GLOBAL_BOOL_FLAGS:
                out.add(name)
    return out


def test_fuzz_argv_any_token_list() -> None:
    fuzz("argv: any tokens", st.one_of(tokens_any, token_lists), check_argv, n=400)


flag_token = st.one_of(
    st.sampled_from(sorted(GLOBAL_BOOL_FLAGS)).map(lambda n: [f"--{n}"]),
    st.sampled_from(sorted(GLOBAL_BOOL_FLAGS)).map(lambda n: [f"-{n}=false"]),
    st.tuples(st.sampled_from(["root", "log", "log-format", "platform"]), st.text(max_size=8)).map(
        lambda p: [f"--{p[0]}", p[1]]
    ),
    st.tuples(st.sampled_from(["root", "log"]), st.text(max_size=8)).map(lambda p: [f"-{p[0]}={p[1]}"]),
)


def check_verb_found(value: tuple[list[list[str]], str, list[str]]) -> None:
    flags, verb, rest = value
    argv = ["runsc-cuda", *[t for f in flags for t in f], verb, *rest]
    cmd = parse(argv)
    assert cmd.verb == verb
    assert len(cmd.global_flags) == len(flags)
    assert list(cmd.rest) == rest
    assert cmd.tokens() == argv


def test_fuzz_the_verb_is_found_after_any_global_flags() -> None:
    strategy = st.tuples(st.lists(flag_token, max_size=6), st.sampled_from(VERBS), tokens_any)
    fuzz("argv: verb found", strategy, check_verb_found)


def check_verb_args(value: tuple[str, list[str]]) -> None:
    verb, rest = value
    known = verbs.known_flags(verb)
    try:
        args = parse_verb_args(rest, known)
    except ArgvError:
        return
    assert args.tokens() == rest
    try:
        out = verbs.translate(verb, args)
    except ShimError:
        return
    for flag in out.args.flags:  # what runsc gets is something runsc accepts
        assert flag.name in verbs.VERBS[verb].runsc.bools | verbs.VERBS[verb].runsc.values or not known.knows(flag.name)


def test_fuzz_verb_args_of_the_intercepted_verbs() -> None:
    names = sorted({n for v in verbs.VERBS for n in verbs.known_flags(v).bools | verbs.known_flags(v).values})
    verb_token = st.one_of(
        st.text(max_size=8),
        st.sampled_from(names).map(lambda n: f"--{n}"),
        st.sampled_from(names).map(lambda n: f"-{n}=x"),
    )
    strategy = st.tuples(st.sampled_from(sorted(verbs.VERBS)), st.lists(verb_token, max_size=10))
    fuzz("argv: verb flags", strategy, check_verb_args)


# --- config.json: GPU detection and patching ---------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
DESTS = [layout.CONTAINER_CUDA_CHECKPOINT, "/usr/local/bin/cuda-checkpoint/", "usr/local/bin/cuda-checkpoint", "/x"]
mount_like = st.fixed_dictionaries(
    {"destination": st.one_of(st.sampled_from(DESTS), json_values)},
    optional={
        "type": st.one_of(st.sampled_from(["bind", "tmpfs"]), json_values),
        "source": st.one_of(st.text(max_size=8), json_values),
        "options": st.one_of(st.just(list(spec.CUDA_CHECKPOINT_OPTIONS)), st.lists(st.text(max_size=5)), json_values),
    },
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "ociVersion": json_values,
        "mounts": st.one_of(st.lists(st.one_of(mount_like, json_values), max_size=3), json_values),
        "linux": st.one_of(
            st.fixed_dictionaries(
                {"devices": st.one_of(st.lists(st.fixed_dictionaries({"path": st.text(max_size=14)})), json_values)}
            ),
            json_values,
        ),
        "hooks": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    k: st.lists(st.fixed_dictionaries({"path": st.sampled_from(["/x/nvidia-cdi-hook", "/h"])}))
                    for k in schema.HOOK_KINDS
                },
            ),
            json_values,
        ),
        "process": st.one_of(
            st.fixed_dictionaries({"env": st.lists(st.sampled_from(["NVIDIA_VISIBLE_DEVICES=all", "A=b", "x"]))}),
            json_values,
        ),
        "annotations": st.one_of(
            st.dictionaries(
                st.sampled_from([spec.GPU_OVERRIDE, spec.GVISOR_NVPROXY, "cdi.k8s.io/x", "a"]),
                st.one_of(st.sampled_from(["true", "false", "nvidia.com/gpu=0", "TRUE ", ""]), json_values),
            ),
            json_values,
        ),
    },
)


class SpecCheck:
    def __init__(self, folder: Path, host_binary: str) -> None:
        self.folder = folder
        self.host_binary = host_binary
        self.n = 0

    def __call__(self, value: Any) -> None:
        self.n += 1
        bundle = self.folder / f"b{self.n}"
        bundle.mkdir()
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        (bundle / "config.json").write_bytes(raw)
        new: bytes | None = None
        try:
            read = spec.read(str(bundle))
            gpu = spec.gpu_request(read.doc)
            if gpu.wanted:
                result = spec.patch(read.doc, self.host_binary)
                if result.doc is not None:
                    new = spec.dumps(result.doc)
                    spec.save_atomic(read, new)
        except ShimError as e:
            assert "\n" not in e.message and e.message
        now = (bundle / "config.json").read_bytes()
        assert now in (raw, new), "config.json is neither the old nor the new file"
        assert sorted(os.listdir(bundle)) == ["config.json"], "a temporary file was left behind"
        if new is not None and now == new:
            doc = json.loads(now)
            ours = [m for m in doc["mounts"] if spec.is_our_mount(m)]
            assert len(ours) == 1 and ours[0]["source"] == self.host_binary
            assert "ro" in ours[0]["options"]
            again = spec.patch(doc, self.host_binary)
            assert again.doc is None, "patching twice added a second mount"


def test_fuzz_any_json_value_as_config_json(tmp_path: Path) -> None:
    check = SpecCheck(tmp_path, "/usr/bin/cuda-checkpoint")
    strategy = st.one_of(json_values, spec_like, st.binary(max_size=40))
    fuzz("config.json: any JSON value", strategy, check, n=400)


def test_fuzz_config_json_end_to_end_through_create(shim: Shim) -> None:
    """A few of them through ``runsc-cuda create``: one line on failure, never a traceback or a partial file."""
    entry_point(shim)
    counter = iter(range(10**6))
    base = fixture_spec("gpu-devices")

    def check(value: Any) -> None:
        n = next(counter)
        doc = dict(base)
        doc.update(value) if isinstance(value, dict) else None
        raw = json.dumps(doc if isinstance(value, dict) else value).encode()
        bundle = shim.bundle(f"e2e{n}", raw=raw)
        out = shim.docker(bundle, "create", "--bundle", str(bundle), "x")
        err = out.stderr.decode(errors="replace")
        assert "Traceback" not in err and "internal error" not in err, err
        now = (bundle / "config.json").read_bytes()
        leftovers = [p for p in os.listdir(bundle) if p not in ("config.json", "log.json")]
        assert not leftovers, leftovers
        if out.returncode != 0:
            assert shim.last_error(bundle), "failed without an error in log.json"
        else:
            json.loads(now)
        shim.run("delete", "--force", "x")

    fuzz("config.json: end to end", st.one_of(spec_like, json_values), check, n=10)


# --- output parsing --------------------------------------------------------------------------

some_bytes = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([s.encode() for s in protocol.STATES]).map(lambda b: b + b"\n"),
    st.builds(
        lambda a, s, b: (a + s + b).encode(),
        st.text(" \n\t", max_size=3),
        st.sampled_from(protocol.STATES),
        st.text(max_size=3),
    ),
)


def check_cuda_state(output: bytes) -> None:
    state = protocol.parse_state(output)
    assert state is None or (state in protocol.STATES and output.strip().decode() == state)
    caps = protocol.Capabilities.from_help(output.decode("utf-8", errors="replace"))
    assert isinstance(caps.get_state, bool)


def test_fuzz_cuda_checkpoint_output() -> None:
    fuzz("cuda-checkpoint output", some_bytes, check_cuda_state, n=300)


pid_items = st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=5), st.none())
ps_outputs = st.one_of(
    some_bytes,
    st.lists(pid_items, max_size=8).map(lambda v: json.dumps(v).encode()),
    st.lists(st.integers(min_value=-5, max_value=sandbox.PID_MAX + 5), max_size=8).map(
        lambda v: json.dumps(v).encode()
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
)


def check_ps(output: bytes) -> None:
    try:
        pids = sandbox.parse_pids(output)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return
    assert all(type(p) is int and 0 < p <= sandbox.PID_MAX for p in pids)
    assert len(set(pids)) == len(pids) <= sandbox.MAX_PIDS


def test_fuzz_runsc_ps_output() -> None:
    fuzz("runsc ps output", ps_outputs, check_ps, n=300)


state_docs = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "status": st.one_of(st.sampled_from(["running", "paused", "created", "stopped"]), json_values),
        "bundle": st.one_of(st.text(max_size=10), json_values),
        "pid": st.one_of(st.integers(), json_values),
    },
)


def check_state(output: bytes) -> None:
    try:
        state = sandbox.parse_state(output, "c1")
    except ShimError as e:
        assert "\n" not in e.message
        return
    assert isinstance(state.status, str) and isinstance(state.bundle, str) and isinstance(state.pid, int)


def test_fuzz_runsc_state_output() -> None:
    strategy = st.one_of(some_bytes, state_docs.map(lambda d: json.dumps(d).encode()), ps_outputs)
    fuzz("runsc state output", strategy, check_state, n=300)


class StubSession:
    """Enough of a Session for the functions that read runsc's help and version output."""

    made = 0

    def __init__(self, out: bytes, err: bytes, code: int) -> None:
        self.result = Result(("runsc",), code, out, err, 0.0)
        # A runsc path of its own each time: help answers are kept per runsc binary.
        StubSession.made += 1
        self.runsc = f"/nonexistent/fuzz-runsc-{StubSession.made}"
        self.config = types.SimpleNamespace(state_dir="/nonexistent")

    def call_runsc(self, args: list[str], timeout: float | None = None) -> Result:
        return self.result

    def ask_runsc(self, args: list[str]) -> Result:
        return self.result


def check_help_and_errors(value: tuple[bytes, bytes, int]) -> None:
    out, err, code = value
    session: Any = StubSession(out, err, code)
    flags = help.read(session, "checkpoint").flags
    assert all(isinstance(f, str) and f for f in flags)
    version = help.version(session)
    assert len(version) <= 200 and "\n" not in version
    result = session.result
    text = result.error_text()
    assert "\n" not in text and len(text) <= 300
    assert "\n" not in result.describe()


def test_fuzz_runsc_help_version_and_error_output() -> None:
    help_like = st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from(["  -cuda-checkpoint-path string", "\t--leave-running"])),
        max_size=6,
    ).map(lambda lines: "\n".join(lines).encode())
    strategy = st.tuples(st.one_of(some_bytes, help_like), some_bytes, st.integers(min_value=-64, max_value=255))
    fuzz("runsc help/version/error output", strategy, check_help_and_errors, n=300)


sidecar_docs = st.fixed_dictionaries(
    {
        "format": st.one_of(st.just(1), json_values),
        "engine": st.one_of(st.sampled_from(["exec", "native"]), json_values),
        "gpus": st.one_of(st.lists(st.text(max_size=6), max_size=3), json_values),
        "cuda_processes": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "pid": st.one_of(st.integers(), json_values),
                        "state_saved": st.one_of(st.sampled_from(protocol.STATES), json_values),
                    }
                ),
                max_size=4,
            ),
            json_values,
        ),
    },
    optional={
        "driver_version": json_values,
        "timings": json_values,
        "options": json_values,
        "leave_running": json_values,
    },
)


def check_sidecar(doc: Any) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    try:
        record = sidecar.parse(text, "img/runsc-protocol.json")
    except ShimError as e:
        assert "\n" not in e.message
        return
    for proc in record.cuda_processes:
        assert 0 < proc.pid <= sandbox.PID_MAX, proc
        assert proc.state_saved in protocol.STATES, proc
    assert record.engine in ("exec", "native")


def test_fuzz_image_sidecar() -> None:
    strategy = st.one_of(sidecar_docs, json_values, st.text(max_size=30))
    fuzz("image sidecar", strategy, check_sidecar, n=300)


def check_log_line(value: tuple[str, str]) -> None:
    level, message = value
    line = logs.format_line(level, message, 1.5e9, "json")
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert doc["level"] == level and "\n" not in doc["msg"]
    text = logs.format_line(level, message, 1.5e9, "text")
    assert text.count("\n") == 1


def test_fuzz_runtime_log_lines() -> None:
    strategy = st.tuples(st.sampled_from(["info", "warning", "error"]), st.text(max_size=60))
    fuzz("runtime log line", strategy, check_log_line, n=300)


def check_proc_files(text: str) -> None:
    version = host.parse_driver_version(text)
    assert version is None or all(part.isdigit() for part in version.split("."))
    model = host.parse_gpu_model(text)
    assert model is None or ("\n" not in model and model == model.strip())
    host.GpuInfo(version, (model,) if model else ()).describe()


def test_fuzz_driver_proc_files() -> None:
    nvrm = st.builds(
        lambda a, v, b: f"NVRM version: {a} Kernel Module {v} {b}",
        st.text(string.printable, max_size=10),
        st.text("0123456789.", max_size=12),
        st.text(max_size=10),
    )
    strategy = st.one_of(st.text(max_size=80), nvrm, st.text(max_size=20).map(lambda t: f"Model: {t}\nIRQ: 1"))
    fuzz("driver /proc files", strategy, check_proc_files, n=200)


def test_verb_flags_model_accepts_what_the_strict_fake_accepts() -> None:
    """A sanity check of the fuzzers' oracle: the fake's Go parser agrees with runsc-cuda on Docker's calls."""
    known = VerbFlags(frozenset({"leave-running"}), frozenset({"image-path"}))
    args = parse_verb_args(["--image-path", "/i", "--leave-running", "c1"], known)
    assert args.args == ("c1",)
    flags, rest = fake_runsc.GoFlags({"leave-running"}, {"image-path"}).parse(
        ["--image-path", "/i", "--leave-running", "c1"]
    )
    assert rest == ["c1"] and flags["image-path"] == "/i"
