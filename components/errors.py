"""Errors a user can act on: the CLI prints them as one line (no traceback) and exits non-zero."""


class P4DError(Exception):
    """Base class for expected, user-facing failures. The message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(P4DError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class ItemFailure(Exception):
    """One input item cannot be used; the message is the manifest ``reason`` (precise, actionable).

    Not a P4DError: a stage records it for the item and goes on with the others (DESIGN §6).
    """
