"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class TellyError(Exception):
    """A problem with input, settings or environment that the message explains."""


class NonFiniteError(TellyError):
    """A loss or a score that is NaN or infinite: the run is broken, and nothing from it is scored or published."""


class ServiceUnavailable(TellyError):
    """A team service (the study database, the tracking server) stopped answering while a command ran.

    The command stops with exit code 75 (``EX_TEMPFAIL``: try again later) and keeps what it saved
    (checkpoints, a trial's state) for the rerun once the service is back (``telly services up``)."""

    exit_code = 75
    tracking_down = False  # the MLflow server, not the database
