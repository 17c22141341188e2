"""Configuration: file, environment overrides, defaults; and the pass-through path's fast read of `runsc`."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runsc_cuda import config
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.runsc import fast_config_runsc


def test_a_missing_default_file_means_defaults(tmp_path: object) -> None:
    cfg = config.load({"RUNSC_CUDA_CONFIG": "/dev/null"})
    assert cfg == config.Config()


def test_env_overrides_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text('engine = "native"\nnvproxy = false\nlock_timeout_ms = 5\n')
    cfg = config.load({"RUNSC_CUDA_CONFIG": str(path), "RUNSC_CUDA_ENGINE": "exec", "RUNSC_CUDA_NVPROXY": "on"})
    assert cfg.engine == "exec"
    assert cfg.nvproxy is True
    assert cfg.lock_timeout_ms == 5


def test_an_empty_env_value_clears_an_optional_path() -> None:
    assert config.load({"RUNSC_CUDA_CONFIG": "/dev/null", "RUNSC_CUDA_LOG_FILE": ""}).log_file is None


def test_integers_are_accepted_for_float_keys() -> None:
    assert config.parse_text("cuda_call_timeout_s = 3", "c").cuda_call_timeout_s == 3.0


def test_every_config_key_is_documented() -> None:
    assert set(config.DOCS) == {f for f in config.Config.__dataclass_fields__}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", None),
        ('runsc = "/usr/bin/runsc"', "/usr/bin/runsc"),
        ("runsc = '/opt/g vis/runsc'  # literal", "/opt/g vis/runsc"),
        ('# runsc = "/commented"\nengine = "exec"', None),
        ('engine = "exec"\n[table]\nrunsc = "/in/a/table"', None),
    ],
)
def test_fast_runsc_read_agrees_with_toml(text: str, expected: str | None) -> None:
    sure, value = fast_config_runsc(text)
    assert sure
    assert value == expected == tomllib.loads(text).get("runsc")


@pytest.mark.parametrize(
    "text",
    [
        'runsc = "a\\tb"',
        'runsc = """multi\nline"""',
        '"runsc" = "/x"',
        "runsc.x = 1",
        'runsc = ["x"]',
        "runsc = 1",
        'runsc = "/a"\nrunsc = "/b"',
        "foo = [\n 1,\n]",
    ],
)
def test_fast_runsc_read_defers_to_tomllib_when_unsure(text: str) -> None:
    assert fast_config_runsc(text) == (False, None)


_lines = st.one_of(
    st.sampled_from(
        [
            "",
            "# comment",
            "  # indented comment",
            'engine = "exec"',
            "nvproxy = false",
            "lock_timeout_ms = 10",
            "[section]",
            "x = \"runsc = '/fake'\"",
            "runsc = 'lit'",
            'runsc = "/usr/bin/runsc" # trailing',
            'runsc = "esc\\"aped"',
            "runsc='tight'",
            'runsc = ""',
            "runsc = '' # empty",
            'key = """',
            "arr = [",
            "]",
            "'''",
            'runsc ="/x"',
            "runsc = '/x' extra",
            'runsc = "/x"',
            "\truns = 1",
        ]
    ),
    st.builds(lambda v: f'runsc = "{v}"', st.text(alphabet=st.characters(blacklist_characters='"\\\n\r'), max_size=12)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_lines, max_size=8))
def test_fast_runsc_read_never_disagrees_with_tomllib(lines: list[str]) -> None:
    text = "\n".join(lines)
    sure, value = fast_config_runsc(text)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        parsed = None
    if not sure:
        return
    if parsed is None:
        # Invalid TOML elsewhere: the fast path may still answer for `runsc`, but only from a line
        # that would itself parse as that key.
        if value is not None:
            assert any(_line_value(line) == value for line in lines)
        return
    assert value == parsed.get("runsc")


def _line_value(line: str) -> object:
    try:
        return tomllib.loads(line).get("runsc")
    except tomllib.TOMLDecodeError:
        return None


def test_invalid_values_fail_with_the_key_named() -> None:
    with pytest.raises(ShimError, match="config file c: sequential: expected true or false"):
        config.parse_text("sequential = 1", "c")


def test_pod_restore_wait_takes_zero_for_ever_and_refuses_negative_numbers() -> None:
    base = {"RUNSC_CUDA_CONFIG": "/dev/null"}
    assert config.load(base).pod_restore_wait_s == 300.0
    assert config.load({**base, "RUNSC_CUDA_POD_RESTORE_WAIT_S": "0"}).pod_restore_wait_s == 0.0
    assert config.parse_text("pod_restore_wait_s = 1", "c").pod_restore_wait_s == 1.0
    for bad in ("-1", "nan"):
        with pytest.raises(ShimError, match="RUNSC_CUDA_POD_RESTORE_WAIT_S: must be 0 or more"):
            config.load({**base, "RUNSC_CUDA_POD_RESTORE_WAIT_S": bad})
