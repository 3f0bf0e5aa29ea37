"""The error vocabulary every stage speaks.

- ``UserError``: a configuration the user must fix; one line saying what and how (exit 2).
- ``TransientError``: the destination cannot take the write now (unreachable, overloaded, a lock
  timeout); the pipeline retries in place, with backoff, forever. Never a reason to skip a record.
- ``Rejected``: the destination refused the write for good (a mapping conflict, a value out of
  range); retrying cannot help. The pipeline dead-letters the record(s) with ``reason``.
Only the pipeline around a sink (app/sinks/pipeline.py) decides between retry and dead-letter.
"""


class UserError(Exception):
    """Printed as a single line by the CLI (exit status 2); never a traceback."""


class TransientError(Exception):
    """Retry later; ``retry_after`` (seconds) when the destination said how long to wait."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class Rejected(Exception):
    """The destination refused this write for good, for ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
