"""The command-line model: lossless round trips and the verb found the way Go's flag package finds it."""

from __future__ import annotations

import pytest

from runsc_cuda.oci.argv import ArgvError, Flag, VerbFlags, parse, parse_verb_args
from runsc_cuda.oci.verbs import known_flags

DOCKER = ["--root", "/var/run/docker/runtime-runc/moby", "--log", "/b/log.json", "--log-format", "json"]

# (command line after the program name, expected verb, expected positional args after verb flags)
REAL_CALLS = [
    ([*DOCKER, "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/s.sock", "c1"], "create"),
    ([*DOCKER, "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "c1"], "create"),
    ([*DOCKER, "start", "c1"], "start"),
    ([*DOCKER, "state", "c1"], "state"),
    ([*DOCKER, "kill", "c1", "15"], "kill"),
    ([*DOCKER, "delete", "--force", "c1"], "delete"),
    ([*DOCKER, "pause", "c1"], "pause"),
    ([*DOCKER, "resume", "c1"], "resume"),
    ([*DOCKER, "ps", "--format", "json", "c1"], "ps"),
    ([*DOCKER, "update", "--resources", "-", "c1"], "update"),
    (
        [
            *DOCKER,
            "exec",
            "--process",
            "/tmp/runc-process1",
            "--console-socket",
            "/s",
            "--detach",
            "--pid-file",
            "/p",
            "c1",
        ],
        "exec",
    ),
    (
        [
            *DOCKER,
            "checkpoint",
            "--image-path",
            "/tmp/ctd-checkpoint1",
            "--work-path",
            "/b/work/criu-work",
            "--leave-running",
            "c1",
        ],
        "checkpoint",
    ),
    (
        [
            *DOCKER,
            "restore",
            "--image-path",
            "/tmp/ctrd-checkpoint1",
            "--work-path",
            "/b/work",
            "--detach",
            "--pid-file",
            "/b/init.pid",
            "-no-subreaper",
            "--bundle",
            "/b",
            "c1",
        ],
        "restore",
    ),
    (["--runtimeArg=1", "--systemd-cgroup", "--root", "/r", "state", "c1"], "state"),
    (["--debug", "--debug-log", "/tmp/d/", "--strace", "create", "c1"], "create"),
]


@pytest.mark.parametrize("tokens,verb", REAL_CALLS, ids=[" ".join(t[len(DOCKER) :][:2]) for t, _ in REAL_CALLS])
def test_real_docker_and_containerd_calls_round_trip_and_find_the_verb(tokens: list[str], verb: str) -> None:
    cmd = parse(["runsc-cuda", *tokens])
    assert cmd.verb == verb
    assert cmd.tokens() == ["runsc-cuda", *tokens]


def test_a_global_flag_value_equal_to_a_verb_is_not_the_verb() -> None:
    cmd = parse(["x", "--root", "create", "create", "--bundle", "b", "id"])
    assert cmd.verb == "create"
    assert cmd.global_value("root") == "create"
    assert cmd.rest == ("--bundle", "b", "id")


def test_value_after_equals_sign_does_not_take_the_next_token() -> None:
    cmd = parse(["x", "--root=restore", "checkpoint", "c"])
    assert cmd.verb == "checkpoint"
    assert cmd.global_value("root") == "restore"


def test_boolean_global_flags_never_take_a_separate_value() -> None:
    cmd = parse(["x", "--debug", "create", "c"])
    assert cmd.verb == "create"
    assert cmd.global_flag("debug") == Flag("debug", None, ("--debug",))


def test_boolean_with_explicit_false_is_false() -> None:
    cmd = parse(["x", "--nvproxy=false", "create", "c"])
    flag = cmd.global_flag("nvproxy")
    assert flag is not None and not flag.as_bool()


def test_single_and_double_dash_flags_are_the_same_flag() -> None:
    assert parse(["x", "-root", "/r", "state", "c"]).global_value("root") == "/r"
    assert parse(["x", "--root", "/r", "state", "c"]).global_value("root") == "/r"


def test_unknown_global_flags_take_a_value_like_runsc_value_flags() -> None:
    cmd = parse(["x", "--platform", "systrap", "run", "c"])
    assert cmd.verb == "run"


def test_the_last_occurrence_of_a_flag_wins() -> None:
    cmd = parse(["x", "--root", "/a", "--root", "/b", "state", "c"])
    assert cmd.global_value("root") == "/b"


def test_no_verb_is_none() -> None:
    assert parse(["x", "--version"]).verb is None
    assert parse(["x"]).verb is None


def test_double_dash_stops_flag_parsing_and_round_trips() -> None:
    cmd = parse(["x", "--root", "/r", "--", "state", "c"])
    assert cmd.verb is None
    assert cmd.tokens() == ["x", "--root", "/r", "--", "state", "c"]


@pytest.mark.parametrize("bad", [["x", "---root", "state"], ["x", "-=a", "state"], ["x", "--root"]])
def test_bad_flag_syntax_is_an_argv_error(bad: list[str]) -> None:
    with pytest.raises(ArgvError):
        parse(bad)


def test_verb_flags_split_from_the_container_id() -> None:
    cmd = parse(
        [
            "x",
            *DOCKER,
            "restore",
            "--image-path",
            "/i",
            "--work-path",
            "/w",
            "--detach",
            "--pid-file",
            "/p",
            "-no-subreaper",
            "--bundle",
            "/b",
            "c1",
        ]
    )
    args = parse_verb_args(cmd.rest, known_flags("restore"))
    assert args.args == ("c1",)
    assert args.value("image-path") == "/i"
    assert args.value("bundle") == "/b"
    assert args.is_set("detach") and args.is_set("no-subreaper")
    assert args.tokens() == list(cmd.rest)


def test_unknown_verb_flag_before_the_id_is_a_boolean() -> None:
    args = parse_verb_args(["--mystery", "c1"], VerbFlags(frozenset(), frozenset()))
    assert args.args == ("c1",)
    assert args.is_set("mystery")


def test_unknown_verb_flag_followed_by_a_value_and_the_id_takes_the_value() -> None:
    args = parse_verb_args(["--mystery", "v", "c1"], VerbFlags(frozenset(), frozenset()))
    assert args.value("mystery") == "v"
    assert args.args == ("c1",)


def test_with_global_appends_a_canonical_flag() -> None:
    cmd = parse(["x", "--root", "/r", "create", "c"]).with_global(Flag.make("nvproxy", "true"))
    assert cmd.tokens() == ["x", "--root", "/r", "--nvproxy=true", "create", "c"]
