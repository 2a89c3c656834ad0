"""Why an official checkpoint could not be imported (one line each, printed by the `p4d` CLI)."""

from __future__ import annotations

from components.errors import P4DError


class OfficialImportError(P4DError, ValueError):
    """The file is not a checkpoint we can import; the message names the file and the problem."""


class UnsafePickleError(OfficialImportError):
    """The pickle references a global outside the allow-list; nothing from it was executed."""


class KeyMismatchError(OfficialImportError):
    """The tensors do not match the expected key -> shape list; the message names the keys."""
