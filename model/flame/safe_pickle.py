"""Restricted reading of the FLAME 2020 pickle and of pickled-dict ``.npy`` assets.

``generic_model.pkl`` is a Python-2 pickle that stores chumpy ``Ch`` objects (shapedirs) and a
``scipy.sparse.csc_matrix`` (J_regressor) next to plain numpy arrays. A pickle can call any
importable function, so we read it with the shared restricted unpickler (``model/restricted_pickle.py``):
every global it names goes through an allow-list that maps it to a small, data-only stand-in (numpy and
containers from the shared core, chumpy and scipy here). Nothing from chumpy or scipy is imported, and no
callable other than these stand-ins can run.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

from model.restricted_pickle import RestrictedUnpickler, UnsafePickleError, container_globals, numpy_globals


class FlameFileError(ValueError):
    """A FLAME asset file is truncated, foreign, or not in the expected format."""


# --- data-only stand-ins -------------------------------------------------------------------------


class _PlainState:
    """Instance of a pickled class whose state is kept as a dict and never interpreted here."""

    qualname = "?"
    state: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "_PlainState":
        # NEWOBJ/REDUCE with arguments would mean "run the real constructor": refuse.
        if args or kwargs:
            raise UnsafePickleError(f"refusing to call {cls.qualname} with arguments")
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.qualname}: expected a dict state, got {type(state).__name__}")
        self.state = dict(state)


class ChumpyCh(_PlainState):
    """Stand-in for ``chumpy.ch.Ch``; chumpy keeps the array in ``__dict__['x']`` (chumpy/ch.py)."""

    qualname = "chumpy.ch.Ch"

    def to_array(self) -> np.ndarray:
        if "x" not in self.state:
            raise FlameFileError("chumpy Ch object without an 'x' array")
        # chumpy evaluates a plain Ch as float64 (Ch.r casts to float64), so we do the same.
        return np.asarray(np.atleast_1d(_to_plain(self.state["x"])), dtype=np.float64)


class SparseMatrix(_PlainState):
    """Stand-in for a ``scipy.sparse`` csc/csr/coo matrix; the state is its attribute dict."""

    fmt = "?"

    def to_array(self) -> np.ndarray:
        st = self.state
        shape = st.get("_shape", st.get("shape"))
        if shape is None or len(shape) != 2:
            raise FlameFileError(f"{self.qualname}: no 2-D shape in state")
        n_rows, n_cols = (int(s) for s in shape)
        data = np.asarray(st["data"])
        dense = np.zeros((n_rows, n_cols), dtype=data.dtype)
        if self.fmt == "coo":
            np.add.at(dense, (np.asarray(st["row"]), np.asarray(st["col"])), data)
            return dense
        indptr, indices = np.asarray(st["indptr"]), np.asarray(st["indices"])
        n_major = n_cols if self.fmt == "csc" else n_rows
        if indptr.shape != (n_major + 1,) or indices.shape != data.shape:
            raise FlameFileError(f"{self.qualname}: inconsistent indptr/indices/data")
        major = np.repeat(np.arange(n_major), np.diff(indptr))
        if self.fmt == "csc":
            np.add.at(dense, (indices, major), data)  # add.at: duplicates sum, as in scipy
        else:
            np.add.at(dense, (major, indices), data)
        return dense


def _sparse_class(module: str, fmt: str) -> type[SparseMatrix]:
    return type(f"{fmt}_matrix", (SparseMatrix,), {"qualname": f"{module}.{fmt}_matrix", "fmt": fmt})


def _allow_list() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {**container_globals(), **numpy_globals()}
    allowed[("chumpy.ch", "Ch")] = ChumpyCh
    allowed[("chumpy", "Ch")] = ChumpyCh
    # scipy moved the classes to private modules (scipy >= 1.8); old pickles name the public ones.
    for fmt in ("csc", "csr", "coo"):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse"):
            allowed[(module, f"{fmt}_matrix")] = _sparse_class(module, fmt)
    return allowed


_ALLOWED = _allow_list()


class _FlameUnpickler(RestrictedUnpickler):
    allows = "only numpy arrays, chumpy Ch and scipy sparse matrices are read"

    def __init__(self, file: BinaryIO, source: str) -> None:
        # latin1: Python-2 byte strings (numpy raw data) must survive unchanged.
        super().__init__(file, source, _ALLOWED, encoding="latin1")

    def persistent_load(self, pid: Any) -> Any:
        raise FlameFileError("persistent ids are not used by FLAME pickles")


def _to_plain(obj: Any) -> Any:
    """Replace stand-ins by ndarrays, recursively through dicts, lists, tuples and object arrays."""
    if isinstance(obj, (ChumpyCh, SparseMatrix)):
        return obj.to_array()
    if isinstance(obj, _PlainState):
        raise FlameFileError(f"cannot convert {obj.qualname} to an array")
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        for idx, value in np.ndenumerate(obj):
            out[idx] = _to_plain(value)
        return out
    return obj


def _restricted_load(data: bytes, source: str) -> Any:
    if not data:
        raise FlameFileError(f"{source}: file is empty")
    try:
        obj = _FlameUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError as err:
        msg = str(err)
        raise UnsafePickleError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as err:
        raise FlameFileError(f"{source}: not a readable pickle (truncated or foreign file): {err!r}") from None
    try:
        return _to_plain(obj)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise FlameFileError(f"{source}: malformed chumpy/sparse object: {err}") from None


def _read_bytes(path: str | os.PathLike) -> tuple[bytes, str]:
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"FLAME asset not found: {source}")
    with open(source, "rb") as fh:
        return fh.read(), source


def load_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``generic_model.pkl`` (FLAME 2020) without chumpy and without running pickled code.

    Returns the file's keys unchanged (f, v_template, shapedirs, posedirs, J_regressor, weights,
    kintree_table, J, bs_style, bs_type, ...). chumpy ``Ch`` becomes a float64 ndarray, sparse
    matrices become dense ndarrays; text entries (bs_style, bs_type) stay ``str``.
    """
    data, source = _read_bytes(path)
    obj = _restricted_load(data, source)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise FlameFileError(f"{source}: expected a dict with str keys, got {type(obj).__name__}")
    return obj


