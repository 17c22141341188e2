"""Checkpoint and restore tuning: which of runsc's image flags runsc-cuda adds.

runsc can write and read its images in several ways (``checkpoint
--compression/--direct/--exclude-committed-zero-pages``, ``restore
--background/--direct``), but ``docker checkpoint create``, containerd and the
kubelet never pass any of them.  runsc-cuda adds them from its config
(``tuning``, ``checkpoint_*``, ``restore_*``) and from the container's own
annotations (``dev.runsc-cuda.checkpoint.<flag>``, ``dev.runsc-cuda.restore.<flag>``).

The decisions are pure functions of: the config, the annotations, the caller's
own flags, what the installed runsc knows (its ``help`` text), and the image
(its files); the few calls that gather those are at the bottom.  A flag is only
passed when the installed runsc lists it.  Impossible combinations are refused
before anything is frozen.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runsc_cuda import words
from runsc_cuda.config import Config
from runsc_cuda.errors import refusal
from runsc_cuda.oci import help
from runsc_cuda.oci.argv import Flag, VerbArgs
from runsc_cuda.oci.help import RunscHelp

if TYPE_CHECKING:
    from runsc_cuda.session import Session

ANNOTATION_PREFIX = "dev.runsc-cuda."
# runsc's names when its help lists none (release-20260817: "Values: none|flate-best-speed.").
FALLBACK_COMPRESSIONS = ("none", "flate-best-speed")
# The files of an image whose memory is kept apart from the kernel state (an uncompressed image).
STATE_FILE = "checkpoint.img"
PAGES_META_FILE = "pages_meta.img"
PAGES_FILE = "pages.img"


@dataclass(frozen=True)
class Knob:
    """One runsc flag runsc-cuda may add: its verb, its config key, its annotation."""

    verb: str
    flag: str
    key: str
    kind: str  # "bool" or "compression"

    @property
    def annotation(self) -> str:
        return f"{ANNOTATION_PREFIX}{self.verb}.{self.flag}"


KNOBS = (
    Knob("checkpoint", "compression", "checkpoint_compression", "compression"),
    Knob("checkpoint", "exclude-committed-zero-pages", "checkpoint_exclude_committed_zero_pages", "bool"),
    Knob("checkpoint", "direct", "checkpoint_direct", "bool"),
    Knob("restore", "background", "restore_background", "bool"),
    Knob("restore", "direct", "restore_direct", "bool"),
)
ANNOTATIONS: dict[str, Knob] = {k.annotation: k for k in KNOBS}


def knobs(verb: str) -> tuple[Knob, ...]:
    return tuple(k for k in KNOBS if k.verb == verb)


@dataclass(frozen=True)
class Setting:
    """A wanted value and where it came from (for messages and the sidecar)."""

    value: str | bool | None  # None: not set, runsc's own default
    source: str


UNSET = Setting(None, "unset")


# --- what is wanted ------------------------------------------------------------------


def in_scope(cfg: Config, gpu: bool) -> bool:
    """Whether the config's checkpoint_*/restore_* values apply to this container."""
    return cfg.tuning == "all" or (cfg.tuning == "gpu" and gpu)


def _bool_word(value: str, where: str) -> bool:
    found = words.parse_bool(value)
    if found is None:
        raise refusal(f'{where}: expected "true" or "false", got {value[:40]!r}')
    return found


def read_annotations(annotations: Mapping[str, str]) -> dict[Knob, Setting]:
    """The container's tuning annotations; a misspelt name or a bad value is an error."""
    out: dict[Knob, Setting] = {}
    for name, value in annotations.items():
        if not name.startswith((ANNOTATION_PREFIX + "checkpoint.", ANNOTATION_PREFIX + "restore.")):
            continue
        knob = ANNOTATIONS.get(name)
        where = f'annotation "{name}"'
        if knob is None:
            known = ", ".join(sorted(ANNOTATIONS))
            raise refusal(f"{where}: unknown; runsc-cuda knows {known}")
        if not isinstance(value, str):
            raise refusal(f"{where}: expected a string")
        if knob.kind == "bool":
            out[knob] = Setting(_bool_word(value, where), where)
        else:
            word = value.strip()
            out[knob] = Setting(word or None, where)
    return out


def wanted(
    verb: str, cfg: Config, annotated: Mapping[Knob, Setting], caller: VerbArgs | None, gpu: bool
) -> dict[str, Setting]:
    """Per flag of ``verb``: the caller's own flag, else the annotation, else the config (in scope)."""
    out: dict[str, Setting] = {}
    for knob in knobs(verb):
        given = caller.get(knob.flag) if caller is not None else None
        if given is not None:
            value: str | bool | None = given.as_bool() if knob.kind == "bool" else given.value
            out[knob.flag] = Setting(value, f"the caller's --{knob.flag}")
        elif knob in annotated:
            out[knob.flag] = annotated[knob]
        elif in_scope(cfg, gpu):
            out[knob.flag] = Setting(cfg.get(knob.key), f"config {knob.key}")
        else:
            out[knob.flag] = UNSET
    return out


