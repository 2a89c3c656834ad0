"""Read official StyleGAN-style network pickles as data: no code from the file ever runs.

Official snapshots are ``pickle.dump({'G': G, 'D': D, 'G_ema': G_ema, 'augment_pipe': ..., 'training_set_kwargs':
...})`` (official training/training_loop_*.py). Every ``@persistence.persistent_class`` module pickles itself as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version: 6, module_src:
<source text of its .py file>, class_name, state: <the module's __dict__>}`` (official torch_utils/persistence.py);
the official loader ``exec``s ``module_src``. Here that hook returns a :class:`PersistentRecord` (plain data), other
module classes become inert :class:`ObjectRecord` stand-ins, and tensors are rebuilt from their raw bytes. The
unpickler is the shared restricted core (``model/restricted_pickle.py``, which also reads numpy arrays and sets):
any global outside this allow-list is refused by name before anything is called.
"""

from __future__ import annotations

import builtins
import collections
import io
import pickle
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch

from components.import_official.errors import OfficialImportError, UnsafePickleError
from model import restricted_pickle
from model.restricted_pickle import RestrictedUnpickler, container_globals, numpy_globals

# Official persistence format version (torch_utils/persistence.py `_version`).
PERSISTENCE_VERSION = 6

# Classes whose instances may appear inside a network's state; they become ObjectRecord stand-ins (never imported).
RECORDED_CLASS_PREFIXES = (
    "torch.nn.modules.",  # non-persistent children: Conv2d, Linear, Sequential, ModuleList, LayerNorm, ...
    "training.",  # official networks/renderers/deformers
    "models.",  # official StyleGAN2 / FLAME / mix_transformer / unet / deeplabv3 modules
    "torch_utils.",  # official helpers other than the persistence hook
    "torchvision.models.",  # ResNet BasicBlock inside segmentation_models_pytorch encoders
    "segmentation_models_pytorch.",
    "timm.",  # DropPath
    "pytorch3d.",  # MeshRasterizer + RasterizationSettings (no tensors)
    "_imported_module_",  # classes of modules the official loader created from module_src
)

