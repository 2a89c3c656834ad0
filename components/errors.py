"""Errors a user can act on: the CLI prints them as one line (no traceback) and exits non-zero."""


class P4DError(Exception):
    """Base class for expected, user-facing failures. The message says what is wrong and what to do."""

    exit_code = 2