def applies(cfg: Config, annotated: Mapping[Knob, Setting], gpu: bool) -> bool:
    """Whether runsc-cuda tunes this container's checkpoint/restore at all (else: untouched)."""
    return cfg.tuning != "off" and (in_scope(cfg, gpu) or bool(annotated))


# --- the plans -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What runsc-cuda adds to one runsc call, and what the call will use."""

    verb: str
    add: tuple[Flag, ...] = ()
    used: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    background: bool = False  # restore: a background page load that runsc-cuda watches

    def apply(self, args: VerbArgs) -> VerbArgs:
        for flag in self.add:
            args = args.with_flag(flag)
        return args

    def describe(self) -> str:
        shown = [f"--{f.name}" + (f"={f.value}" if f.value is not None else "") for f in self.add]
        return " ".join(shown) if shown else "no flags"

    def record(self) -> dict[str, Any]:
        """The sidecar's account of the options (``tuning.<verb>``)."""
        return {"used": dict(self.used), "sources": dict(self.sources), "added": [f.tokens[0] for f in self.add]}


def checkpoint_plan(
    cid: str,
    want: Mapping[str, Setting],
    background: Setting,
    ckpt_help: RunscHelp,
    restore_help: RunscHelp,
    caller: VerbArgs,
    direct_ok: bool,
) -> Plan:
    """The checkpoint flags to add; ShimError (before anything is frozen) for what cannot work."""
    add: list[Flag] = []
    used: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []

    comp = want.get("compression", UNSET)
    compression: str | None  # the image's compression; None: not known
    if not ckpt_help.knows("compression"):
        compression = None
        if comp.value is not None:
            notes.append(f"--compression={comp.value} ({comp.source}) not passed: this runsc's checkpoint has none")
    elif comp.value is None:
        compression = ckpt_help.defaults.get("compression")
        sources["compression"] = "runsc's default"
    else:
        names = ckpt_help.compressions or FALLBACK_COMPRESSIONS
        if comp.value not in names:
            raise refusal(
                f"compression {comp.value!r} ({comp.source}) is not one this runsc knows ({', '.join(names)})"
            )
        compression = str(comp.value)
        sources["compression"] = comp.source
        if caller.get("compression") is None:
            add.append(Flag.make("compression", compression))
    used["compression"] = compression

    zero = want.get("exclude-committed-zero-pages", UNSET)
    exclude = False
    if zero.value:
        if not ckpt_help.knows("exclude-committed-zero-pages"):
            notes.append(f"--exclude-committed-zero-pages ({zero.source}) not passed: this runsc has no such flag")
        else:
            exclude = True
            sources["exclude-committed-zero-pages"] = zero.source
            if caller.get("exclude-committed-zero-pages") is None:
                add.append(Flag.make("exclude-committed-zero-pages"))
    used["exclude-committed-zero-pages"] = exclude

    direct_wanted = want.get("direct", UNSET)
    direct = False
    if direct_wanted.value:
        if caller.get("direct") is not None:
            direct = True  # the caller's own flag is never taken away
        elif not ckpt_help.knows("direct"):
            notes.append(f"--direct ({direct_wanted.source}) not passed: this runsc's checkpoint has no --direct")
        elif compression not in (None, "none"):
            notes.append(f"--direct ({direct_wanted.source}) not passed: a compressed image has no pages file")
        elif not direct_ok:
            notes.append(
                f"--direct ({direct_wanted.source}) not passed: the image folder's filesystem does not support O_DIRECT"
            )
        else:
            direct = True
            add.append(Flag.make("direct"))
        if direct:
            sources["direct"] = direct_wanted.source
    used["direct"] = direct

    if background.value and restore_help.knows("background") and compression not in (None, "none"):
        why = sources.get("compression", comp.source)
        raise refusal(
            f"background restore ({background.source}) needs an uncompressed image, but "
            f"compression is {compression} ({why}); use compression none, or turn background restore "
            f'off for this container (annotation {ANNOTATION_PREFIX}restore.background="false") or for all '
            "(restore_background = false in the config)"
        )
    return Plan("checkpoint", tuple(add), used, sources, tuple(notes))


@dataclass(frozen=True)
class ImageFacts:
    """What a checkpoint image folder holds."""

    pages_file: bool  # pages_meta.img and pages.img: memory kept apart, uncompressed
    direct_ok: bool  # pages.img opens with O_DIRECT