# dtype of each legacy typed storage class (torch.save legacy format, used inside pickled tensors).
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` would have built, kept as data (``module_src`` is never run)."""

    def __init__(self, class_name: str, module_src: str, version: int, state: dict):
        self.class_name = class_name
        self.module_src = module_src
        self.version = version
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name})"


class ObjectRecord:
    """Inert stand-in for an instance of a class we do not import: keeps its args, state and items as data."""

    qualname: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ObjectRecord:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.dict_items, obj.list_items = {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # arguments were kept by __new__; nothing runs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<{self.qualname} record>"


class EasyDictData(dict):
    """``dnnlib.EasyDict`` read as a plain dict subclass (the official one only adds attribute access)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


class LegacyStorage:
    """A typed storage read from torch's legacy serialization bytes: a flat 1-D tensor of ``dtype``."""

    def __init__(self, dtype: torch.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.data: torch.Tensor | None = None


class _TensorTypeMarker:
    """Stands for ``torch.Tensor`` / ``Parameter`` where ``_rebuild_from_type_v2`` names the tensor class."""

    def __init__(self, qualname: str):
        self.qualname = qualname


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OfficialImportError(f"bad tensor record: {what} is {type(value).__name__}, expected int")
    return int(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Safe version of ``torch._utils._rebuild_tensor_v2``: a bounds-checked strided view of ``storage``."""
    if not isinstance(storage, LegacyStorage) or storage.data is None:
        raise OfficialImportError(f"bad tensor record: storage is {type(storage).__name__}, expected a storage")
    offset = _as_int(storage_offset, "storage offset")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise OfficialImportError(f"bad tensor record: size {size!r} / stride {stride!r}")
    size = [_as_int(s, "size") for s in size]
    stride = [_as_int(s, "stride") for s in stride]
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise OfficialImportError(f"bad tensor record: negative offset/size/stride {offset}, {size}, {stride}")
    if all(s > 0 for s in size):
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise OfficialImportError(
                f"bad tensor record: view {tuple(size)} (stride {tuple(stride)}, offset {offset}) "
                f"reaches past its storage of {storage.numel} elements"
            )
    return storage.data.as_strided(size, stride, offset)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Parameters are kept as plain tensors: only their values matter for a state dict."""
    if not isinstance(data, torch.Tensor):
        raise OfficialImportError(f"bad parameter record: data is {type(data).__name__}, expected a tensor")
    return data


_TENSOR_REBUILDERS = (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise OfficialImportError(f"bad tensor record: _rebuild_from_type_v2 with {func!r}")
    return func(*args)


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj`` that returns the record as data."""
    if not isinstance(meta, dict):
        raise OfficialImportError(f"bad persistent record: meta is {type(meta).__name__}, expected a dict")
    if meta.get("type") != "class":
        raise OfficialImportError(f"bad persistent record: type {meta.get('type')!r}, expected 'class'")
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(module_src, str):
        raise OfficialImportError("bad persistent record: class_name / module_src are not text")
    if not isinstance(state, dict):
        raise OfficialImportError(f"bad persistent record for {class_name}: state is {type(state).__name__}")
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        raise OfficialImportError(
            f"persistent record for {class_name} has format version {version!r}; this reader knows "
            f"version {PERSISTENCE_VERSION} (official torch_utils/persistence.py)"
        )
    return PersistentRecord(class_name, module_src, version, state)


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects), allowed only for our inert stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, (ObjectRecord, EasyDictData))):
        raise UnsafePickleError(f"refusing copyreg._reconstructor for {cls!r}: only recorded classes are allowed")
    obj = cls.__new__(cls)
    if isinstance(obj, EasyDictData) and isinstance(state, dict):
        obj.update(state)
    return obj


def _plain_dict(*_args: Any) -> dict:
    return {}  # defaultdict: the default factory is dropped, the items follow


def _device_name(*args: Any) -> str:
    return str(torch.device(*args))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorTypeMarker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorTypeMarker("torch.nn.parameter.Parameter"),
    ("torch", "Size"): tuple,
    ("torch", "device"): _device_name,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _plain_dict,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("dnnlib.util", "EasyDict"): EasyDictData,
    ("dnnlib", "EasyDict"): EasyDictData,
    **numpy_globals(),  # arrays through the shared stand-ins (ndarray only as _reconstruct's argument)
    **container_globals(),  # set, frozenset, protocol<3 bytes
    # plain containers only; builtins such as eval/exec/getattr/__import__ stay refused
    **{("builtins", n): getattr(builtins, n) for n in ("slice", "complex", "bytearray", "object", "dict", "list",
                                                       "tuple")},
}


def _torch_dtype(name: str) -> torch.dtype | None:
    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


class SafeUnpickler(RestrictedUnpickler):
    """The shared restricted unpickler with this allow-list, plus the name families a table cannot list."""

    allows = "official network pickles only reference tensors, plain containers and the persistence hook"
    error = UnsafePickleError

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file, source, _ALLOWED)
        self._records: dict[str, type] = {}

    def find_extra(self, module: str, name: str) -> Any | None:
        if module == "torch" and _torch_dtype(name) is not None:
            return _torch_dtype(name)  # e.g. FLAME's `self.dtype = torch.float32`
        if module == "torch.storage" and name == "_load_from_bytes":
            return self._load_from_bytes
        if module.startswith(RECORDED_CLASS_PREFIXES) or (module, name) == ("functools", "partial"):
            return self._record_class(f"{module}.{name}")
        return None

    def _record_class(self, qualname: str) -> type:
        if qualname not in self._records:
            short = qualname.rsplit(".", 1)[-1]
            self._records[qualname] = type(short, (ObjectRecord,), {"qualname": qualname})
        return self._records[qualname]

    def _load_from_bytes(self, blob: Any) -> LegacyStorage:
        if not isinstance(blob, (bytes, bytearray)):
            raise OfficialImportError(f"{self.source}: bad storage record ({type(blob).__name__}, expected bytes)")
        return read_legacy_storage(bytes(blob), self.source)


_STORAGE_GLOBALS = {("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()}


class _LegacyStorageUnpickler(RestrictedUnpickler):
    """Reads the small pickles inside one legacy-format storage blob; only storage classes may appear."""

    allows = "only typed storage classes may appear inside a tensor storage"
    error = UnsafePickleError

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, LegacyStorage]):
        super().__init__(file, source, _STORAGE_GLOBALS)
        self.storages = storages

    def persistent_load(self, pid: Any) -> LegacyStorage:
        # ('storage', storage_type, key, location, numel, view_metadata)  (torch/serialization.py _legacy_save)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise OfficialImportError(f"{self.source}: bad storage id {pid!r}")
        _, dtype, key, _location, numel, view = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or view is not None:
            raise OfficialImportError(f"{self.source}: unsupported storage id {pid!r}")
        numel = _as_int(numel, "storage size")
        storage = self.storages.setdefault(key, LegacyStorage(dtype, numel))
        if storage.dtype != dtype or storage.numel != numel:
            raise OfficialImportError(f"{self.source}: storage {key} declared twice with different types")
        return storage


def read_legacy_storage(blob: bytes, source: str) -> LegacyStorage:
    """Parse ``torch.save(storage, f, _use_new_zipfile_serialization=False)`` bytes without torch.load.

    Layout (torch/serialization.py legacy format): pickled magic number, protocol version, sys_info, the storage
    (as a persistent id), the list of storage keys; then per key an int64 element count and the raw bytes.
    """
    f = io.BytesIO(blob)
    storages: dict[str, LegacyStorage] = {}

    def load() -> Any:
        try:
            return _LegacyStorageUnpickler(f, source, storages).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            if isinstance(err, OfficialImportError):
                raise
            raise OfficialImportError(f"{source}: corrupt tensor storage ({err})") from None

    if load() != LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
        raise OfficialImportError(f"{source}: tensor storage is not in torch's legacy serialization format")
    sys_info = load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise OfficialImportError(f"{source}: tensor storage is not little-endian ({sys_info!r})")
    result = load()
    keys = load()
    if not isinstance(result, LegacyStorage) or not isinstance(keys, list):
        raise OfficialImportError(f"{source}: tensor storage blob does not hold one storage")
    for key in keys:
        storage = storages.get(key) if isinstance(key, str) else None
        if storage is None:
            raise OfficialImportError(f"{source}: tensor storage lists unknown key {key!r}")
        header = f.read(8)
        if len(header) != 8 or int.from_bytes(header, "little", signed=True) != storage.numel:
            raise OfficialImportError(f"{source}: tensor storage {key} is truncated or has a wrong size")
        nbytes = storage.numel * torch.empty(0, dtype=storage.dtype).element_size()
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise OfficialImportError(f"{source}: tensor storage {key} is truncated ({len(raw)} of {nbytes} bytes)")
        storage.data = torch.frombuffer(bytearray(raw), dtype=storage.dtype) if nbytes else torch.empty(
            0, dtype=storage.dtype
        )
    if result.data is None:
        raise OfficialImportError(f"{source}: tensor storage has no data")
    return result


def safe_load(file: BinaryIO, source: str) -> Any:
    """Unpickle ``file`` with :class:`SafeUnpickler`; any failure becomes one clear :class:`OfficialImportError`."""
    try:
        return SafeUnpickler(file, source).load()
    except OfficialImportError:
        raise
    except restricted_pickle.UnsafePickleError as err:  # a shared numpy/container stand-in refused its arguments
        raise UnsafePickleError(f"{source}: {err}; nothing from the file was run") from None
    except EOFError:
        raise OfficialImportError(f"{source}: the pickle ends early (truncated or incomplete download)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError, OverflowError, UnicodeDecodeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OfficialImportError(f"{source}: not a readable network pickle ({first})") from None
