"""A recording OCI runtime: appends each call to a JSON-lines file, then runs the real runsc.

Usage (from a wrapper script): recorder.py CALLS_FILE TAG PROGRAM ARGS...

PROGRAM is the real runsc (or runsc-cuda, to see what it is called with); TAG
names the hop in the records.

Each line: argv (as the caller gave it), cwd, exit status, start time and
duration, the bytes this call added to the ``--log`` file, and what is in the
--image-path / --work-path folders afterwards.  Signals are passed on to runsc.
With RECORDER_SIDECAR set, a successful checkpoint also gets a file
recorder-sidecar.json in its --image-path (to see whether it comes back on restore).
"""

import json
import os
import signal
import subprocess
import sys
import time

PATH_FLAGS = ("image-path", "work-path", "bundle")


def flag_values(args):
    """Values of --name=value / --name value flags, by name (last one wins)."""
    out = {}
    for i, token in enumerate(args):
        if not token.startswith("-") or token == "-":
            continue
        name, eq, value = token.lstrip("-").partition("=")
        if eq:
            out[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            out.setdefault(name, args[i + 1])
    return out


def listing(folder):
    found = []
    for base, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            try:
                size = os.lstat(path).st_size
            except OSError:
                size = -1
            found.append(f"{os.path.relpath(path, folder)} ({size} B)")
    return sorted(found)[:50]


def log_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def main():
    calls, tag, runsc, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    values = flag_values(args)
    log = values.get("log")
    before = log_size(log) if log else None
    start = time.time()
    proc = subprocess.Popen([runsc, *args])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    rc = proc.wait()
    record = {
        "tag": tag,
        "argv": args,
        "cwd": os.getcwd(),
        "rc": rc,
        "start": round(start, 3),
        "seconds": round(time.time() - start, 3),
    }
    if log:
        try:
            with open(log, "rb") as f:
                f.seek(before or 0)
                record["log_added"] = f.read(4000).decode(errors="replace")
        except OSError as e:
            record["log_added"] = f"({e.strerror})"
    image_path = values.get("image-path")
    if os.environ.get("RECORDER_SIDECAR") and rc == 0 and "checkpoint" in args and image_path:
        # Does a file written next to the image travel with the checkpoint? (see restore's listing)
        with open(os.path.join(image_path, "recorder-sidecar.json"), "w") as f:
            json.dump({"written_by": tag, "time": time.time()}, f)
    for name in ("image-path", "work-path"):
        if values.get(name) and os.path.isdir(values[name]):
            record[f"{name}_files"] = listing(values[name])
    with open(calls, "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(rc if rc >= 0 else 128 - rc)


main()
