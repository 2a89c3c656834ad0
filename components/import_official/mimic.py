"""Write network pickles in the official StyleGAN-style format (for synthetic assets and tests).

The bytes follow what ``pickle.dump(snapshot_data)`` of official persistent modules produces (official
torch_utils/persistence.py + training/training_loop_*.py): each top-level network is
``STACK_GLOBAL torch_utils.persistence._reconstruct_persistent_obj`` applied to ``{type, version, module_src,
class_name, state}``; ``state`` is a module ``__dict__`` whose children are ``torch.nn.Module`` objects
(``NEWOBJ`` + ``BUILD``); tensors use torch's own reduction (``_rebuild_parameter`` / ``_rebuild_tensor_v2`` /
``torch.storage._load_from_bytes``). The persistence hook is written by name, so torch_utils need not be importable.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from components.import_official.errors import OfficialImportError
from components.import_official.safe_pickle import PERSISTENCE_VERSION
from components.io.atomic import atomic_open

PICKLE_PROTOCOL = 4  # pickle.DEFAULT_PROTOCOL of the Python versions the official snapshots were written with


class OfficialRecord(NamedTuple):
    """What an official pickle stores for one network: its persistent class, source text, tensors and kwargs.

    ``class_name`` may be qualified (``training.generator.triplane.PartTriPlaneGeneratorDeform``); the pickle stores
    the bare name, as persistence does. Without ``module_src`` a stand-in source is written.
    """

    class_name: str
    module_src: str | None = None
    state_dict: Mapping[str, torch.Tensor] | None = None
    init_kwargs: Mapping[str, Any] | None = None
    init_args: tuple = ()
    attributes: Mapping[str, Any] | None = None  # plain module attributes, e.g. rendering_kwargs
    buffer_keys: Collection[str] | None = None  # keys stored as buffers; default: the non-floating tensors


def stand_in_module_src(class_name: str, note: str = "synthetic checkpoint written by p4d") -> str:
    """Module source naming ``class_name`` as an empty persistent ``nn.Module``.

    The official loader execs it and gets a module with the right state dict but no forward; our reader never runs it.
    """
    module, _, short = class_name.rpartition(".")
    return (
        f"# {note}: a stand-in for {module or 'the official module'}, not the official network code\n"
        "import torch\n"
        "from torch_utils import persistence\n\n\n"
        "@persistence.persistent_class\n"
        f"class {short}(torch.nn.Module):\n"
        "    pass\n"
    )


class _GlobalRef:
    """A module-level name to write as ``STACK_GLOBAL`` without importing its module."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle's save_reduce requires a callable; this one is only named
        raise TypeError(f"{self.module}.{self.name} is a name written into a pickle, not a function")


_PERSISTENCE_HOOK = _GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj")


class _Persistent:
    def __init__(self, meta: dict):
        self.meta = meta


class _Child:
    def __init__(self, state: dict):
        self.state = state


def _fresh_module_dict() -> dict:
    """The ``__dict__`` of a new ``nn.Module`` of the running torch, in eval mode (as snapshots are saved)."""
    state = copy.deepcopy(torch.nn.Module().__dict__)
    state["training"] = False
    return state


def _module_tree(record: OfficialRecord, what: str) -> dict:
    """Nest the flat state dict into module ``__dict__``s; children become :class:`_Child` nodes."""
    buffers = set(record.buffer_keys) if record.buffer_keys is not None else {
        k for k, v in record.state_dict.items() if not (v.is_floating_point() or v.is_complex())
    }
    root = _fresh_module_dict()
    for key, tensor in record.state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise OfficialImportError(f"{what}: {key!r} is a {type(tensor).__name__}, expected a tensor")
        *path, leaf = key.split(".")
        node = root
        for i, part in enumerate(path):
            child = node["_modules"].get(part)
            if child is None:
                if part in node["_parameters"] or part in node["_buffers"]:
                    raise OfficialImportError(f"{what}: {'.'.join(path[: i + 1])!r} is both a tensor and a module")
                child = node["_modules"][part] = _Child(_fresh_module_dict())
            node = child.state
        if leaf in node["_modules"]:
            raise OfficialImportError(f"{what}: {key!r} is both a tensor and a module")
        value = tensor.detach().cpu()
        if key in buffers:
            node["_buffers"][leaf] = value
        else:
            node["_parameters"][leaf] = torch.nn.Parameter(value, requires_grad=False)
    return root


def _persistent_meta(record: OfficialRecord, what: str) -> dict:
    if record.state_dict is None:
        raise OfficialImportError(f"{what}: the record has no state_dict")
    state = _module_tree(record, what)
    state.update(copy.deepcopy(dict(record.attributes or {})))
    # persistence.persistent_class sets these last in __init__, so they close the __dict__.
    state["_init_args"] = tuple(record.init_args)
    state["_init_kwargs"] = copy.deepcopy(dict(record.init_kwargs or {}))
    return dict(
        type="class",
        version=PERSISTENCE_VERSION,
        module_src=record.module_src if record.module_src is not None else stand_in_module_src(record.class_name),
        class_name=record.class_name.rpartition(".")[2],
        state=state,
    )


class _MimicPickler(pickle._Pickler):  # the Python pickler lets these opcode sequences be written by hand
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_ref(self, obj: _GlobalRef) -> None:
        # What the pickler writes for a module-level function at protocol 4.
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    def _save_persistent(self, obj: _Persistent) -> None:
        # persistence.persistent_class.__reduce__ -> (_reconstruct_persistent_obj, (meta,), None)
        self.save(_PERSISTENCE_HOOK)
        self.save((obj.meta,))
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def _save_child(self, obj: _Child) -> None:
        # object.__reduce_ex__(4) of an nn.Module: (copyreg.__newobj__, (cls,), __dict__) -> NEWOBJ + BUILD
        self.save(torch.nn.Module)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[_GlobalRef] = _save_global_ref
    dispatch[_Persistent] = _save_persistent
    dispatch[_Child] = _save_child


def write_mimic_official_pickle(
    path: str | Path,
    records: Mapping[str, OfficialRecord | tuple],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{name: persistent network}`` (plus ``extra`` plain entries, e.g. ``training_set_kwargs``) atomically.

    ``records`` values are :class:`OfficialRecord` or ``(class_name, module_src, state_dict, init_kwargs)`` tuples.
    The official ``legacy.load_network_pkl`` also asserts ``G``, ``D`` and ``G_ema`` are present.
    """
    path = Path(path)
    snapshot: dict[str, Any] = dict(extra or {})
    for name, rec in records.items():
        rec = rec if isinstance(rec, OfficialRecord) else OfficialRecord(*rec)
        snapshot[name] = _Persistent(_persistent_meta(rec, f"{path}:{name}"))
    with atomic_open(path, "wb") as fh:
        _MimicPickler(fh, protocol=PICKLE_PROTOCOL).dump(snapshot)
    return path

