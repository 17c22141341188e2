"""Watching a background restore: its failure must reach the runtime log.

``runsc restore --background`` returns as soon as the sandbox's kernel state
is loaded; the container runs while its memory streams in from pages.img.  If
that load fails later (an I/O error, a truncated or vanished image), the
sandbox logs a warning to its own debug log (when there is one), kills every
process with SIGKILL, and nothing else is said: the runtime call has long
returned, containerd sees a container that died of SIGKILL.

``runsc wait --restore ID`` is runsc's way to ask: it blocks until the load
is done and exits non-zero with the error (or, when the sandbox is already
gone, with the failure to reach it).  runsc-cuda runs ``runsc restore`` as a
child (so that only a restore that succeeded is watched), and then starts a
small detached watcher that runs ``wait --restore`` and, on failure, appends an
error line to the ``--log`` file (log.json: what containerd and Docker show)
and to runsc-cuda's detailed log.  Success is logged too, with how long the
memory took to load after the container was running.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from runsc_cuda import detach, words
from runsc_cuda.oci.sandbox import UP, Sandbox
from runsc_cuda.session import Session
from runsc_cuda.signals import forwarded_to


def failure_message(cid: str, image: str | None, reason: str) -> str:
    """The runtime-log line for a background load that did not finish."""
    source = f" from {image}" if image else ""
    if words.says_gone(reason, words.RUNSC_SANDBOX_GONE):
        return (
            f"background restore of {cid} failed: the sandbox stopped before all of its memory was loaded{source} "
            f"(runsc wait --restore: {reason}); runsc kills a sandbox whose background page load fails and says why "
            "only in its --debug-log. Restore without background (annotation "
            'dev.runsc-cuda.restore.background="false") to see runsc\'s own error'
        )
    return (
        f"background restore of {cid} failed: {reason}; runsc killed the sandbox because its memory could not "
        f"all be loaded{source}"
    )


def watch(session: Session, cid: str, image: str | None, clock: Callable[[], float] = time.monotonic) -> int:
    """``runsc wait --restore`` after a background restore returned; a failure goes to the runtime log."""
    report = session.report
    start = clock()
    limit = session.config.checkpoint_timeout_s
    result = session.runner.run(session.runsc_argv(["wait", "--restore", cid]), limit)
    seconds = clock() - start
    if result.ok:
        report.info(
            f"background restore of {cid}: all memory loaded {seconds:.2f}s after the container started",
            container=cid,
            seconds=round(seconds, 6),
        )
        return 0
    if result.timed_out:
        reason = f"still loading after {seconds:.0f}s (checkpoint_timeout_s)"
    else:
        reason = result.error_text() or result.describe()
    report.error(failure_message(cid, image, reason), container=cid, seconds=round(seconds, 6))
    return 1


def start(session: Session, cid: str, image: str | None) -> None:
    """Start a detached watcher for a container whose background restore has returned; return at once."""

    def life() -> int:
        detach.fresh_session(session)
        return watch(session, cid, image)

    try:
        detach.spawn(life)
    except OSError as e:
        session.report.warning(f"restore of {cid}: cannot start the background-load watcher: {e.strerror}")


def restore_and_watch(session: Session, argv: list[str], cid: str, image: str | None, detach: bool) -> int:
    """Run ``runsc restore --background`` as a child (not exec: its exit status decides), then watch its load.

    The exit status, output and pid file are runsc's own; signals are forwarded to it.
    """
    if not detach:
        before = Sandbox(session, cid).try_state()
        if before is not None and before.status in UP:
            session.become_runsc(argv[1:])  # runsc refuses it and says why
    child = subprocess.Popen(argv, env=session.runner.environ)
    with forwarded_to(child):
        if detach:
            code = child.wait()
            if code == 0:
                start(session, cid, image)
        else:
            if Sandbox(session, cid).wait_up(child):
                start(session, cid, image)
            code = child.wait()
    return code if code >= 0 else 128 - code
