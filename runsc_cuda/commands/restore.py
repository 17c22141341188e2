"""restore: patch the bundle as create does, check the image fits this host, thaw after runsc.

Docker's ``docker start --checkpoint`` calls restore without create, so the
bundle is patched here too: runsc compares the mounts with the checkpointed spec.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack

from runsc_cuda.commands.create import Prepared, container_id, prepare, translated_args
from runsc_cuda.cuda import host, protocol
from runsc_cuda.cuda.freezer import Freezer, StepError, Timeouts
from runsc_cuda.errors import ShimError
from runsc_cuda.image import background, sidecar, tuning
from runsc_cuda.lock import container_lock
from runsc_cuda.oci import spec
from runsc_cuda.oci.sandbox import Sandbox
from runsc_cuda.session import Session
from runsc_cuda.signals import forwarded_to


def handle(session: Session) -> int:
    args = translated_args(session, "restore")
    image = args.value("image-path")
    record = sidecar.read(image) if image else None
    if record is not None and record.engine != "none":
        here = host.read_gpu_info(session.config.proc_driver_nvidia)
        problem = sidecar.mismatch(record.gpu_info, here)
        if problem is not None:
            raise ShimError(f"cannot restore {container_id(args)} from {image}: {problem}")
    # Read before the bundle is patched: a refused setting changes nothing.
    bundle = spec.read(spec.bundle_dir(args.value("bundle"), session.cwd))
    gpu = spec.gpu_request(bundle.doc).wanted
    tune = tuning.for_restore(session, container_id(args) or "", image, args, bundle.doc, gpu)
    prepared = tuned(prepare(session, "restore", args), tune)  # only now: a refused restore changes nothing
    needs_thaw = (
        record is not None
        and record.engine == "exec"
        and any(p.state_saved != protocol.RUNNING for p in record.cuda_processes)
        and prepared.container_id is not None
    )
    watch = tune is not None and tune.background
    if not needs_thaw or record is None:
        # No image sidecar: restore as plain runsc would. Native engine: runsc thaws by itself.
        if watch and prepared.container_id:
            argv = [session.runsc, *prepared.cmd.tokens()[1:]]
            detach = prepared.args.is_set("detach")
            return background.restore_and_watch(session, argv, prepared.container_id, image, detach)
        session.become_runsc(prepared.cmd.tokens()[1:])
        return 0
    cfg = session.config
    cid = prepared.container_id or ""
    root = session.cmd.global_value("root") or "/var/run/runsc"
    with ExitStack() as held:
        held.enter_context(container_lock(cfg.state_dir, root, cid, cfg.lock_wait_s))
        # A foreground restore lasts as long as its container: the lock goes once the thaw is done.
        return ExecRestore(session, prepared, record, watch, release=held.close).run()


def tuned(prepared: Prepared, tune: tuning.Plan | None) -> Prepared:
    """The restore call with the image flags that fit this image and the container's settings."""
    if tune is None or not tune.add:
        return prepared
    args = tune.apply(prepared.args)
    return dataclasses.replace(prepared, args=args, cmd=prepared.cmd.with_rest(args.tokens()))


class ExecRestore:
    """Restore an image the exec engine made: runsc restores, runsc-cuda thaws."""

    def __init__(
        self,
        session: Session,
        prepared: Prepared,
        record: sidecar.Sidecar,
        watch: bool = False,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.session = session
        self.watch = watch  # a background page load to watch once the container runs
        self.release = release
        self.prepared = prepared
        self.record = record
        self.cid = prepared.container_id or ""
        self.sandbox = Sandbox(session, self.cid)
        cfg = session.config
        self.freezer = Freezer(
            self.sandbox,
            Timeouts(cfg.lock_timeout_ms, cfg.cuda_call_timeout_s),
            session.clock,
            max_parallel=cfg.max_parallel_cuda_calls,
        )
        self.states = {p.pid: p.state_saved for p in record.cuda_processes}

    def run(self) -> int:
        argv = [self.session.runsc, *self.prepared.cmd.tokens()[1:]]
        if self.prepared.args.is_set("detach"):
            return self._detached(argv)
        return self._foreground(argv)

    def _run_runsc(self, argv: list[str]) -> int:
        """runsc restore --detach; its output goes straight to our caller."""
        limit = self.session.config.checkpoint_timeout_s
        try:
            return subprocess.run(argv, env=self.session.runner.environ, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            raise ShimError(f"restore of {self.cid}: runsc restore did not finish in {limit:g}s") from None

    def _detached(self, argv: list[str]) -> int:
        why = self.session.interrupted()
        if why is not None:
            raise ShimError(f"restore of {self.cid}: {why} before runsc started")
        code = self.freezer.timed("restore-sandbox", [], lambda: self._run_runsc(argv))
        if code < 0:  # killed: runsc wrote no error of its own
            raise ShimError(f"restore of {self.cid} failed: runsc restore was killed by signal {-code}", 128 - code)
        if code != 0:
            return code  # runsc's own error is in the log already
        try:
            self._thaw()  # even after a stop request: never leave a restored CUDA process frozen
        finally:
            self._start_watch()  # a thaw that failed because the background load did: the watcher says so
        why = self.session.interrupted()
        if why is not None:
            raise ShimError(f"restore of {self.cid}: {why}; the container was restored and its CUDA processes thawed")
        return 0

    def _foreground(self, argv: list[str]) -> int:
        child = subprocess.Popen(argv, env=self.session.runner.environ)
        with forwarded_to(child):
            if self._wait_running(child):
                try:
                    try:
                        self._thaw()
                    finally:
                        self._start_watch()
                except ShimError as e:
                    self.session.report.error(e.message)
                    child.send_signal(15)
            self.release()
            code = child.wait()
        return code if code >= 0 else 128 - code

    def _start_watch(self) -> None:
        if self.watch:
            background.start(self.session, self.cid, self.prepared.args.value("image-path"))

    def _wait_running(self, child: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.session.config.checkpoint_timeout_s
        while time.monotonic() < deadline:
            if child.poll() is not None:
                return False
            state = self.sandbox.try_state()
            if state is not None and state.status == "running":
                return True
            time.sleep(0.05)
        return False

    def _thaw(self) -> None:
        pids = sorted(self.states)
        try:
            self.freezer.thaw(self.states)
        except StepError as first:
            # One more try from whatever state each process is in now, once the calls that
            # outlived their timeout are done (a late one may still change a state).
            runner = self.session.runner
            if runner.abandoned_total:
                runner.reap(self.freezer.timeouts.lock_call_s)
            left = self.freezer.rollback(pids)
            if left:
                detail = "; ".join(f"PID {p}: {w}" for p, w in sorted(left.items()))
                raise ShimError(
                    f"restore of {self.cid}: CUDA processes could not be thawed: {first}; {detail}"
                ) from None
            self.session.report.warning(f"restore of {self.cid}: {first}; thawed on the second try")
        timings = self.freezer.timings()
        self.session.report.info(
            f"restore of {self.cid}: {len(pids)} CUDA processes thawed in "
            f"{timings.get('restore', 0) + timings.get('unlock', 0) + timings.get('toggle', 0):.3f}s",
            container=self.cid,
            pids=pids,
            timings=timings,
        )
