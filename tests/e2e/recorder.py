"""A recording OCI runtime: appends each call to a JSON-lines file, then runs the real runsc.

Usage (from a wrapper script): recorder.py CALLS_FILE REAL_RUNSC ARGS...

Each line: argv (as the caller gave it), cwd, exit status, start time and
duration, the bytes this call added to the ``--log`` file, and what is in the
--image-path / --work-path folders afterwards.  Signals are passed on to runsc.
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
    calls, runsc, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    values = flag_values(args)
    log = values.get("log")
    before = log_size(log) if log else None
    start = time.time()
    proc = subprocess.Popen([runsc, *args])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    rc = proc.wait()
    record = {
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
    for name in ("image-path", "work-path"):
        if values.get(name) and os.path.isdir(values[name]):
            record[f"{name}_files"] = listing(values[name])
    with open(calls, "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(rc if rc >= 0 else 128 - rc)


main()
