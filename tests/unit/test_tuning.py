"""Checkpoint/restore tuning as pure functions: runsc's help, settings, plans, refusals."""

from __future__ import annotations

import pytest

from runsc_cuda.config import Config
from runsc_cuda.errors import ShimError
from runsc_cuda.image import tuning
from runsc_cuda.image.tuning import ImageFacts, Setting
from runsc_cuda.oci.argv import Flag, VerbArgs
from runsc_cuda.oci.help import RunscHelp

# `runsc help checkpoint` and `runsc help restore` of the pinned runsc (gvisor 20260905), verbatim.
CHECKPOINT_HELP = """\
checkpoint [flags] <container id> - save current state of container.
  -compression value
    \tcompress checkpoint image on disk. Values: none|flate-best-speed. (default none)
  -cuda-checkpoint-path string
    \tpath to the cuda-checkpoint binary in the container
  -cuda-checkpoint-sequential
    \trun cuda-checkpoint sequentially in the container
  -direct
    \tuse O_DIRECT for writing checkpoint pages file
  -exclude-committed-zero-pages
    \texclude committed zero-filled pages from checkpoint
  -h\tequivalent to the 'help' flag
  -help
    \tshow this message and exit
  -image-path string
    \tdirectory path to saved container image
  -leave-running
    \trestart the container after checkpointing
  -save-restore-exec-argv string
    \targv (split by spaces) for a save/restore binary that's automatically executed in the sandbox before \
saving and after restoring. If the execution fails, the save/restore process will fail.
  -save-restore-exec-timeout duration
    \ttimeout for the binary pointed to by save-restore-exec-argv. (default 10m0s)
  -work-path string
    \tignored
"""
RESTORE_HELP = """\
restore [flags] <container id> - restore saved state of container.
  -background
    \tallow image loading to continue after restore exits (requires uncompressed checkpoint)
  -bundle string
    \tpath to the root of the bundle directory, defaults to the current directory
  -detach
    \tdetach from the container's process
  -direct
    \tuse O_DIRECT for reading checkpoint pages file
  -image-path string
    \tdirectory path to saved container image
  -no-subreaper
    \tignored
"""
CK = RunscHelp.parse(CHECKPOINT_HELP)
RS = RunscHelp.parse(RESTORE_HELP)
NOTHING = VerbArgs((), ("c1",))
UNCOMPRESSED = ImageFacts(pages_file=True, direct_ok=True)


def test_help_of_the_pinned_runsc() -> None:
    assert {"compression", "direct", "exclude-committed-zero-pages", "leave-running", "h"} <= CK.flags
    assert CK.defaults["compression"] == "none"  # not flate: older runsc releases compressed by default
    assert CK.defaults["save-restore-exec-timeout"] == "10m0s"
    assert CK.compressions == ("none", "flate-best-speed")
    assert {"background", "direct", "detach"} <= RS.flags
    assert "saving" not in CK.flags  # a wrapped description line is not a flag


def test_help_of_an_older_runsc_that_compressed_by_default() -> None:
    text = CHECKPOINT_HELP.replace("(default none)", "(default flate-best-speed)")
    assert RunscHelp.parse(text).defaults["compression"] == "flate-best-speed"


def settings(verb: str, cfg: Config, annotations: dict[str, str], gpu: bool, caller: VerbArgs | None = None):  # type: ignore[no-untyped-def]
    return tuning.wanted(verb, cfg, tuning.read_annotations(annotations), caller, gpu)


def test_config_applies_to_gpu_containers_by_default_and_to_others_only_when_asked() -> None:
    cfg = Config()
    assert settings("checkpoint", cfg, {}, gpu=True)["compression"] == Setting("none", "config checkpoint_compression")
    assert settings("checkpoint", cfg, {}, gpu=False)["compression"] == tuning.UNSET
    assert not tuning.applies(cfg, {}, gpu=False)
    everyone = Config(tuning="all")
    assert settings("restore", everyone, {}, gpu=False)["background"].value is True
    assert tuning.applies(everyone, {}, gpu=False)
    off = Config(tuning="off")
    annotated = tuning.read_annotations({"dev.runsc-cuda.restore.background": "true"})
    assert not tuning.applies(off, annotated, gpu=True)


