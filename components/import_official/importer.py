"""Import official weights into ``<out>.safetensors`` + ``<out>.json``, checking every key and shape first."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from components.import_official.errors import KeyMismatchError, OfficialImportError
from components.import_official.key_lists import (
    KeyList,
    check_state_dict,
    load_key_list,
    matching_key_lists,
    shape_matches,
)
from components.import_official.network_pickle import (
    NetworkRecord,
    OfficialPickle,
    file_sha256,
    read_official_pickle,
    to_jsonable,
)
from components.import_official.weights_file import read_torch_state_dict
from components.io.atomic import atomic_path

SIDECAR_FORMAT = "p4d-official-import"
SIDECAR_FORMAT_VERSION = 1

# Key lists a network of each pickle entry may match; the model kind each list means.
CANDIDATES = {
    "G_ema": ("genhead", "psi3d", "psi"),
    "G": ("genhead", "psi3d", "psi"),
    "D": ("discriminator", "genhead_D"),
}
KIND_OF_LIST = {"genhead": "genhead", "psi3d": "psi3d", "psi": "psi", "discriminator": "discriminator",
                "genhead_D": "discriminator"}
PICKLE_KINDS = ("genhead", "psi3d", "psi", "discriminator")
# --pth kinds -> key list (model/official_keys) of the official state dict.
PTH_KEY_LISTS = {"pdfgc": "pdfgc_motion_model", "arcface": "arcface_r18", "lpips": "lpips_vgg"}


@dataclass(frozen=True)
class ImportedWeights:
    name: str
    kind: str
    key_list: str
    tensors_path: Path
    sidecar_path: Path
    n_tensors: int


def tool_version() -> str:
    try:
        return metadata.version("portrait4d-mlops")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _output_base(out_path: str | Path) -> Path:
    out = Path(out_path)
    return out.with_suffix("") if out.suffix in (".safetensors", ".json") else out


def _psi_stage(net: NetworkRecord, pickle_info: OfficialPickle) -> str | None:
    """Ψ_3d and Ψ share one class and key list; the training run that wrote the pickle tells them apart."""
    static = (pickle_info.training_set_kwargs or {}).get("static")
    if static is not None:
        return "psi3d" if static else "psi"  # train_recon_v1/v2.py: training_set_kwargs.static
    reg_type = (net.attributes.get("rendering_kwargs") or {}).get("reg_type")
    if reg_type is not None:
        return "psi" if reg_type == "G_fix_img" else "psi3d"  # only the v2 (Ψ) config regularises against Ψ_3d
    return None


def _choose(net: NetworkRecord, pickle_info: OfficialPickle, candidates: list[KeyList], kind: str | None,
            what: str) -> KeyList:
    if kind is not None:
        forced = [c for c in candidates if KIND_OF_LIST.get(c.name, c.name) == kind]
        if not forced:
            raise KeyMismatchError(f"{what} has the keys of {[c.name for c in candidates]}, not of --kind {kind}")
        return forced[0]
    kinds = {KIND_OF_LIST.get(c.name, c.name) for c in candidates}
    if len(kinds) == 1:
        return candidates[0]
    if kinds == {"psi3d", "psi"}:
        stage = _psi_stage(net, pickle_info)
        if stage is not None:
            return next(c for c in candidates if c.name == stage)
    raise OfficialImportError(
        f"{what} could be any of {sorted(kinds)} (same architecture); pass kind= / --kind to say which"
    )


def _standalone(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Views over shared pickled storages -> own contiguous memory, as safetensors requires.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _data_dependent(state: Mapping[str, torch.Tensor], expected: KeyList) -> dict[str, list[int]]:
    return {k: list(state[k].shape) for k, shape in expected.keys.items() if None in shape and k in state}


def _write_pairs(pairs: Sequence[tuple[Path, dict[str, torch.Tensor], dict]]) -> None:
    """Write every ``(base, tensors, sidecar)``; nothing becomes visible unless all were written."""
    with contextlib.ExitStack() as stack:
        staged = []
        for base, tensors, sidecar in pairs:
            json_tmp = stack.enter_context(atomic_path(base.with_name(base.name + ".json")))
            st_tmp = stack.enter_context(atomic_path(base.with_name(base.name + ".safetensors")))
            staged.append((json_tmp, st_tmp, tensors, sidecar))
        for json_tmp, st_tmp, tensors, sidecar in staged:
            safetensors.torch.save_file(tensors, str(st_tmp), metadata={"format": "pt", "kind": sidecar["kind"]})
            json_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=False) + "\n")
    # ExitStack renames in reverse order of entry: each .safetensors just before its .json sidecar.


def import_official(
    pkl_path: str | Path,
    out_path: str | Path,
    which: Sequence[str] = ("G_ema",),
    *,
    kind: str | None = None,
    keys_dir: str | Path | None = None,
) -> list[ImportedWeights]:
    """Import networks of an official network pickle; one ``which`` -> ``<out>.*``, several -> ``<out>.<name>.*``.

    The model kind is found by comparing keys with ``model/official_keys`` (or ``keys_dir``); every key, shape and
    dtype family is checked before anything is written. ``kind`` forces genhead|psi3d|psi|discriminator.
    """
    if kind is not None and kind not in PICKLE_KINDS:
        raise OfficialImportError(f"unknown kind {kind!r} for a network pickle; expected one of {PICKLE_KINDS}")
    if not which:
        raise OfficialImportError("nothing to import: `which` is empty")
    info = read_official_pickle(pkl_path)
    base = _output_base(out_path)
    pairs = []
    for name in which:
        if name not in info.networks:
            raise OfficialImportError(f"{info.path}: no network {name!r} (found: {sorted(info.networks)})")
        if name not in CANDIDATES:
            raise OfficialImportError(
                f"{info.path}: {name!r} is not an importable network; use one of {sorted(CANDIDATES)}"
            )
        net, what = info.networks[name], f"{info.path}:{name}"
        if kind == "discriminator" and name != "D":
            raise OfficialImportError(f"{what} is a generator entry; kind 'discriminator' applies to D only")
        candidates = [load_key_list(c, keys_dir) for c in CANDIDATES[name]]
        matches = matching_key_lists(net.state_dict, candidates, what)
        expected = _choose(net, info, matches, None if name == "D" else kind, what)
        check_state_dict(net.state_dict, expected, what)
        model_kind = KIND_OF_LIST.get(expected.name, expected.name)
        out = base if len(which) == 1 else base.with_name(f"{base.name}.{name}")
        sidecar = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_FORMAT_VERSION,
            "kind": model_kind,
            "key_list": expected.name,
            "network": name,
            "class_name": net.class_name,
            "init_args": net.init_args,
            "init_kwargs": net.init_kwargs,
            "rendering_kwargs": net.attributes.get("rendering_kwargs"),
            "neural_rendering_resolution": net.attributes.get("neural_rendering_resolution"),
            "attributes": net.attributes,
            "data_dependent_shapes": _data_dependent(net.state_dict, expected),
            "source": {
                "path": str(Path(info.path).resolve()),
                "sha256": info.sha256,
                "bytes": info.size_bytes,
                "module_src_sha256": net.module_src_sha256,
                "training_set_kwargs": info.training_set_kwargs,
            },
            "tool": {"name": "p4d import-official", "version": tool_version()},
            "tensors": {"file": out.name + ".safetensors", "count": len(net.state_dict)},
        }
        pairs.append((out, net.state_dict, sidecar))
    _write_pairs([(out, _standalone(state), sidecar) for out, state, sidecar in pairs])
    return [
        ImportedWeights(s["network"], s["kind"], s["key_list"], o.with_name(o.name + ".safetensors"),
                        o.with_name(o.name + ".json"), s["tensors"]["count"])
        for o, _, s in pairs
    ]


def _pth_expected(state: Mapping[str, torch.Tensor], full: KeyList, what: str) -> KeyList:
    """The full list, or one of its subsets (e.g. LPIPS vgg.pth = lin layers only) that the file holds."""
    options = [full] + [full.subset(s) for s in full.subsets]
    names = set(state)

    def fits(option: KeyList) -> bool:
        return set(option.keys) <= names and all(
            shape_matches(tuple(state[k].shape), s) for k, s in option.keys.items()
        )

    exact = [o for o in options if set(o.keys) == names and fits(o)]
    loose = [o for o in options if o.extra_keys_allowed and fits(o)]
    if exact or loose:
        return (exact or loose)[0]
    return matching_key_lists(state, options, what)[0]  # raises naming the closest list's differences


def import_state_dict(
    pth_path: str | Path, out_path: str | Path, kind: str, *, keys_dir: str | Path | None = None
) -> ImportedWeights:
    """Import an official ``.pth`` (PD-FGC motion_model.pth, ArcFace backbone.pth, LPIPS) after checking its keys."""
    if kind not in PTH_KEY_LISTS:
        raise OfficialImportError(f"unknown state-dict kind {kind!r}; expected one of {sorted(PTH_KEY_LISTS)}")
    state = read_torch_state_dict(pth_path)
    what = f"{pth_path} ({kind})"
    expected = _pth_expected(state, load_key_list(PTH_KEY_LISTS[kind], keys_dir), what)
    check_state_dict(state, expected, what)
    # Keys beyond the list (allowed for PD-FGC, loaded with strict=False officially) are dropped, and named.
    dropped = [k for k in state if k not in expected.keys]
    kept = {k: state[k] for k in expected.keys}
    base = _output_base(out_path)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "kind": kind,
        "key_list": expected.name,
        "dropped_keys": dropped,
        "source": {"path": str(Path(pth_path).resolve()), "sha256": file_sha256(Path(pth_path)),
                   "bytes": Path(pth_path).stat().st_size},
        "tool": {"name": "p4d import-official", "version": tool_version()},
        "tensors": {"file": base.name + ".safetensors", "count": len(kept)},
    }
    _write_pairs([(base, _standalone(kept), to_jsonable(sidecar))])
    return ImportedWeights(kind, kind, expected.name, base.with_name(base.name + ".safetensors"),
                           base.with_name(base.name + ".json"), len(kept))


def read_sidecar(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != SIDECAR_FORMAT:
        raise OfficialImportError(f"{path}: not a p4d import sidecar")
    return data
