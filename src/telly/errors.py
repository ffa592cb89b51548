"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class TellyError(Exception):
    """A problem with input, settings or environment that the message explains."""
