"""Importing official checkpoints: exact tensors, refusal of hostile pickles, named key/shape errors, atomic output."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from components.import_official import (
    KeyMismatchError,
    OfficialRecord,
    OfficialImportError,
    UnsafePickleError,
    import_official,
    import_state_dict,
    load_key_list,
    read_official_pickle,
    read_sidecar,
    stand_in_module_src,
    write_mimic_official_pickle,
)
from components.import_official.safe_pickle import LegacyStorage, SafeUnpickler, _rebuild_tensor_v2, safe_load

# Tiny stand-ins for model/official_keys: same file format, same candidate names.
TINY_LISTS = {
    "genhead": {"backbone.mapping.w_avg": [4], "backbone.fc.weight": [4, 3]},
    "psi3d": {"w_avg": [4], "encoder.conv.weight": [3, 2], "encoder.conv.bias": [3], "deformer.faces": [None, 3]},
    "psi": {"w_avg": [4], "encoder.conv.weight": [3, 2], "encoder.conv.bias": [3], "deformer.faces": [None, 3]},
    "discriminator": {"b4.fc.weight": [2, 3], "b4.fc.bias": [2]},
    "genhead_D": {"b4.fc.weight": [2, 3], "b4.fc.bias": [2]},
    "pdfgc_motion_model": {"model.conv1.weight": [2, 3]},
}


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    for name, keys in TINY_LISTS.items():
        dtypes = {k: ("int64" if k == "deformer.faces" else "float32") for k in keys}
        extra = {"extra_keys_allowed": True} if name == "pdfgc_motion_model" else {}
        (d / f"{name}.json").write_text(json.dumps({"source": "test", "keys": keys, "dtypes": dtypes, **extra}))
    return d


def psi_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w_avg": torch.randn(4, generator=g),
        "encoder.conv.weight": torch.randn(3, 2, generator=g),
        "encoder.conv.bias": torch.randn(3, generator=g),
        "deformer.faces": torch.randint(0, 100, (7, 3), generator=g),
    }


def d_state() -> dict[str, torch.Tensor]:
    return {"b4.fc.weight": torch.randn(2, 3), "b4.fc.bias": torch.randn(2)}


def write_psi_pickle(path: Path, state: dict | None = None, static: bool | None = False, **attrs) -> Path:
    rec = OfficialRecord(
        "TriPlaneReconstructorNeutralize",
        stand_in_module_src("TriPlaneReconstructorNeutralize"),
        state or psi_state(),
        {"mot_dims": 548, "sr_kwargs": {"use_ws_ones": False}},
        attributes={"neural_rendering_resolution": 128, "rendering_kwargs": {"box_warp": 1.3}, **attrs},
        buffer_keys={"w_avg", "deformer.faces"},
    )
    d = OfficialRecord("DualDiscriminatorDeform", stand_in_module_src("DualDiscriminatorDeform"), d_state(), {"c_dim": 25})
    extra = {"training_set_kwargs": {"class_name": "online", "static": static}} if static is not None else {}
    return write_mimic_official_pickle(path, {"G": rec, "D": d, "G_ema": rec}, extra={**extra, "augment_pipe": None})


# --- the format -------------------------------------------------------------------------------------------


def test_mimic_pickle_reads_back_exact_tensors_in_state_dict_order(tmp_path):
    state = {
        "scale": torch.tensor(2.5, dtype=torch.float64),  # 0-dim, root level
        "count": torch.tensor(7),  # int64 buffer
        "a.weight": torch.randn(3, 2),
        "a.half": torch.randn(5).half(),
        "a.bf": torch.randn(2, 2).bfloat16(),
        "b.0.mask": torch.rand(6) > 0.5,
        "b.0.view": torch.arange(12.0).reshape(3, 4)[:, 1:3],  # non-contiguous view of a larger storage
        "b.1.empty": torch.zeros(0, 3),
    }
    rec = OfficialRecord("Net", stand_in_module_src("Net"), state, {"k": {"nested": [1, 2]}}, init_args=(3,),
                      attributes={"rendering_kwargs": {"box_warp": 1.3}})
    extra = {"training_set_kwargs": {"res": 512}}
    path = write_mimic_official_pickle(tmp_path / "net.pkl", {"G_ema": rec}, extra=extra)

    info = read_official_pickle(path)
    net = info.networks["G_ema"]
    # torch's state_dict order: root tensors first (parameters, then buffers), then children in order.
    assert list(net.state_dict) == ["scale", "count", "a.weight", "a.half", "a.bf", "b.0.view", "b.0.mask", "b.1.empty"]
    for key, ref in state.items():
        got = net.state_dict[key]
        assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref), key
    assert net.class_name == "Net"
    assert net.init_args == [3] and net.init_kwargs == {"k": {"nested": [1, 2]}}
    assert net.attributes["rendering_kwargs"] == {"box_warp": 1.3}
    assert info.training_set_kwargs == {"res": 512}
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_mimic_pickle_names_only_the_globals_official_snapshots_use(tmp_path):
    path = write_psi_pickle(tmp_path / "p.pkl")
    seen: set[str] = set()

    class Recording(SafeUnpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    with open(path, "rb") as fh:
        Recording(fh, str(path)).load()
    assert seen == {
        "torch_utils.persistence._reconstruct_persistent_obj",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_tensor_v2",
        "torch.storage._load_from_bytes",
        "collections.OrderedDict",
        "torch.nn.modules.module.Module",
    }


def test_module_src_is_kept_as_text_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').write('ran')\nclass Foo:\n    pass\n"
    path = write_mimic_official_pickle(tmp_path / "p.pkl", {"G_ema": OfficialRecord("Foo", src, psi_state(), {})})
    info = read_official_pickle(path)
    assert not marker.exists()
    assert info.networks["G_ema"].module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()


# --- hostile pickles ----------------------------------------------------------------------------------------


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    ("make", "global_name"),
    [
        (lambda m: _Reduce(os.system, (f"touch {m}",)), f"{os.system.__module__}.system"),
        (lambda m: _Reduce(eval, (f"open({str(m)!r}, 'w')",)), "builtins.eval"),
        (lambda m: _Reduce(subprocess.Popen, (["touch", str(m)],)), "subprocess.Popen"),
        (lambda m: _Reduce(getattr, ("text", "upper")), "builtins.getattr"),
    ],
)
def test_hostile_globals_are_refused_by_name_and_nothing_runs(tmp_path, make, global_name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # Hidden inside a network's state, where a real module's __dict__ would be.
    evil_state = {"_modules": {}, "_parameters": {}, "_buffers": {}, "payload": make(marker)}
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "X", "state": evil_state}
    from components.import_official.mimic import _PERSISTENCE_HOOK, _MimicPickler

    class Evil:
        def __reduce__(self):
            return _PERSISTENCE_HOOK, (meta,)

    with open(path, "wb") as fh:
        _MimicPickler(fh, protocol=4).dump({"G_ema": Evil()})
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")) as err:
        import_official(path, tmp_path / "out")
    assert "nothing from the file was run" in str(err.value)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl"]


def test_plain_reduce_exploit_at_top_level_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",))))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        read_official_pickle(path)
    assert not marker.exists()


def test_tensor_view_past_its_storage_is_refused():
    storage = LegacyStorage(torch.float32, 4)
    storage.data = torch.zeros(4)
    assert _rebuild_tensor_v2(storage, 1, (3,), (1,)).shape == (3,)
    with pytest.raises(OfficialImportError, match="reaches past its storage of 4 elements"):
        _rebuild_tensor_v2(storage, 0, (3,), (2,))


def test_truncated_pickle_is_a_clear_error_and_writes_nothing(tmp_path, keys_dir):
    full = write_psi_pickle(tmp_path / "full.pkl").read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(OfficialImportError, match=r"cut\.pkl: .*(ends early|truncated|not a readable)"):
        import_official(cut, tmp_path / "out", keys_dir=keys_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pkl", "full.pkl", "keys"]


# --- key / shape checking and outputs ---------------------------------------------------------------------


def test_import_writes_exact_safetensors_and_sidecar(tmp_path, keys_dir):
    state = psi_state(1)
    pkl = write_psi_pickle(tmp_path / "psi.pkl", state=state, static=False)
    [res] = import_official(pkl, tmp_path / "psi_weights", keys_dir=keys_dir)

    assert (res.kind, res.key_list, res.n_tensors) == ("psi", "psi", 4)
    loaded = safetensors.torch.load_file(res.tensors_path)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())
    side = read_sidecar(res.sidecar_path)
    assert side["kind"] == "psi" and side["network"] == "G_ema"
    assert side["class_name"] == "TriPlaneReconstructorNeutralize"
    assert side["init_kwargs"] == {"mot_dims": 548, "sr_kwargs": {"use_ws_ones": False}}
    assert side["rendering_kwargs"] == {"box_warp": 1.3} and side["neural_rendering_resolution"] == 128
    assert side["source"]["sha256"] == hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert side["data_dependent_shapes"] == {"deformer.faces": [7, 3]}
    assert side["tool"]["name"] == "p4d import-official" and side["tool"]["version"]


@pytest.mark.parametrize(
    ("static", "attrs", "kind"), [(True, {}, "psi3d"), (None, {"rendering_kwargs": {"reg_type": "G_fix_img"}}, "psi")]
)
def test_psi3d_and_psi_share_keys_and_are_told_apart_by_the_training_run(tmp_path, keys_dir, static, attrs, kind):
    pkl = write_psi_pickle(tmp_path / "p.pkl", static=static, **attrs)
    [res] = import_official(pkl, tmp_path / "w", keys_dir=keys_dir)
    assert res.kind == kind


def test_undecidable_psi_stage_asks_for_kind(tmp_path, keys_dir):
    pkl = write_psi_pickle(tmp_path / "p.pkl", static=None)
    with pytest.raises(OfficialImportError, match="pass kind="):
        import_official(pkl, tmp_path / "w", keys_dir=keys_dir)
    [res] = import_official(pkl, tmp_path / "w", kind="psi3d", keys_dir=keys_dir)
    assert res.kind == "psi3d"


def test_several_networks_get_one_file_pair_each(tmp_path, keys_dir):
    pkl = write_psi_pickle(tmp_path / "p.pkl", static=True)
    results = import_official(pkl, tmp_path / "w", which=("G_ema", "D"), keys_dir=keys_dir)
    assert [(r.name, r.kind) for r in results] == [("G_ema", "psi3d"), ("D", "discriminator")]
    assert sorted(p.name for p in tmp_path.glob("w.*")) == ["w.D.json", "w.D.safetensors", "w.G_ema.json",
                                                            "w.G_ema.safetensors"]


def test_wrong_shape_is_named_with_both_shapes_and_nothing_is_written(tmp_path, keys_dir):
    state = psi_state()
    state["encoder.conv.weight"] = torch.randn(3, 5)
    pkl = write_psi_pickle(tmp_path / "p.pkl", state=state, static=True)
    with pytest.raises(KeyMismatchError, match=r"'encoder\.conv\.weight' is \(3, 5\), expected \(3, 2\)"):
        import_official(pkl, tmp_path / "w", keys_dir=keys_dir)
    assert not list(tmp_path.glob("w*")) and not list(tmp_path.glob(".w*"))


def test_missing_key_is_named_with_expected_shape(tmp_path, keys_dir):
    state = psi_state()
    del state["encoder.conv.bias"]
    pkl = write_psi_pickle(tmp_path / "p.pkl", state=state, static=True)
    with pytest.raises(KeyMismatchError, match=r"missing: 'encoder\.conv\.bias' expected \(3\)"):
        import_official(pkl, tmp_path / "w", keys_dir=keys_dir)
    assert not list(tmp_path.glob("w*"))


def test_unknown_network_entry_is_named(tmp_path, keys_dir):
    pkl = write_psi_pickle(tmp_path / "p.pkl")
    with pytest.raises(OfficialImportError, match=r"no network 'G_fix'.*\['D', 'G', 'G_ema'\]"):
        import_official(pkl, tmp_path / "w", which=("G_fix",), keys_dir=keys_dir)


# --- .pth state dicts -----------------------------------------------------------------------------------------


def test_lpips_lin_weights_match_the_official_list(tmp_path):
    # The official LPIPS vgg.pth holds only the five 1x1 "lin" convolutions.
    lin = load_key_list("lpips_vgg").subsets["lpips_lin_vgg_pth"]
    state = {k: torch.rand(*shape) for k, shape in lin.items()}
    torch.save(state, tmp_path / "vgg.pth")
    res = import_state_dict(tmp_path / "vgg.pth", tmp_path / "lpips", "lpips")
    assert res.key_list == "lpips_vgg:lpips_lin_vgg_pth" and res.n_tensors == 5
    loaded = safetensors.torch.load_file(res.tensors_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_pdfgc_extra_keys_are_dropped_and_listed(tmp_path, keys_dir):
    torch.save({"model.conv1.weight": torch.ones(2, 3), "classifier.weight": torch.ones(4)}, tmp_path / "m.pth")
    res = import_state_dict(tmp_path / "m.pth", tmp_path / "pdfgc", "pdfgc", keys_dir=keys_dir)
    assert set(safetensors.torch.load_file(res.tensors_path)) == {"model.conv1.weight"}
    assert read_sidecar(res.sidecar_path)["dropped_keys"] == ["classifier.weight"]


def test_pth_with_code_is_refused_by_weights_only_load(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(1), "x": _Reduce(os.system, (f"touch {marker}",))}, tmp_path / "evil.pth")
    with pytest.raises(OfficialImportError, match="not a plain PyTorch state dict"):
        import_state_dict(tmp_path / "evil.pth", tmp_path / "out", "arcface")
    assert not marker.exists() and not list(tmp_path.glob("out*"))


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_reports_one_line_and_exit_2(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "bad.pkl").write_bytes(b"\x80\x04not a pickle")
    assert main(["import-official", "--pkl", str(tmp_path / "bad.pkl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.pkl" in err
    assert main(["import-official", "--pth", str(tmp_path / "bad.pkl"), "--out", str(tmp_path / "o")]) == 2
    assert "--kind" in capsys.readouterr().err


def test_cli_imports_a_state_dict(tmp_path, capsys):
    from pipelines.cli import main

    lin = load_key_list("lpips_vgg").subsets["lpips_lin_vgg_pth"]
    torch.save({k: torch.rand(*s) for k, s in lin.items()}, tmp_path / "vgg.pth")
    rc = main(["import-official", "--pth", str(tmp_path / "vgg.pth"), "--kind", "lpips", "--out", str(tmp_path / "l")])
    assert rc == 0 and (tmp_path / "l.safetensors").exists() and (tmp_path / "l.json").exists()
    assert "5 tensors" in capsys.readouterr().out


# --- the checked-in key lists ---------------------------------------------------------------------------------


def test_official_key_lists_are_consistent():
    psi3d, psi, genhead = load_key_list("psi3d"), load_key_list("psi"), load_key_list("genhead")
    assert psi3d.keys == psi.keys and len(psi.keys) == 426 and len(genhead.keys) == 328
    assert genhead.keys["backbone.mapping.embed.weight"] == (512, 325)  # c(25) + FLAME shape(300)
    assert psi.keys["encoder_canonical.maps.0.weight"] == (512, 548)  # PD-FGC motion 548-d
    assert psi.keys["deformer.flame_deform.masked_faces"] == (None, 3)  # depends on the user's FLAME masks
    kwargs = json.loads((Path(load_key_list.__globals__["OFFICIAL_KEYS_DIR"]) / "kwargs.json").read_text())
    assert {"genhead", "psi3d", "psi", "discriminator"} <= set(kwargs)
    assert kwargs["psi"]["init_kwargs"]["mot_dims"] == 548
    assert kwargs["genhead"]["rendering_kwargs"]["box_warp"] == 1.3


def test_cyclic_module_graph_is_refused(tmp_path):
    from components.import_official.mimic import _Child, _fresh_module_dict, _MimicPickler, _Persistent

    state = _fresh_module_dict()
    state["_modules"]["loop"] = child = _Child(_fresh_module_dict())
    child.state["_modules"]["back"] = child  # a module that contains itself
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "X", "state": state}
    with open(tmp_path / "loop.pkl", "wb") as fh:
        _MimicPickler(fh, protocol=4).dump({"G_ema": _Persistent(meta)})
    with pytest.raises(OfficialImportError, match="module tree too deep or too large"):
        read_official_pickle(tmp_path / "loop.pkl")


# --- any weights file -> checked state dict --------------------------------------------------------------------


def test_load_state_dict_file_reads_every_weights_format(tmp_path, keys_dir):
    from components.import_official import load_state_dict_file

    state = psi_state(2)
    expected = {k: tuple(v.shape) for k, v in state.items()}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    write_psi_pickle(tmp_path / "net.pkl", state=state, static=True)
    [res] = import_official(tmp_path / "net.pkl", tmp_path / "imported", keys_dir=keys_dir)
    for name in ("zip.pth", "legacy.pth", "net.pkl", res.tensors_path.name):
        got = load_state_dict_file(tmp_path / name, expected=expected)
        assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items()), name
    with pytest.raises(KeyMismatchError, match=r"'w_avg' is \(4\), expected \(5\)"):
        load_state_dict_file(tmp_path / "zip.pth", expected={**expected, "w_avg": (5,)})


def test_qualified_class_name_is_stored_bare_with_a_stand_in_source(tmp_path):
    rec = OfficialRecord(
        class_name="training.generator.triplane.PartTriPlaneGeneratorDeform",
        init_kwargs={"p4d_config": {"tiny": True}},
        state_dict={"w": torch.ones(2)},
    )
    info = read_official_pickle(write_mimic_official_pickle(tmp_path / "g.pkl", {"G_ema": rec}))
    assert info.networks["G_ema"].class_name == "PartTriPlaneGeneratorDeform"
    assert info.networks["G_ema"].init_kwargs == {"p4d_config": {"tiny": True}}


# --- the restricted unpickler core shared with the FLAME loader ---------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_flame_loader_and_importer_refuse_a_forbidden_global_the_same_way(tmp_path, protocol):
    from model.flame import load_flame_pickle
    from model.restricted_pickle import UnsafePickleError as RefusedGlobal

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"v_template": np.zeros((2, 3)), "x": _Reduce(os.system, (f"touch {marker}",))}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    name = f"{os.system.__module__}.system"
    for read in (load_flame_pickle, read_official_pickle):
        with pytest.raises(RefusedGlobal) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: refusing to load global '{name}': ") and message.endswith(
            "nothing from the file was run"), read.__name__
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_importer_reads_numpy_arrays_scalars_and_sets_through_the_shared_stand_ins(protocol):
    import io

    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "f": np.asfortranarray(np.eye(3)),
             "s": np.float32(2.5), "ids": {1, 2}}
    got = SafeUnpickler(io.BytesIO(pickle.dumps(value, protocol=protocol)), "mem").load()
    assert got["a"].dtype == np.float32 and np.array_equal(got["a"], value["a"])
    assert np.array_equal(got["f"], np.eye(3)) and got["s"] == np.float32(2.5) and got["ids"] == {1, 2}
    crafted = b"\x80\x02cnumpy\nndarray\nK\x03\x85R."  # ndarray(3) called directly: only _reconstruct may build one
    with pytest.raises(UnsafePickleError, match="only _reconstruct may build arrays"):
        safe_load(io.BytesIO(crafted), "crafted.pkl")