def test_caller_beats_annotation_beats_config() -> None:
    cfg = Config(tuning="all")
    notes = {"dev.runsc-cuda.checkpoint.compression": "flate-best-speed", "dev.runsc-cuda.checkpoint.direct": "yes"}
    want = settings("checkpoint", cfg, notes, gpu=False)
    assert want["compression"] == Setting("flate-best-speed", 'annotation "dev.runsc-cuda.checkpoint.compression"')
    assert want["direct"].value is True
    assert want["exclude-committed-zero-pages"].source == "config checkpoint_exclude_committed_zero_pages"
    caller = VerbArgs((Flag.make("compression", "none"),), ("c1",))
    assert settings("checkpoint", cfg, notes, gpu=False, caller=caller)["compression"] == Setting(
        "none", "the caller's --compression"
    )


def test_an_annotated_plain_container_gets_only_its_annotations() -> None:
    want = settings("restore", Config(), {"dev.runsc-cuda.restore.direct": "true"}, gpu=False)
    assert want["direct"].value is True
    assert want["background"] == tuning.UNSET


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("dev.runsc-cuda.checkpoint.compresion", "none", "unknown; runsc-cuda knows"),
        ("dev.runsc-cuda.restore.background", "maybe", 'expected "true" or "false"'),
        ("dev.runsc-cuda.checkpoint.direct", "", 'expected "true" or "false"'),
    ],
)
def test_bad_annotations_are_refused(name: str, value: str, needle: str) -> None:
    with pytest.raises(ShimError, match=needle) as e:
        tuning.read_annotations({name: value})
    assert name in str(e.value)


def test_other_annotations_are_not_ours() -> None:
    assert tuning.read_annotations({"dev.runsc-cuda.gpu": "true", "dev.gvisor.internal.nvproxy": "true"}) == {}


def ckpt(
    cfg: Config,
    annotations: dict[str, str] | None = None,
    gpu: bool = True,
    ck: RunscHelp = CK,
    rs: RunscHelp = RS,
    direct_ok: bool = True,
    caller: VerbArgs = NOTHING,
) -> tuning.Plan:
    annotated = tuning.read_annotations(annotations or {})
    want = tuning.wanted("checkpoint", cfg, annotated, caller, gpu)
    background = tuning.wanted("restore", cfg, annotated, None, gpu)["background"]
    return tuning.checkpoint_plan("c1", want, background, ck, rs, caller, direct_ok)


def added(plan: tuning.Plan) -> list[str]:
    return [f.tokens[0] for f in plan.add]


def test_default_checkpoint_flags() -> None:
    plan = ckpt(Config())
    assert added(plan) == ["--compression=none", "--exclude-committed-zero-pages"]
    assert plan.used == {"compression": "none", "exclude-committed-zero-pages": True, "direct": False}
    assert plan.apply(NOTHING).tokens() == ["--compression=none", "--exclude-committed-zero-pages", "c1"]


def test_direct_checkpoint_only_where_the_filesystem_has_o_direct() -> None:
    assert "--direct" in added(ckpt(Config(checkpoint_direct=True)))
    plan = ckpt(Config(checkpoint_direct=True), direct_ok=False)
    assert "--direct" not in added(plan)
    assert any("does not support O_DIRECT" in n for n in plan.notes)


def test_an_unknown_compression_is_refused_before_anything_is_frozen() -> None:
    with pytest.raises(ShimError) as e:
        ckpt(Config(), {"dev.runsc-cuda.checkpoint.compression": "zstd"})
    assert "compression 'zstd'" in str(e.value) and "none, flate-best-speed" in str(e.value)
    assert e.value.refused  # framed by the checkpoint verb as "cannot checkpoint c1: ...; nothing was frozen"
    assert e.value.framed_as("checkpoint", "c1", "nothing was frozen").message.endswith("; nothing was frozen")


