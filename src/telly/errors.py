"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class TellyError(Exception):
    """A problem with input, settings or environment that the message explains."""


class NonFiniteError(TellyError):
    """A loss or a score that is NaN or infinite: the run is broken, and nothing from it is scored or published."""
