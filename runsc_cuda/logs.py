"""Where runsc-cuda says what it did.

Three sinks:
- the runtime log (``--log FILE``): the file containerd reads; runc's JSON line
  form ``{"level","msg","time"}`` (or logrus text with ``--log-format text``).
  containerd shows the user the last ``error`` line, so runsc-cuda's own
  failure is always appended last.
- the detailed log (config ``log_file``): python-json-logger JSON lines with
  fields (container id, PIDs, durations).
- stderr: errors only, one line each.

Every line is bounded (``LINE_MAX`` characters of message, each detailed-log field
as long) and the runtime log's and stderr's are printable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import logging

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Attributes of logging.LogRecord: a field with one of these names would make logging raise.
_RESERVED = frozenset(
    {
        "args",
        "asctime",
        "created",
        "exc_info",
        "exc_text",
        "filename",
        "funcName",
        "levelname",
        "levelno",
        "lineno",
        "message",
        "module",
        "msecs",
        "msg",
        "name",
        "pathname",
        "process",
        "processName",
        "relativeCreated",
        "stack_info",
        "taskName",
        "thread",
        "threadName",
    }
)


# The longest line runsc-cuda writes to any sink: error text can quote untrusted input (a
# sidecar's GPU names, an annotation), and containerd keeps the runtime log's last line.
LINE_MAX = 4096
LINE_BYTES = 8192  # a whole runtime-log line, escapes included


def bounded(text: str, limit: int = LINE_MAX) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail with what was left out said."""
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]} ... ({len(text) - 2 * half} characters left out) ... {text[-half:]}"


def _one_line(message: str) -> str:
    """One bounded line of printable text: a message may quote output from inside the sandbox,
    and containerd and terminals show it as it is (escape codes would steer them)."""
    text = bounded(" ".join(message.split()))
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _field(value: Any) -> Any:
    """A detailed-log field, bounded: a long one is kept as its bounded text."""
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= LINE_MAX:
        return value
    return bounded(text)


def rfc3339(now: float) -> str:
    """UTC time as runc writes it, with microseconds."""
    whole = time.gmtime(now)
    micros = int((now % 1) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{micros:06d}Z"


def format_line(level: str, message: str, now: float, fmt: str) -> str:
    """One runtime-log line in runc's form (JSON by default, logrus text otherwise), at most
    ``LINE_BYTES`` long however the message escapes (``\\uXXXX`` is six bytes for one character)."""
    msg = _one_line(message)
    while True:
        if fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": rfc3339(now)}) + "\n"
        else:
            line = f'time="{rfc3339(now)}" level={level} msg={json.dumps(msg)}\n'
        if len(line) <= LINE_BYTES or len(msg) <= 256:
            return line
        msg = bounded(msg, len(msg) // 2)


class RuntimeLog:
    """Appends runc-style lines to the ``--log`` file; one write per line."""

    def __init__(self, path: str, fmt: str = "json", clock: Any = time.time) -> None:
        self.path = path
        self.fmt = "json" if fmt == "json" else "text"
        self.clock = clock

    def write(self, level: str, message: str) -> None:
        line = format_line(level, message, self.clock(), self.fmt).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return  # the log is best effort; stderr still carries errors
        try:
            # runsc writes its JSON error objects without a newline; start ours
            # on a line of its own so line-based readers see whole objects too.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
        except OSError:
            pass
        finally:
            os.close(fd)


def detail_logger(path: str | None, level: str) -> logging.Logger | None:
    """runsc-cuda's own JSON-lines logger (python-json-logger); None without a path (nothing to
    write: neither logging nor python-json-logger is imported)."""
    if not path:
        return None
    import logging

    logger = logging.getLogger("runsc-cuda")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS.get(level.lower(), 20))
    try:
        from pythonjsonlogger.json import JsonFormatter
    except ImportError:  # python-json-logger < 3.1
        from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef,attr-defined]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as e:
        sys.stderr.write(f"runsc-cuda: warning: cannot open log_file {path}: {e.strerror}\n")
        handler = logging.NullHandler()
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{message}",
            style="{",
            rename_fields={"levelname": "level", "message": "msg"},
            timestamp="time",  # ISO 8601 in UTC
        )
    )
    logger.addHandler(handler)
    return logger


@dataclass(frozen=True)
class Note:
    """Something a pure function wants said, and how loudly (a key of ``LEVELS``)."""

    level: str
    text: str


class Reporter:
    """Sends each message to the sinks that should see it."""

    def __init__(
        self,
        runtime_log: RuntimeLog | None,
        logger: logging.Logger | None,
        stderr: TextIO | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.runtime_log = runtime_log
        self.logger = logger
        self.stderr = stderr if stderr is not None else sys.stderr
        self.context = dict(context or {})

    def _detail(self, level: str, message: str, fields: Mapping[str, Any]) -> None:
        if self.logger is not None:
            extra = {(f"{k}_" if k in _RESERVED else k): _field(v) for k, v in {**self.context, **fields}.items()}
            self.logger.log(LEVELS[level], bounded(message), extra=extra)

    def debug(self, message: str, **fields: Any) -> None:
        self._detail("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        """Detailed log and runtime log."""
        self._detail("info", message, fields)
        if self.runtime_log is not None:
            self.runtime_log.write("info", f"runsc-cuda: {message}")

    def warning(self, message: str, **fields: Any) -> None:
        self._detail("warning", message, fields)
        if self.runtime_log is not None:
            self.runtime_log.write("warning", f"runsc-cuda: {message}")

    def note(self, note: Note, **fields: Any) -> None:
        {"debug": self.debug, "info": self.info, "warning": self.warning, "error": self.error}[note.level](
            note.text, **fields
        )

    def error(self, message: str, **fields: Any) -> None:
        """All three sinks; the runtime-log line is the one containerd will show."""
        self._detail("error", message, fields)
        if self.runtime_log is not None:
            self.runtime_log.write("error", f"runsc-cuda: {message}")
        self.stderr.write(f"runsc-cuda: {_one_line(message)}\n")
        self.stderr.flush()
