"""Write FLAME arrays in the byte layout of the official (Python-2, chumpy) ``generic_model.pkl``.

Used for synthetic bundles and test fixtures, so that every code path that reads the real file is
exercised without it. The opcodes are emitted by hand (pickle protocol 2, Python-2 ``str`` for text
and raw array data) because the real classes (chumpy ``Ch``, scipy ``csc_matrix``) must be named
without importing them. Layout facts:
- ``shapedirs`` is a ``chumpy.ch.Ch`` built with NEWOBJ and a state dict equal to ``Ch.__dict__``
  minus ``_parents``/``_cache`` (chumpy/ch.py ``__getstate__``), array in ``'x'``.
- ``J_regressor`` is a ``scipy.sparse.csc.csc_matrix`` built with NEWOBJ and its attribute dict.
- every ndarray is ``numpy.core.multiarray._reconstruct(ndarray, (0,), 'b')`` + BUILD
  ``(1, shape, dtype, is_fortran, raw)``; dtypes are ``numpy.dtype(code, 0, 1)`` + BUILD 8-tuple.
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, Mapping

import numpy as np

CHUMPY_KEYS = ("shapedirs",)  # stored as chumpy Ch in FLAME 2020
SPARSE_KEYS = ("J_regressor",)  # stored as scipy.sparse csc_matrix

# One-byte opcodes of pickle protocol 2 (see Lib/pickletools.py for their definitions).
_PROTO2 = b"\x80\x02"
_MARK, _STOP, _TUPLE, _EMPTY_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = b"(", b".", b"t", b")", b"\x85", b"\x86", b"\x87"
_EMPTY_DICT, _SETITEMS, _EMPTY_LIST, _APPENDS = b"}", b"u", b"]", b"e"
_NONE, _TRUE, _FALSE = b"N", b"\x88", b"\x89"
_REDUCE, _BUILD, _NEWOBJ = b"R", b"b", b"\x81"
_BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = b"q", b"r", b"h", b"j"


class _Py2PickleWriter:
    """Emits protocol-2 opcodes the way CPython 2 / numpy 1.x wrote them."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self._globals: dict[tuple[str, str], int] = {}

    def raw(self, opcodes: bytes) -> None:
        self.out.write(opcodes)

    def global_(self, module: str, name: str) -> None:
        key = (module, name)
        if key in self._globals:  # re-use through the memo, as cPickle does
            idx = self._globals[key]
            self.raw(_BINGET + bytes([idx]) if idx < 256 else _LONG_BINGET + struct.pack("<I", idx))
            return
        self.raw(b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        idx = len(self._globals)
        self._globals[key] = idx
        self.raw(_BINPUT + bytes([idx]) if idx < 256 else _LONG_BINPUT + struct.pack("<I", idx))

    def str_(self, data: str | bytes) -> None:
        # A Python-2 byte string (SHORT_BINSTRING / BINSTRING); readers need encoding='latin1'.
        raw = data.encode("latin1") if isinstance(data, str) else bytes(data)
        if len(raw) < 256:
            self.raw(b"U" + bytes([len(raw)]) + raw)
        else:
            self.raw(b"T" + struct.pack("<i", len(raw)) + raw)

    def int_(self, value: int) -> None:
        value = int(value)
        if 0 <= value < 256:
            self.raw(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self.raw(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self.raw(b"J" + struct.pack("<i", value))
        else:  # LONG1: little-endian two's complement
            n_bytes = (value.bit_length() + 8) // 8
            self.raw(b"\x8a" + bytes([n_bytes]) + value.to_bytes(n_bytes, "little", signed=True))

    def tuple_(self, items: tuple) -> None:
        if not items:
            self.raw(_EMPTY_TUPLE)
            return
        if len(items) > 3:
            self.raw(_MARK)
        for item in items:
            self.value(item)
        self.raw({1: _TUPLE1, 2: _TUPLE2, 3: _TUPLE3}.get(len(items), _TUPLE))

    def dict_(self, mapping: Mapping[str, Any]) -> None:
        self.raw(_EMPTY_DICT)
        if mapping:
            self.raw(_MARK)
            for key, item in mapping.items():
                self.str_(key)
                self.value(item)
            self.raw(_SETITEMS)

    def dtype(self, dtype: np.dtype) -> None:
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise TypeError(f"write_flame_pickle: unsupported dtype {dtype}")
        self.global_("numpy", "dtype")
        self.tuple_((dtype.kind + str(dtype.itemsize), 0, 1))
        self.raw(_REDUCE)
        byteorder = "|" if dtype.itemsize == 1 else ("<" if dtype.byteorder in "<=" else ">")
        self.tuple_((3, byteorder, None, None, None, -1, -1, 0))  # numpy dtype state version 3
        self.raw(_BUILD)

    def ndarray(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.tuple_((0,))
        self.str_(b"b")
        self.raw(_TUPLE3 + _REDUCE)
        self.raw(_MARK)
        self.int_(1)
        self.tuple_(tuple(int(s) for s in array.shape))
        self.dtype(array.dtype)
        self.raw(_FALSE)  # C order
        self.str_(array.tobytes())
        self.raw(_TUPLE + _BUILD)

    def set_(self, items: set) -> None:
        # Python 2 pickled a set as __builtin__.set([items]).
        self.global_("__builtin__", "set")
        self.raw(_EMPTY_LIST)
        if items:
            self.raw(_MARK)
            for item in sorted(items):
                self.value(item)
            self.raw(_APPENDS)
        self.raw(_TUPLE1 + _REDUCE)

    def object_(self, module: str, name: str, state: Mapping[str, Any]) -> None:
        self.global_(module, name)
        self.raw(_EMPTY_TUPLE + _NEWOBJ)
        self.dict_(state)
        self.raw(_BUILD)

    def value(self, item: Any) -> None:
        if item is None:
            self.raw(_NONE)
        elif isinstance(item, (bool, np.bool_)):
            self.raw(_TRUE if item else _FALSE)
        elif isinstance(item, (int, np.integer)):
            self.int_(int(item))
        elif isinstance(item, (str, bytes)):
            self.str_(item)
        elif isinstance(item, tuple):
            self.tuple_(item)
        elif isinstance(item, set):
            self.set_(item)
        elif isinstance(item, dict):
            self.dict_(item)
        elif isinstance(item, np.ndarray):
            self.ndarray(item)
        else:
            raise TypeError(f"write_flame_pickle: cannot write a {type(item).__name__}")


def _chumpy_state(array: np.ndarray) -> dict[str, Any]:
    # Ch.__dict__ of an evaluated Ch (chumpy/ch.py: Ch.__new__, then .r sets _status and clears
    # _dirty_vars) without _parents/_cache; checked against a pickle from Python 2 + chumpy 0.69.
    return {
        "_dirty_vars": set(),
        "_status": "new",
        "_itr": None,
        "_make_dense": False,
        "_make_sparse": False,
        "_depends_on_deps": {},
        "x": np.asarray(array, dtype=np.float64),
    }


def _csc_state(dense: np.ndarray) -> dict[str, Any]:
    dense = np.asarray(dense)
    if dense.ndim != 2:
        raise ValueError(f"write_flame_pickle: sparse entry must be 2-D, got shape {dense.shape}")
    cols, rows = np.nonzero(dense.T)  # column-major order of the non-zeros = CSC order
    indptr = np.zeros(dense.shape[1] + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=dense.shape[1]), out=indptr[1:])
    return {
        "_shape": tuple(int(s) for s in dense.shape),
        "maxprint": 50,  # attribute dict of scipy 1.2 (the last Python-2 scipy) csc_matrix
        "indices": rows.astype(np.int32),
        "indptr": indptr,
        "data": dense[rows, cols],
    }


def write_flame_pickle(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` as a FLAME-2020-style pickle (chumpy ``shapedirs``, csc ``J_regressor``).

    Values may be ndarrays (any plain numeric dtype, kept as is) or ``str`` (bs_style, bs_type).
    ``shapedirs`` is stored as float64 (a chumpy Ch always evaluates to float64).
    """
    writer = _Py2PickleWriter()
    writer.raw(_PROTO2 + _EMPTY_DICT + _MARK)
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise TypeError(f"write_flame_pickle: keys must be str, got {key!r}")
        writer.str_(key)
        if key in CHUMPY_KEYS:
            writer.object_("chumpy.ch", "Ch", _chumpy_state(value))
        elif key in SPARSE_KEYS:
            writer.object_("scipy.sparse.csc", "csc_matrix", _csc_state(value))
        elif isinstance(value, (np.ndarray, str)):
            writer.value(value)
        else:
            raise TypeError(f"write_flame_pickle: {key!r} must be an ndarray or str, got {type(value).__name__}")
    writer.raw(_SETITEMS + _STOP)
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(writer.out.getvalue())
    os.replace(tmp, path)  # never leave a half-written model behind
