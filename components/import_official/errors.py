"""Why an official checkpoint could not be imported (one line each, printed by the `p4d` CLI)."""

from __future__ import annotations

from components.errors import P4DError
from model.restricted_pickle import UnsafePickleError as RefusedGlobal


class OfficialImportError(P4DError, ValueError):
    """The file is not a checkpoint we can import; the message names the file and the problem."""


class UnsafePickleError(OfficialImportError, RefusedGlobal):
    """The pickle references a global outside the allow-list; nothing from it was executed (the same error kind
    as the FLAME loader's: both read through model/restricted_pickle.py)."""


class KeyMismatchError(OfficialImportError):
    """The tensors do not match the expected key -> shape list; the message names the keys."""