def restore_plan(
    cid: str,
    want: Mapping[str, Setting],
    restore_help: RunscHelp,
    can_watch: bool,
    caller: VerbArgs,
    image: ImageFacts,
) -> Plan:
    """The restore flags that fit this image (never --background for a compressed one)."""
    add: list[Flag] = []
    used: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []

    bg = want.get("background", UNSET)
    background = False
    if caller.get("background") is not None:
        background = bool(bg.value) and image.pages_file
    elif bg.value:
        if not restore_help.knows("background"):
            notes.append(f"--background ({bg.source}) not passed: this runsc's restore has no --background")
        elif not image.pages_file:
            notes.append(
                f"--background ({bg.source}) not passed: the image is compressed (no {PAGES_FILE}); "
                "restoring in the foreground"
            )
        elif not can_watch:
            notes.append(
                f"--background ({bg.source}) not passed: this runsc has no `wait --restore`, so a failed "
                "background load could not be reported; restoring in the foreground"
            )
        else:
            background = True
            add.append(Flag.make("background"))
    if background:
        sources["background"] = bg.source
    used["background"] = background

    d = want.get("direct", UNSET)
    direct = False
    if caller.get("direct") is not None:
        direct = bool(d.value)
    elif d.value:
        if not restore_help.knows("direct"):
            notes.append(f"--direct ({d.source}) not passed: this runsc's restore has no --direct")
        elif not image.pages_file:
            notes.append(f"--direct ({d.source}) not passed: the image is compressed (no {PAGES_FILE})")
        elif not image.direct_ok:
            notes.append(f"--direct ({d.source}) not passed: {PAGES_FILE} cannot be opened with O_DIRECT here")
        else:
            direct = True
            add.append(Flag.make("direct"))
    if direct:
        sources["direct"] = d.source
    used["direct"] = direct
    return Plan("restore", tuple(add), used, sources, tuple(notes), background=background and can_watch)


def sidecar_record(plan: Plan | None, image: str) -> dict[str, Any]:
    """``tuning`` in the image's sidecar: the options the checkpoint used, and the image's shape."""
    if plan is None:
        return {}
    return {"checkpoint": plan.record(), "image": {"pages_file": image_facts(image).pages_file}}


# --- gathering the facts (I/O) -------------------------------------------------------


def nearest_folder(path: str) -> str:
    """``path``, or its nearest ancestor that exists (runsc creates the image folder itself)."""
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def o_direct_creatable(folder: str) -> bool:
    """Whether a file created in ``folder`` can be written with O_DIRECT (EINVAL: no)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_DIRECT", 0) | os.O_CLOEXEC
    path = os.path.join(folder, f".runsc-cuda-direct-probe.{os.getpid()}")
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        return e.errno != errno.EINVAL  # any other trouble is runsc's to report
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return True


def image_facts(image: str) -> ImageFacts:
    pages = os.path.join(image, PAGES_FILE)
    if not (os.path.isfile(os.path.join(image, PAGES_META_FILE)) and os.path.isfile(pages)):
        return ImageFacts(pages_file=False, direct_ok=False)
    try:
        fd = os.open(pages, os.O_RDONLY | getattr(os, "O_DIRECT", 0) | os.O_CLOEXEC)
    except OSError as e:
        return ImageFacts(pages_file=True, direct_ok=e.errno != errno.EINVAL)
    os.close(fd)
    return ImageFacts(pages_file=True, direct_ok=True)


def annotations_of(doc: Mapping[str, Any]) -> dict[str, str]:
    found = doc.get("annotations") or {}
    return {str(k): v for k, v in found.items()} if isinstance(found, dict) else {}


# --- for the verb handlers -----------------------------------------------------------


def _announce(session: Session, cid: str, plan: Plan) -> None:
    session.report.info(
        f"{plan.verb} of {cid}: runsc-cuda adds {plan.describe()}",
        container=cid,
        tuning=plan.record(),
    )
    for note in plan.notes:
        session.report.info(f"{plan.verb} of {cid}: {note}", container=cid)


def _annotated(cfg: Config, doc: Mapping[str, Any]) -> dict[Knob, Setting]:
    return {} if cfg.tuning == "off" else read_annotations(annotations_of(doc))


def for_checkpoint(
    session: Session, cid: str, image: str, args: VerbArgs, doc: Mapping[str, Any], gpu: bool
) -> Plan | None:
    """The checkpoint's tuning (None: runsc-cuda adds nothing and may pass the call through)."""
    cfg = session.config
    annotated = _annotated(cfg, doc)
    if not applies(cfg, annotated, gpu):
        return None
    want = wanted("checkpoint", cfg, annotated, args, gpu)
    background = wanted("restore", cfg, annotated, None, gpu)["background"]
    direct_ok = True
    if want["direct"].value and args.get("direct") is None:
        direct_ok = o_direct_creatable(nearest_folder(image))
    plan = checkpoint_plan(
        cid, want, background, help.read(session, "checkpoint"), help.read(session, "restore"), args, direct_ok
    )
    _announce(session, cid, plan)
    return plan


def for_restore(
    session: Session, cid: str, image: str | None, args: VerbArgs, doc: Mapping[str, Any], gpu: bool
) -> Plan | None:
    """The restore's tuning, fitted to the image (None: runsc-cuda adds nothing)."""
    cfg = session.config
    annotated = _annotated(cfg, doc)
    if not applies(cfg, annotated, gpu):
        return None
    want = wanted("restore", cfg, annotated, args, gpu)
    facts = image_facts(image) if image else ImageFacts(pages_file=False, direct_ok=False)
    can_watch = bool(want["background"].value) and help.read(session, "wait").knows("restore")
    plan = restore_plan(cid, want, help.read(session, "restore"), can_watch, args, facts)
    _announce(session, cid, plan)
    return plan