def test_background_restore_of_a_compressed_image_is_refused_at_checkpoint() -> None:
    with pytest.raises(ShimError) as e:
        ckpt(Config(), {"dev.runsc-cuda.checkpoint.compression": "flate-best-speed"})
    message = str(e.value)
    assert "background restore (config restore_background) needs an uncompressed image" in message
    assert 'dev.runsc-cuda.restore.background="false"' in message
    plan = ckpt(
        Config(),
        {"dev.runsc-cuda.checkpoint.compression": "flate-best-speed", "dev.runsc-cuda.restore.background": "false"},
    )
    assert added(plan) == ["--compression=flate-best-speed", "--exclude-committed-zero-pages"]


def test_runscs_own_compressed_default_counts_too() -> None:
    older = RunscHelp.parse(CHECKPOINT_HELP.replace("(default none)", "(default flate-best-speed)"))
    with pytest.raises(ShimError, match="compression is flate-best-speed \\(runsc's default\\)"):
        ckpt(Config(checkpoint_compression=None), ck=older)
    assert "--compression=none" in added(ckpt(Config(), ck=older))


def test_a_runsc_without_background_restore_may_compress() -> None:
    no_bg = RunscHelp(RS.flags - {"background"})
    plan = ckpt(Config(checkpoint_compression="flate-best-speed"), rs=no_bg)
    assert "--compression=flate-best-speed" in added(plan)
    assert plan.used["direct"] is False


def test_only_flags_runsc_knows_are_passed() -> None:
    bare = RunscHelp(frozenset({"image-path", "leave-running"}))
    plan = ckpt(Config(checkpoint_direct=True), ck=bare, rs=RunscHelp())
    assert plan.add == ()
    assert plan.used == {"compression": None, "exclude-committed-zero-pages": False, "direct": False}
    assert len(plan.notes) == 3


def test_the_callers_own_flags_are_kept_not_doubled() -> None:
    caller = VerbArgs((Flag.make("compression", "none"), Flag.make("direct")), ("c1",))
    plan = ckpt(Config(), caller=caller, direct_ok=False)
    assert added(plan) == ["--exclude-committed-zero-pages"]
    assert plan.used["direct"] is True
    assert plan.sources["compression"] == "the caller's --compression"


def rest(
    cfg: Config,
    image: ImageFacts = UNCOMPRESSED,
    annotations: dict[str, str] | None = None,
    gpu: bool = True,
    can_watch: bool = True,
    rs: RunscHelp = RS,
    caller: VerbArgs = NOTHING,
) -> tuning.Plan:
    want = tuning.wanted("restore", cfg, tuning.read_annotations(annotations or {}), caller, gpu)
    return tuning.restore_plan("c1", want, rs, can_watch, caller, image)


def test_default_restore_flags_for_an_uncompressed_image() -> None:
    plan = rest(Config())
    assert added(plan) == ["--background", "--direct"]
    assert plan.background


def test_a_compressed_image_restores_in_the_foreground() -> None:
    plan = rest(Config(), ImageFacts(pages_file=False, direct_ok=False))
    assert plan.add == () and not plan.background
    assert any("the image is compressed" in n for n in plan.notes)


def test_no_background_without_a_way_to_report_its_failure() -> None:
    plan = rest(Config(), can_watch=False)
    assert added(plan) == ["--direct"]
    assert any("wait --restore" in n for n in plan.notes)


def test_no_direct_read_where_o_direct_fails() -> None:
    assert added(rest(Config(), ImageFacts(pages_file=True, direct_ok=False))) == ["--background"]


def test_restore_settings_can_be_turned_off_per_container() -> None:
    plan = rest(Config(), annotations={"dev.runsc-cuda.restore.background": "false"})
    assert added(plan) == ["--direct"] and not plan.background


def test_a_callers_background_is_watched_not_added_again() -> None:
    caller = VerbArgs((Flag.make("background"),), ("c1",))
    plan = rest(Config(restore_direct=False), caller=caller)
    assert plan.add == () and plan.background


def test_sidecar_record_says_what_was_used_and_why() -> None:
    record = ckpt(Config()).record()
    assert record["used"]["compression"] == "none"
    assert record["sources"]["exclude-committed-zero-pages"] == "config checkpoint_exclude_committed_zero_pages"
    assert record["added"] == ["--compression=none", "--exclude-committed-zero-pages"]
