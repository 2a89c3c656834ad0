"""Read any weights file a user may hand us into a checked state dict, without running code from it.

Formats, told apart by their first bytes: torch zip checkpoints (``PK``), torch's legacy pickle format (a pickled
magic number first; e.g. LPIPS ``vgg.pth``), official StyleGAN-style network pickles, and safetensors.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from components.import_official.errors import OfficialImportError
from components.import_official.key_lists import KeyList, check_state_dict
from components.import_official.network_pickle import network_record
from components.import_official.safe_pickle import LEGACY_MAGIC, PersistentRecord, safe_load


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a plain state dict (optionally under a 'state_dict' entry)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OfficialImportError(f"{path}: not a plain PyTorch state dict ({first})") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise OfficialImportError(f"{path}: holds a {type(data).__name__}, expected a state dict")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OfficialImportError(f"{path}: entries {bad[:4]} are not tensors; expected a state dict")
    return {str(k): v for k, v in data.items()}


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _read_network_pickle(path: Path, network: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as fh:
        data = safe_load(fh, str(path))
    if data == LEGACY_MAGIC:  # torch's legacy format starts with its magic number: a plain state dict
        return read_torch_state_dict(path)
    record = data.get(network) if isinstance(data, Mapping) else None
    if not isinstance(record, PersistentRecord):
        found = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise OfficialImportError(f"{path}: no network {network!r} in the pickle (found: {found})")
    return network_record(network, record, str(path)).state_dict


def load_state_dict_file(
    path: str | Path,
    expected: Mapping[str, tuple] | KeyList | None = None,
    network: str = "G_ema",
) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (torch checkpoint, official network pickle's ``network``, or safetensors).

    With ``expected`` (key -> shape, ``None`` dims free, or a :class:`KeyList`) every key and shape is checked and a
    mismatch raises :class:`~components.import_official.errors.KeyMismatchError` naming the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        state = read_torch_state_dict(path)
    elif _is_safetensors(head):
        try:
            state = safetensors.torch.load_file(str(path))
        except (safetensors.SafetensorError, json.JSONDecodeError, OSError) as err:
            raise OfficialImportError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        state = _read_network_pickle(path, network)
    if expected is not None:
        if not isinstance(expected, KeyList):
            expected = KeyList("expected", {k: tuple(v) for k, v in expected.items()})
        check_state_dict(state, expected, str(path))
    return state
