"""Turn a safely-read official network pickle into flat state dicts plus JSON-able construction facts."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.io.hashing import file_sha256
from components.import_official.errors import OfficialImportError
from components.import_official.safe_pickle import (
    EasyDictData,
    ObjectRecord,
    PersistentRecord,
    safe_load,
)

# Limits of a plausible network; a cyclic or hostile record graph stops here instead of looping.
MAX_MODULE_DEPTH = 64
MAX_MODULE_VISITS = 1_000_000


@dataclass
class NetworkRecord:
    """One network of the pickle (``G``, ``D``, ``G_ema``, ...), as data."""

    name: str
    class_name: str
    state_dict: dict[str, torch.Tensor]  # in the order official ``module.state_dict()`` would list them
    init_args: list
    init_kwargs: dict
    attributes: dict  # plain top-level attributes: rendering_kwargs, neural_rendering_resolution, z_dim, ...
    module_src_sha256: str


@dataclass
class OfficialPickle:
    path: Path
    sha256: str
    size_bytes: int
    networks: dict[str, NetworkRecord]
    training_set_kwargs: dict | None
    other: dict = field(default_factory=dict)  # remaining top-level entries, summarised as JSON


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON data for kwargs/attributes; tensors and unknown objects become short descriptions."""
    if depth > 32:
        return "<nested too deep>"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.generic,)):
        return to_jsonable(value.item(), depth + 1)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v, depth + 1) for v in items]
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else {"ndarray": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, type) and issubclass(value, ObjectRecord):
        return f"<class {value.qualname}>"
    if isinstance(value, (ObjectRecord, PersistentRecord)):
        return f"<{getattr(value, 'qualname', None) or value.class_name} instance>"
    return f"<{type(value).__name__}>"


def _module_state(node: Any, where: str) -> dict:
    state = node.state if isinstance(node, (PersistentRecord, ObjectRecord)) else None
    if not isinstance(state, dict) or not isinstance(state.get("_modules", {}), Mapping):
        raise OfficialImportError(f"{where} is not a torch module record ({type(node).__name__})")
    return state


def _tensor_entries(table: Any, where: str) -> list[tuple[str, torch.Tensor]]:
    if table is None:
        return []
    if not isinstance(table, Mapping):
        raise OfficialImportError(f"{where} is a {type(table).__name__}, expected a name -> tensor table")
    out = []
    for name, value in table.items():
        if value is None:
            continue  # e.g. bias=False registers None; state_dict skips it too
        if not isinstance(value, torch.Tensor):
            raise OfficialImportError(f"{where}[{name!r}] is a {type(value).__name__}, expected a tensor")
        out.append((str(name), value))
    return out


def module_state_dict(node: Any, where: str) -> dict[str, torch.Tensor]:
    """Flat ``{key: tensor}`` of a module record, walking ``_parameters``, persistent ``_buffers``, ``_modules``.

    Same keys and order as ``torch.nn.Module.state_dict()``: own parameters, own persistent buffers, then children
    in registration order; a module reachable twice (e.g. LPIPS ``lin0`` and ``lins.0``) is listed twice.
    """
    out: dict[str, torch.Tensor] = {}
    visits = 0

    def walk(node: Any, prefix: str, depth: int) -> None:
        nonlocal visits
        visits += 1
        if depth > MAX_MODULE_DEPTH or visits > MAX_MODULE_VISITS:
            raise OfficialImportError(f"{where}: module tree too deep or too large at {prefix!r}")
        state = _module_state(node, f"{where}:{prefix or '<root>'}")
        for name, tensor in _tensor_entries(state.get("_parameters"), f"{where}:{prefix}_parameters"):
            out[prefix + name] = tensor
        non_persistent = state.get("_non_persistent_buffers_set") or ()
        for name, tensor in _tensor_entries(state.get("_buffers"), f"{where}:{prefix}_buffers"):
            if name not in non_persistent:
                out[prefix + name] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(node, "", 0)
    return out


def _is_plain(value: Any, depth: int = 0) -> bool:
    if depth > 16:
        return False
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def _plain_attributes(state: dict) -> dict:
    """Public attributes that are plain data (skips torch internals, tensors and sub-objects)."""
    return {
        key: to_jsonable(value)
        for key, value in state.items()
        if not key.startswith("_") and key != "training" and _is_plain(value)
    }


def network_record(name: str, record: PersistentRecord, source: str) -> NetworkRecord:
    state = record.state
    init_args = state.get("_init_args", ())
    init_kwargs = state.get("_init_kwargs", {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, (dict, EasyDictData)):
        raise OfficialImportError(f"{source}: {name} has malformed init_args/init_kwargs")
    return NetworkRecord(
        name=name,
        class_name=record.class_name,
        state_dict=module_state_dict(record, f"{source}:{name}"),
        init_args=to_jsonable(list(init_args)),
        init_kwargs=to_jsonable(init_kwargs),
        attributes=_plain_attributes(state),
        module_src_sha256=hashlib.sha256(record.module_src.encode("utf-8", "surrogatepass")).hexdigest(),
    )


def read_official_pickle(path: str | Path) -> OfficialPickle:
    """Read an official network pickle (``G``, ``D``, ``G_ema``, ``training_set_kwargs``, ...) without running code."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"{path}: no such file")
    source = str(path)
    with open(path, "rb") as fh:
        data = safe_load(fh, source)
    if not isinstance(data, Mapping):
        raise OfficialImportError(f"{source}: holds a {type(data).__name__}, expected a dict of networks")
    networks, other, training_set_kwargs = {}, {}, None
    for key, value in data.items():
        if isinstance(value, PersistentRecord):
            networks[str(key)] = network_record(str(key), value, source)
        elif key == "training_set_kwargs" and isinstance(value, Mapping):
            training_set_kwargs = to_jsonable(value)
        elif value is not None:
            other[str(key)] = to_jsonable(value)
    if not networks:
        raise OfficialImportError(f"{source}: no persistent network records found (keys: {sorted(map(str, data))})")
    return OfficialPickle(path, file_sha256(path), path.stat().st_size, networks, training_set_kwargs, other)
