"""The one exception type runsc-cuda turns into a one-line message and an exit status.

An error says what went wrong, nothing more; the verb handler that catches it
adds which call it was about, once (``framed_as``): ``cannot checkpoint c1:
...; nothing was frozen`` for a call refused before anything was changed,
``checkpoint of c1 failed: ...`` for one that failed on the way.
"""

from __future__ import annotations


class ShimError(Exception):
    """A failure to report to the user as one line, with an exit status."""

    def __init__(self, message: str, exit_code: int = 1, *, refused: bool = False, framed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.refused = refused  # nothing was changed: the call was turned down
        self.framed = framed  # the verb and container are in the message already

    def __str__(self) -> str:
        return self.message

    def framed_as(self, verb: str, cid: str, unchanged: str = "nothing was changed") -> ShimError:
        """This error with its call named in front, and for a refusal what it left alone (``unchanged``).
        Once: a framed error is returned as it is."""
        if self.framed:
            return self
        if self.refused:
            message = f"cannot {verb} {cid}: {self.message}; {unchanged}"
        else:
            message = f"{verb} of {cid} failed: {self.message}"
        return ShimError(message, self.exit_code, refused=self.refused, framed=True)


def refusal(message: str) -> ShimError:
    """A call turned down before anything was changed (``cannot VERB ID: ...``)."""
    return ShimError(message, refused=True)
