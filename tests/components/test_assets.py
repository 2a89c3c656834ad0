"""`p4d assets synth|check|list`: round trip, bad files, atomic bundles."""

import json
import pickle

import pytest

from components.assets.check import AssetError, check_assets
from components.assets.manifest import ASSETS, spec
from components.assets.synth import synthesize_bundle
from pipelines.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return synthesize_bundle(tmp_path_factory.mktemp("assets") / "bundle", profile="tiny", seed=0)


def _copy(bundle, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_synth_then_check_round_trip(bundle, capsys):
    info, results = check_assets(bundle)
    assert info.synthetic and info.profile == "tiny"
    # every asset the bundle writes is ok; the user-only ones (FID Inception weights) are reported missing
    assert {r.spec.name: r.status for r in results} == {
        a.name: "ok" if a.in_synthetic_bundle else "missing" for a in ASSETS
    }
    assert not spec("fid_inception").in_synthetic_bundle
    assert main(["assets", "check", "--dir", str(bundle)]) == 0  # optional assets do not fail the check
    out = capsys.readouterr().out
    written = sum(a.in_synthetic_bundle for a in ASSETS)
    assert "SYNTHETIC" in out and out.count("\nok ") + out.startswith("ok ") == written
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["synthetic"] is True and "never report" in meta["note"]


def test_missing_and_foreign_files_are_named_and_fail(bundle, tmp_path, capsys):
    d = _copy(bundle, tmp_path)
    (d / spec("arcface").path).unlink()
    (d / spec("genhead").path).write_bytes(b"this is not a pickle")
    (d / spec("pdfgc").path).write_bytes((d / spec("pdfgc").path).read_bytes()[:100])  # truncated
    _, results = check_assets(d)
    status = {r.spec.name: r for r in results}
    assert status["arcface"].status == "missing" and "insightface" in status["arcface"].detail
    assert status["genhead"].status == "wrong format"
    assert status["pdfgc"].status == "wrong format"
    assert status["flame_model"].status == "ok"
    assert main(["assets", "check", "--dir", str(d)]) == 1
    out = capsys.readouterr().out
    assert "3 required asset(s) not ok" in out


def test_hostile_flame_pickle_is_refused_without_running(bundle, tmp_path):
    d = _copy(bundle, tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (d / spec("flame_model").path).write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    _, results = check_assets(d)
    flame = next(r for r in results if r.spec.name == "flame_model")
    assert flame.status == "wrong format" and "system" in flame.detail
    assert not marker.exists()


def test_wrong_architecture_names_the_key(bundle, tmp_path):
    import torch

    d = _copy(bundle, tmp_path)
    path = d / spec("lpips").path
    sd = torch.load(path, weights_only=True)
    key = next(iter(sd))
    sd[key] = torch.zeros(1)
    torch.save(sd, path)
    _, results = check_assets(d)
    lp = next(r for r in results if r.spec.name == "lpips")
    assert lp.status == "wrong format" and key in lp.detail


def test_synth_refuses_to_overwrite_real_assets(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "generic_model.pkl").write_bytes(b"precious")
    with pytest.raises(AssetError, match="refusing to overwrite"):
        synthesize_bundle(real)
    assert (real / "generic_model.pkl").read_bytes() == b"precious"


def test_failed_synth_leaves_nothing_half_written(tmp_path, monkeypatch):
    import components.assets.synth as synth

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_networks", boom)
    with pytest.raises(RuntimeError):
        synthesize_bundle(tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_weights(tmp_path):
    a = synthesize_bundle(tmp_path / "a", seed=3)
    b = synthesize_bundle(tmp_path / "b", seed=3)
    for asset in ASSETS:
        if asset.kind in ("flame_model", "mediapipe_embedding", "flame_landmarks"):
            assert (a / asset.path).read_bytes() == (b / asset.path).read_bytes(), asset.name


def test_check_of_absent_dir_says_how_to_make_one(tmp_path, capsys):
    assert main(["assets", "check", "--dir", str(tmp_path / "nope")]) == 2
    assert "p4d assets synth" in capsys.readouterr().err


def test_list_names_every_asset_and_where_to_get_it(capsys):
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for a in ASSETS:
        assert a.path in out
    assert "flame.is.tue.mpg.de" in out


def test_flame_head_reads_official_part_files_and_derives_when_absent(bundle, tmp_path):
    from components.assets.flame import load_flame_head
    from model.deformation import DeformationConfig

    read = load_flame_head(bundle, DeformationConfig.tiny())
    assert read.derived == ()
    d = _copy(bundle, tmp_path)
    (d / spec("flame_proxy_mesh").path).unlink()
    (d / spec("flame_masks").path).unlink()
    derived = load_flame_head(d, DeformationConfig.tiny())
    assert derived.derived == ("parts", "proxy_mesh")
    # the synthetic bundle's files were derived the same way, so both heads agree
    assert read.head.proxy.faces.equal(derived.head.proxy.faces)
