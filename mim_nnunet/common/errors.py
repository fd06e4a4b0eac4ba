"""Errors whose message is the whole story: commands print them as one line and exit non-zero."""

from __future__ import annotations


class MimError(Exception):
    """A user-facing error with a one-line message naming the thing at fault and the fix."""


class SetupError(MimError):
    """An environment variable is unset or points at the wrong place."""


class PlansError(MimError, ValueError):
    """nnU-Net plans cannot serve the requested trainer."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (third-party errors span many lines)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a traceback or log text: where Python puts the error itself."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:limit]
