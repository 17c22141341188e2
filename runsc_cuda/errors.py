"""The one exception type runsc-cuda turns into a one-line message and an exit status."""

from __future__ import annotations


class ShimError(Exception):
    """A failure to report to the user as one line, with an exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