_NPY_MAGIC = b"\x93NUMPY"


def _parse_npy_header(data: bytes, source: str) -> tuple[dict[str, Any], int]:
    """Header dict and payload offset of a .npy file (format described in numpy/lib/format.py)."""
    if len(data) < 10 or not data.startswith(_NPY_MAGIC):
        raise FlameFileError(f"{source}: not a .npy file (bad magic)")
    major = data[6]
    if major == 1:
        (header_len,), start = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise FlameFileError(f"{source}: truncated .npy header")
        (header_len,), start = struct.unpack("<I", data[8:12]), 12
    else:
        raise FlameFileError(f"{source}: unsupported .npy version {major}")
    raw = data[start : start + header_len]
    if len(raw) != header_len:
        raise FlameFileError(f"{source}: truncated .npy header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError) as err:
        raise FlameFileError(f"{source}: malformed .npy header: {err}") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= header.keys():
        raise FlameFileError(f"{source}: .npy header lacks descr/fortran_order/shape")
    return header, start + header_len


def load_pickled_npy(path: str | os.PathLike) -> Any:
    """Read an official ``.npy`` asset that holds a pickled object (e.g. ``landmark_embedding.npy``).

    Same restrictions as :func:`load_flame_pickle`. A 0-d object array is unwrapped to its content
    (what ``np.load(path, allow_pickle=True)[()]`` gives); a plain numeric ``.npy`` is returned as
    an ndarray without touching pickle at all.
    """
    data, source = _read_bytes(path)
    header, offset = _parse_npy_header(data, source)
    dtype = np.dtype(header["descr"]) if not isinstance(header["descr"], list) else None
    shape = tuple(header["shape"])
    order = "F" if header["fortran_order"] else "C"
    if dtype is not None and not dtype.hasobject:
        count = int(np.prod(shape))
        if len(data) - offset < count * dtype.itemsize:
            raise FlameFileError(f"{source}: truncated array payload")
        return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order=order).copy()
    if dtype is None:
        raise FlameFileError(f"{source}: structured .npy dtypes are not supported")
    obj = _restricted_load(data[offset:], source)
    if not isinstance(obj, np.ndarray) or obj.shape != shape:
        raise FlameFileError(f"{source}: pickled payload does not match the header shape {shape}")
    return obj[()] if obj.shape == () else obj
