"""The shipped /etc/runsc-cuda/config.toml and the config reference follow config.Config and DOCS."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from runsc_cuda import conffile, config
from runsc_cuda.oci import runsc


def test_every_key_is_documented_and_has_a_default() -> None:
    keys = [f.name for f in dataclasses.fields(config.Config)]
    assert sorted(keys) == sorted(config.DOCS)
    assert list(conffile.defaults()) == keys


def test_shipped_file_parses_and_sets_nothing() -> None:
    text = conffile.render_toml()
    assert tomllib.loads(text) == {}
    assert config.parse_text(text, "config.toml") == config.Config()


def test_every_key_appears_once_commented_out_with_its_doc() -> None:
    text = conffile.render_toml()
    settings = re.findall(r"^# ([a-z_]+) = ", text, re.MULTILINE)
    assert settings == [f.name for f in dataclasses.fields(config.Config)]
    prose = " ".join(line[3:] for line in text.splitlines() if line.startswith("## "))
    for key, doc in config.DOCS.items():
        assert " ".join(doc.split()) in prose, key


def test_uncommenting_every_line_gives_the_defaults() -> None:
    text = conffile.uncomment(conffile.render_toml())
    data = tomllib.loads(text)
    assert sorted(data) == sorted(config.DOCS)
    assert config.parse_text(text, "config.toml") == config.Config()


def test_uncommented_file_is_read_by_the_pass_through_fast_path() -> None:
    # runsc = "" is "look runsc up on PATH", for the fast reader as for the full parser.
    sure, value = runsc.fast_config_runsc(conffile.uncomment(conffile.render_toml()))
    assert sure
    assert not value


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(config.Config) if f.default is None])
def test_empty_string_means_unset_in_the_file(key: str) -> None:
    assert config.parse_text(f'{key} = ""\n', "config.toml").get(key) is None


def test_editing_an_uncommented_line_takes_effect() -> None:
    text = conffile.uncomment(conffile.render_toml()).replace('engine = "auto"', 'engine = "exec"')
    assert config.parse_text(text, "config.toml").engine == "exec"


def test_markdown_reference_has_a_row_per_key() -> None:
    table = conffile.render_markdown()
    for key in config.DOCS:
        assert f"| `{key}` |" in table
        assert f"`RUNSC_CUDA_{key.upper()}`" in table
