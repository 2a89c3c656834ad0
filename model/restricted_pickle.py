"""The restricted unpickler both of our pickle readers share: nothing a file names runs unless we allowed it.

A pickle can call any importable function (its ``GLOBAL``/``STACK_GLOBAL`` opcodes name one, ``REDUCE`` calls
it), so we never hand a file to the stock unpickler. :class:`RestrictedUnpickler` hands out only what the
caller's allow-list maps a ``(module, name)`` to, usually a small data-only stand-in, and refuses every other
global by name before anything is called, with one error type (:class:`UnsafePickleError`).

Callers: the FLAME loader (``model/flame/safe_pickle.py``: chumpy / scipy stand-ins) and the official-weights
importer (``components/import_official/safe_pickle.py``: tensors, the persistence hook, inert records). Both
read numpy arrays and plain containers through the stand-ins defined here.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import numpy as np

GlobalName = tuple[str, str]  # (module, name) as the pickle spells it


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global (or calls one in a way) that the allow-list refuses; nothing from it ran."""


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` returns ``allowed[(module, name)]``, else what :meth:`find_extra` returns, else refuses.

    Subclasses say what their files may hold (``allows``) and may raise their own subclass of
    :class:`UnsafePickleError` (``error``)."""

    allows: ClassVar[str] = "only allow-listed globals are read"
    error: ClassVar[type[UnsafePickleError]] = UnsafePickleError

    def __init__(self, file: BinaryIO, source: str, allowed: Mapping[GlobalName, Any], encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.source = source
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            found = self.find_extra(module, name)
        if found is None:
            raise self.error(f"{self.source}: refusing to load global '{module}.{name}': {self.allows}; "
                             "nothing from the file was run")
        return found

    def find_extra(self, module: str, name: str) -> Any | None:
        """Globals that a fixed table cannot list (a family of names); None = refuse."""
        return None

    def persistent_load(self, pid: Any) -> Any:
        raise self.error(f"{self.source}: persistent id {pid!r} is not allowed in this file")


# --- numpy arrays and plain containers, as data-only stand-ins ------------------------------------------


class _NdarrayMarker:
    """``numpy.ndarray`` may only appear as the class argument of ``_reconstruct``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("refusing to call numpy.ndarray directly (only _reconstruct may build arrays)")


_NDARRAY = _NdarrayMarker()


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    # numpy pickles call _reconstruct(ndarray, (0,), b'b') and then BUILD with the data (ndarray.__reduce__).
    if cls is not _NDARRAY:
        raise UnsafePickleError("numpy _reconstruct may only build numpy.ndarray")
    if not isinstance(shape, tuple) or len(shape) != 1 or shape[0] != 0:
        raise UnsafePickleError(f"numpy _reconstruct: unexpected placeholder shape {shape!r}")
    return np.ndarray((0,), dtype=np.uint8)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, (str, bytes)) or len(spec) > 16:
        raise UnsafePickleError(f"numpy.dtype: unexpected spec {spec!r}")
    return np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)


def _scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy scalar: only plain (non-object) dtypes are allowed")
    if isinstance(raw, str):  # Python-2 str read with encoding='latin1'
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafePickleError("numpy scalar: payload does not match dtype size")
    return np.frombuffer(raw, dtype=dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol-5 numpy pickles (numpy/core/numeric.py: _frombuffer).
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy _frombuffer: only plain (non-object) dtypes are allowed")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy _frombuffer: bad order {order!r}")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy(order="K")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocols < 3.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError("_codecs.encode: only str -> bytes with latin1/utf-8 is allowed")
    return text.encode(encoding)


def _make_set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise UnsafePickleError("builtins.set: expected a list of items")
    return set(items)


def _make_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_make_set(items))


def numpy_globals() -> dict[GlobalName, Any]:
    """What numpy arrays, dtypes and scalars need, under numpy 1.x and 2.x module names."""
    allowed: dict[GlobalName, Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


def container_globals() -> dict[GlobalName, Any]:
    """Sets and protocol<3 bytes; Python-2 pickles name builtins '__builtin__' (find_class sees it unmapped)."""
    allowed: dict[GlobalName, Any] = {("_codecs", "encode"): _codecs_encode}
    for builtins_module in ("builtins", "__builtin__"):
        allowed[(builtins_module, "set")] = _make_set
        allowed[(builtins_module, "frozenset")] = _make_frozenset
    return allowed
