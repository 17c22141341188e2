"""A GPU bundle is written atomically: a kill at any moment leaves the old file or the new one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from runsc_cuda.oci import spec

from support import Shim, fixture_spec


def big_gpu_spec() -> dict:
    doc = fixture_spec("gpu-devices")
    # A large config.json widens the window in which a kill lands mid-write.
    doc["annotations"] = {f"pad.example/{i}": "x" * 4000 for i in range(4000)}
    return doc


def test_sigkill_during_patch_leaves_old_or_new_never_half(shim: Shim) -> None:
    doc = big_gpu_spec()
    old = json.dumps(doc, separators=(",", ":")).encode()
    new = spec.dumps(spec.patch(doc, shim.fakes["cuda-checkpoint"]).doc or {})
    # How long a whole create takes on this machine now (it varies with load): kills spread over it.
    bundle = shim.bundle("calibrate", raw=old)
    start = time.monotonic()
    shim.run("create", "--bundle", str(bundle), "calibrate")
    whole = time.monotonic() - start
    rng = random.Random(1234)
    outcomes = {"old": 0, "new": 0}
    attempt = 0
    while attempt < 25 or (not (outcomes["old"] and outcomes["new"]) and attempt < 60):
        bundle = shim.bundle(f"big{attempt}", raw=old)
        proc = subprocess.Popen(
            [*shim.command, "--root", str(shim.root), "create", "--bundle", str(bundle), f"c{attempt}"],
            env=shim.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.1, 1.1) * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = (bundle / "config.json").read_bytes()
        assert now in (old, new), f"attempt {attempt}: config.json is neither the old nor the new file"
        outcomes["old" if now == old else "new"] += 1
        leftovers = [p for p in os.listdir(bundle) if p != "config.json"]
        assert all(p.startswith(".config.json.") for p in leftovers), leftovers
        attempt += 1
    print(f"SIGKILL during patch: {outcomes} in {attempt} tries")
    assert outcomes["old"] and outcomes["new"], f"kills did not land on both sides of the rename: {outcomes}"
