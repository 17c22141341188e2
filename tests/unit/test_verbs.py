"""runc flags that runsc lacks: kept, dropped, renamed or refused, checked against the fake runsc's strict flag sets."""

from __future__ import annotations

import pytest

from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import parse_verb_args
from runsc_cuda.oci.verbs import known_flags, translate

from support import fake_accepts

KEPT = [
    ("checkpoint", ["--image-path", "/i", "--work-path", "/w", "--leave-running", "c"]),
    ("restore", ["--image-path", "/i", "--work-path", "/w", "--detach", "-no-subreaper", "--bundle", "/b", "c"]),
    ("create", ["--bundle", "/b", "--pid-file", "/p", "--console-socket", "/s", "c"]),
]

DROPPED = [
    ("checkpoint", "--tcp-established"),
    ("checkpoint", "--ext-unix-sk"),
    ("checkpoint", "--shell-job"),
    ("checkpoint", "--file-locks"),
    ("checkpoint", "--empty-ns=network"),
    ("checkpoint", "--manage-cgroups-mode=soft"),
    ("restore", "--tcp-established"),
    ("restore", "--ext-unix-sk"),
    ("restore", "--shell-job"),
    ("restore", "--file-locks"),
    ("restore", "--empty-ns=network"),
    ("restore", "--manage-cgroups-mode=soft"),
    ("restore", "--no-pivot"),
    ("create", "--no-pivot"),
    ("create", "--no-new-keyring"),
    ("create", "--preserve-fds=0"),
    ("run", "--no-pivot"),
]

REFUSED = [
    ("checkpoint", "--pre-dump"),
    ("checkpoint", "--lazy-pages"),
    ("checkpoint", "--parent-path=/p"),
    ("checkpoint", "--page-server=1.2.3.4:9"),
    ("checkpoint", "--status-fd=3"),
    ("restore", "--lazy-pages"),
    ("create", "--preserve-fds=2"),
    ("run", "--preserve-fds=1"),
]


@pytest.mark.parametrize("verb,tokens", KEPT)
def test_flags_runsc_knows_are_kept_unchanged(verb: str, tokens: list[str]) -> None:
    args = parse_verb_args(tokens, known_flags(verb))
    out = translate(verb, args)
    assert out.args.tokens() == tokens
    assert fake_accepts(verb, out.args.tokens())


@pytest.mark.parametrize("verb,flag", DROPPED)
def test_criu_tuning_flags_are_dropped_and_runsc_accepts_the_rest(verb: str, flag: str) -> None:
    tokens = ["--bundle", "/b", flag, "c"] if verb in ("create", "run") else ["--image-path", "/i", flag, "c"]
    out = translate(verb, parse_verb_args(tokens, known_flags(verb)))
    assert flag not in out.args.tokens()
    assert [f.tokens[0] for f in out.dropped] == [flag]
    assert fake_accepts(verb, out.args.tokens())
    # and the untranslated call is one the strict fake runsc refuses with exit 128
    assert not fake_accepts(verb, tokens)


@pytest.mark.parametrize("verb,flag", REFUSED)
def test_flags_runsc_cannot_honour_are_refused_with_the_reason(verb: str, flag: str) -> None:
    tokens = ["--image-path", "/i", flag, "c"] if verb in ("checkpoint", "restore") else [flag, "c"]
    with pytest.raises(ShimError) as e:
        translate(verb, parse_verb_args(tokens, known_flags(verb)))
    assert flag.split("=")[0].lstrip("-") in str(e.value)


def test_runc_short_bundle_and_detach_become_runsc_flags() -> None:
    out = translate("restore", parse_verb_args(["-b", "/b", "-d", "--image-path", "/i", "c"], known_flags("restore")))
    assert out.args.tokens() == ["--bundle=/b", "--detach", "--image-path", "/i", "c"]
    assert fake_accepts("restore", out.args.tokens())
