"""Errors whose message is the whole story: commands print them as one line and exit non-zero."""


class MimError(Exception):
    """A user-facing error with a one-line message naming the thing at fault and the fix."""


class SetupError(MimError):
    """An environment variable is unset or points at the wrong place."""


class PlansError(MimError, ValueError):
    """nnU-Net plans cannot serve the requested trainer."""


class DemoError(MimError):
    """A step of the demo failed."""
