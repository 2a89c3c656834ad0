"""Errors a user can act on: the CLI prints them as one line (no traceback) and exits non-zero."""


class P4DError(Exception):
    """Base class for expected, user-facing failures. The message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(P4DError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""
