"""Stage `synthesize` (tiny GenHead, synthetic FLAME): conditions and camera statistics, byte-identical
shards, resume after a crash, exactly-once reading across workers and ranks, S3 round trip, bad input."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.assets.check import AssetError
from components.config import build_config, load_params
from components.synthesize import (
    LabelPool,
    OnlineSynthesizer,
    ShardDataset,
    SynthesizeConfig,
    draw_identity,
    read_index,
    run,
)
from components.synthesize.conditions import LabelError
from components.synthesize.sampler import GenHeadSampler
from components.synthesize.stage import SynthesisError
from components.io.run_config import RUN_CONFIG_FILE
from components.io.storage import open_store
from model.cameras import CameraDistribution, LabelLayout, cam2world_angles, sample_cameras, split_camera_label
from model.deformation import DeformationConfig
from model.flame import synthetic_flame_arrays
from model.networks.genhead import GenHead, GenHeadConfig

CFG = build_config("tiny")
FITTED = CameraDistribution(radius=(2.7, 2.7))  # "fitted" cameras: radius outside the seed's [3.65, 4.45]


def fitted_labels(n: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 437)
    labels[:, LabelLayout.CAMERA] = sample_cameras(FITTED, n, g)["c"]
    labels[:, LabelLayout.SHAPE] = torch.randn(n, 300, generator=g) * 0.3
    labels[:, LabelLayout.EXPRESSION] = torch.randn(n, 100, generator=g) * 0.3
    labels[:, LabelLayout.NECK_POSE] = torch.randn(n, 3, generator=g) * 0.1  # must be zeroed by the sampler
    labels[:, LabelLayout.JAW_POSE] = torch.rand(n, 3, generator=g) * torch.tensor([0.3, 0.01, 0.01])
    labels[:, LabelLayout.EYE_POSE] = torch.randn(n, 6, generator=g) * 0.1
    return labels.numpy()


@pytest.fixture(scope="module")
def models():
    from components.assets.flame import flame_head_from_arrays as build_flame_head

    torch.manual_seed(0)
    genhead = GenHead(GenHeadConfig.tiny())
    with torch.no_grad():  # official zero-inits the density head; give the field some structure
        genhead.decoder.out_sigma.weight.normal_()
    return genhead, build_flame_head(synthetic_flame_arrays(0), DeformationConfig.tiny())


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fit_flame")
    np.save(d / "labels.npy", fitted_labels(24))
    return d


SMALL = CFG.synthesize.model_copy(update={"identities": 5, "views": 2, "shard_size": 2, "batch": 3,
                                                   "triplane_points": 16})


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.tar"))}


# --- conditions and cameras ---------------------------------------------------------------------------------


def test_camera_statistics_of_a_large_draw_match_the_seed_and_the_mix():
    pool = LabelPool.from_arrays([("fit", fitted_labels(50))])
    cfg = CFG.synthesize.model_copy(update={"views": 3})
    conds = [draw_identity(pool, i, cfg, CFG.cameras, 0.5, 32) for i in range(1000)]
    fitted = torch.cat([c.camera_fitted for c in conds])
    n = fitted.numel()
    assert abs(fitted.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)  # the configured mix, within 4 sigma

    c = torch.cat([cond.c for cond in conds])
    cam2world, intrinsics = split_camera_label(c)
    # Fitted views are fitted label cameras verbatim (radius 2.7); sampled views come from the seed's ranges.
    rows = torch.from_numpy(fitted_labels(50))[:, :25]
    assert all(bool((rows == row).all(1).any()) for row in c[fitted][:50])
    assert torch.allclose(cam2world[fitted][:, :3, 3].norm(dim=1), torch.tensor(2.7), atol=0.15)
    sampled = ~fitted
    lookat = torch.cat([cond.camera_draws["lookat"] for cond in conds])[sampled]
    angles = cam2world_angles(cam2world[sampled], lookat)  # recovered from the stored 25-float labels
    seed = CFG.cameras
    for name, (lo, hi) in {"pitch": seed.pitch, "yaw": seed.yaw, "roll": seed.roll, "radius": seed.radius}.items():
        values = angles[name]
        width = hi - lo
        assert values.min() >= lo - 1e-3 and values.max() <= hi + 1e-3, name
        assert values.min() < lo + 0.05 * width and values.max() > hi - 0.05 * width, name  # the whole range
        m = values.numel()
        assert abs(values.mean().item() - (lo + hi) / 2) < 4 * width / math.sqrt(12 * m), name  # uniform mean
        assert abs(values.var().item() / (width**2 / 12) - 1) < 0.15, name  # uniform variance
    box_lo = torch.tensor(seed.lookat_min) * seed.lookat_scale
    box_hi = torch.tensor(seed.lookat_max) * seed.lookat_scale
    assert torch.all((lookat >= box_lo - 1e-6) & (lookat <= box_hi + 1e-6))
    assert torch.allclose(intrinsics[sampled][0], torch.tensor([[4.7572, 0, 0.5], [0, 4.7572, 0.5], [0, 0, 1]]),
                          atol=1e-4)


def test_conditions_follow_the_official_sampler():
    labels = fitted_labels(40)
    pool = LabelPool.from_arrays([("fit", labels)])
    cfg = CFG.synthesize.model_copy(update={"views": 3})
    conds = [draw_identity(pool, i, cfg, CFG.cameras, 0.5, 32) for i in range(400)]
    by_source = {s: torch.from_numpy(labels[int(s.split(":")[1])]) for s in pool.sources}
    augmented = 0
    for cond in conds:
        lab = cond.labels()
        assert torch.all(lab[:, LabelLayout.NECK_POSE] == 0)  # neck pose zeroed
        assert torch.equal(lab[0, 25:], lab[2, 25:])  # one identity, one motion: the K views share FLAME params
        motion = by_source[cond.sources["motion"]]
        assert torch.equal(cond.expression, motion[LabelLayout.EXPRESSION])
        assert torch.equal(cond.eye_pose, by_source[cond.sources["eyes"]][LabelLayout.EYE_POSE])
        assert torch.equal(cond.shape, by_source[cond.sources["shape"]][LabelLayout.SHAPE])
        assert torch.equal(cond.c_cond, by_source[cond.sources["cameras"][0]][LabelLayout.CAMERA])
        assert torch.equal(cond.jaw_pose[1:], motion[LabelLayout.JAW_POSE][1:])
        if cond.sources["jaw_augmented"]:
            augmented += 1
            assert 0 <= cond.jaw_pose[0] <= 0.2
        else:
            assert cond.jaw_pose[0] == motion[LabelLayout.JAW_POSE][0]
    assert abs(augmented / len(conds) - 0.5) < 4 * math.sqrt(0.25 / len(conds))
    # Identity i is a function of (seed, i) only; another seed changes it.
    again = draw_identity(pool, 7, cfg, CFG.cameras, 0.5, 32)
    assert torch.equal(again.z, conds[7].z) and torch.equal(again.c, conds[7].c)
    other = draw_identity(pool, 7, cfg.model_copy(update={"seed": 1}), CFG.cameras, 0.5, 32)
    assert not torch.equal(other.z, conds[7].z)
    frontal = draw_identity(pool, 7, cfg.model_copy(update={"cond_frontal_prob": 1.0}), CFG.cameras, 0.5, 32)
    assert torch.equal(frontal.c_cond[:16].reshape(4, 4)[:3, :3], torch.eye(3)) and frontal.c_cond[11] == 4.0


def test_bad_label_rows_are_skipped_and_counted():
    labels = fitted_labels(20)
    labels[3, LabelLayout.EXPRESSION.start + 5] = np.nan
    labels[4, 0] = np.inf
    labels[5, :9] = 0  # rotation is zero: not a camera
    pool = LabelPool.from_arrays([("a", labels), ("b", np.zeros((2, 300), np.float32))])
    assert pool.n == 17 and pool.total_rows == 22
    assert pool.skipped == {"non-finite values in expression": 1, "non-finite values in cam2world": 1,
                            "cam2world rotation is not a rotation matrix": 1,
                            "wrong width (300 floats, expected 437)": 2}
    assert "a:3: non-finite values in expression" in pool.skipped_examples
    pool.check(0.25)
    with pytest.raises(LabelError, match=r"5 of 22 label rows are unusable .*2 x wrong width.*max_failure_ratio 0.1"):
        pool.check(0.1)
    with pytest.raises(LabelError, match="no usable label rows out of 2"):
        LabelPool.from_arrays([("b", np.zeros((2, 300), np.float32))]).check(1.0)


def test_triplane_targets_are_face_plane_features_of_unmasked_ray_points():
    from types import SimpleNamespace

    from components.synthesize.sampler import triplane_targets
    from model.rendering.config import RenderingConfig
    from model.rendering.triplane import sample_from_planes, triplane_axes

    class StubDeformer:  # canonical = target; every point inside an eye box
        def __call__(self, points):
            return SimpleNamespace(canonical_face=points + 0.01, inside_eye_box=torch.ones(points.shape[:2]))

    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 6 * 4, 8, 8, generator=g)
    c = sample_cameras(CameraDistribution(), 2, g)["c"]
    res = 8
    eye = torch.zeros(2, 1, res, res)
    eye[..., : res // 2] = 1  # left half of every image is "eye"
    rows = triplane_targets(planes, StubDeformer(), c, eye, torch.zeros_like(eye), RenderingConfig.tiny(), 50,
                            torch.Generator().manual_seed(1))
    assert rows.shape == (2, 50, 3 + 4)
    points, features = rows[..., :3], rows[..., 3:]
    face = planes.reshape(2, 6, 4, 8, 8)[:, 3:]
    assert torch.allclose(features, sample_from_planes(triplane_axes(), face, points + 0.01, 1.3).mean(1), atol=1e-6)
    cam2world, _ = split_camera_label(c)
    local = (points - cam2world[:, None, :3, 3]) @ cam2world[:, :3, :3]  # camera coordinates (OpenGL)
    assert torch.all(local[..., 0] > 0)  # only right-half pixels: the eye half is excluded
    depth = -local[..., 2]
    cam_z = cam2world[:, :3, 3].norm(dim=1)[:, None]  # cameras look at ~the origin
    assert torch.all((depth > cam_z - 0.65 - 0.15) & (depth < cam_z + 0.65 + 0.15))


# --- shards --------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_shards_and_the_reader_decodes_them(tmp_path, labels_dir, models):
    a = run(CFG, [labels_dir], str(tmp_path / "a"), synth=SMALL, models=models, progress=False)
    run(CFG, [labels_dir / "labels.npy"], str(tmp_path / "b"), synth=SMALL, models=models, progress=False)
    run(CFG, [labels_dir], str(tmp_path / "c"), synth=SMALL.model_copy(update={"seed": 1}), models=models,
        progress=False)
    first, second, other = (shard_bytes(tmp_path / x) for x in "abc")
    assert list(first) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert first == second  # also when the labels path is spelled differently
    index_a, index_b = (json.loads((tmp_path / x / "index.json").read_text()) for x in "ab")
    assert index_a["labels"].pop("files") == [str(labels_dir / "labels.npy")] and index_b["labels"].pop("files")
    assert index_a == index_b
    assert all(first[k] != other[k] for k in first)
    assert (a.identities, a.views, a.shards, a.shards_written) == (5, 10, 3, 3)

    index = read_index(open_store(tmp_path / "a"))
    assert index["complete"] and index["totals"] == {"shards": 3, "identities": 5, "views": 10,
                                                      "bytes": sum(map(len, first.values()))}
    import hashlib

    assert [e["sha256"] for e in index["shards"]] == [hashlib.sha256(b).hexdigest() for b in first.values()]
    items = {item["identity"]: item for item in ShardDataset(str(tmp_path / "a"), shuffle=False)}
    assert sorted(items) == [0, 1, 2, 3, 4]
    item = items[3]
    assert item["image"].shape == (2, 3, 64, 64) and item["image_raw"].shape == (2, 3, 16, 16)
    assert item["seg"].shape == (2, 1, 16, 16) and item["bg"].shape == (2, 3, 16, 16)
    assert item["depth"].shape == (2, 1, 16, 16) and item["triplane"].shape == (2, 16, 3 + 8)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    radius = item["label"][:, 3:16:4][:, :3].norm(dim=1)  # camera distance; depth lies in |cam_z| +- box/2
    assert torch.all((item["depth"] > radius[:, None, None, None] - 0.8) & (item["depth"] < radius[:, None, None, None] + 0.8))

    # Online mode draws the same identities and renders the same kind of batch.
    genhead, head = models
    # synthesize.fused_field asks for the Triton kernel, which runs compiled on CUDA only: on the CPU the
    # sampler keeps the eager field instead of failing
    fused = GenHeadSampler(genhead, head, SMALL.model_copy(update={"fused_field": True}),
                           CFG.networks.genhead.truncation_psi)
    assert fused.genhead.fused_field is False
    sampler = GenHeadSampler(genhead, head, SMALL, CFG.networks.genhead.truncation_psi)
    online = OnlineSynthesizer(sampler, LabelPool.from_arrays([(str(labels_dir / "labels.npy"),
                                                                np.load(labels_dir / "labels.npy"))]),
                               CFG.cameras, CFG.camera_mix_fitted_prob)
    batch = online.draw([3, 4])
    assert torch.equal(batch["label"][0], item["label"])
    assert torch.equal(batch["camera_fitted"][0], item["camera_fitted"])
    assert {k: tuple(v.shape[2:]) for k, v in batch.items() if v.ndim > 2} == \
        {k: tuple(v.shape[1:]) for k, v in item.items() if k in batch and k not in ("identity", "camera_fitted")}
    assert (batch["image"][0] - item["image"]).abs().mean() < 0.1  # same identity; only ray jitter differs


class Crash(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates_or_gaps(tmp_path, labels_dir, models, monkeypatch):
    reference = tmp_path / "reference"
    run(CFG, [labels_dir], str(reference), synth=SMALL, models=models, progress=False)

    # 1. Crash right after shard 0 is indexed.
    out = tmp_path / "out"

    def crash_after_first(entry):
        if entry["index"] == 0:
            raise Crash

    with pytest.raises(Crash):
        run(CFG, [labels_dir], str(out), synth=SMALL, models=models, progress=False, on_shard_written=crash_after_first)
    index = json.loads((out / "index.json").read_text())
    assert not index["complete"] and [e["index"] for e in index["shards"]] == [0]
    with pytest.raises(Exception, match="incomplete"):
        ShardDataset(str(out))

    # 2. Crash while uploading shard 2: it must not become visible.
    import components.synthesize.stage as stage

    real_open = stage.open_store

    class FailingStore:
        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def put_bytes(self, key, data):
            if key.endswith("shard-000002.tar"):
                raise Crash("connection lost mid-upload")
            self._store.put_bytes(key, data)

    monkeypatch.setattr(stage, "open_store", lambda uri, **kw: FailingStore(real_open(uri, **kw)))
    with pytest.raises(Crash):
        summary = run(CFG, [labels_dir], str(out), synth=SMALL, models=models, progress=False)
    assert sorted(shard_bytes(out)) == ["shard-000000.tar", "shard-000001.tar"]
    assert [e["index"] for e in json.loads((out / "index.json").read_text())["shards"]] == [0, 1]
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no temp file left
    monkeypatch.setattr(stage, "open_store", real_open)

    # 3. Resume: only the missing shard is rendered; the result equals the uninterrupted run byte for byte.
    summary = run(CFG, [labels_dir], str(out), synth=SMALL, models=models, progress=False)
    assert summary.shards_written == 1 and summary.images_written == 2
    assert shard_bytes(out) == shard_bytes(reference)
    assert (out / "index.json").read_bytes() == (reference / "index.json").read_bytes()
    ids = [item["identity"] for item in ShardDataset(str(out), decode=False)]
    assert sorted(ids) == [0, 1, 2, 3, 4]
    # A finished run is a no-op; other settings are refused instead of mixing datasets.
    assert run(CFG, [labels_dir], str(out), synth=SMALL, models=models, progress=False).shards_written == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SynthesisError, match=rf"resume refused: these settings differ from the run in {out}: "
                                             rf"synthesize\.seed \({SMALL.seed} -> 3\); resume with the same settings"):
        run(CFG, [labels_dir], str(out), synth=SMALL.model_copy(update={"seed": 3}), models=models, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten


def _identities(dataset, workers: int) -> list[int]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [int(item["identity"]) for item in loader]


def test_reader_returns_every_identity_once_per_epoch_across_workers_and_ranks(tmp_path, labels_dir, models):
    synth = SMALL.model_copy(update={"identities": 9, "views": 1, "shard_size": 1, "batch": 4, "triplane_points": 0})
    run(CFG, [labels_dir], str(tmp_path), synth=synth, models=models, progress=False)
    ds = ShardDataset(str(tmp_path), seed=5, shuffle_buffer=3, decode=False)
    epoch0 = _identities(ds, workers=2)
    ds.set_epoch(1)
    epoch1 = _identities(ds, workers=2)
    assert sorted(epoch0) == sorted(epoch1) == list(range(9))
    assert epoch0 != epoch1  # a new order each epoch
    ranks = [_identities(ShardDataset(str(tmp_path), rank=r, world_size=2, decode=False), workers=2) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(9)) and not set(ranks[0]) & set(ranks[1])
    assert abs(len(ranks[0]) - len(ranks[1])) <= 1
    batch = next(iter(DataLoader(ShardDataset(str(tmp_path)), batch_size=4)))
    assert batch["image"].shape == (4, 1, 3, 64, 64) and batch["label"].shape == (4, 1, 437)


# --- S3 and bad input ----------------------------------------------------------------------------------------


def test_s3_round_trip_against_moto(tmp_path, labels_dir, models, s3_server, monkeypatch):
    import boto3

    for k, v in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    bucket = f"p4d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/datasets/synth"
    run(CFG, [labels_dir], uri, synth=SMALL, models=models, progress=False)
    run(CFG, [labels_dir], str(tmp_path), synth=SMALL, models=models, progress=False)
    s3 = open_store(uri)
    assert s3.list() == ["config.yaml", "index.json", "shards/shard-000000.tar", "shards/shard-000001.tar",
                         "shards/shard-000002.tar"]
    assert {k.split("/")[-1]: s3.get_bytes(k) for k in s3.list("shards/")} == shard_bytes(tmp_path)
    remote = {i["identity"]: i for i in ShardDataset(uri, verify=True)}
    local = {i["identity"]: i for i in ShardDataset(str(tmp_path))}
    assert sorted(remote) == [0, 1, 2, 3, 4]
    assert all(torch.equal(remote[i]["image"], local[i]["image"]) for i in remote)
    # Resuming on S3 finds the finished shards.
    assert run(CFG, [labels_dir], uri, synth=SMALL, models=models, progress=False).shards_written == 0


def test_assets_are_checked_before_any_work(tmp_path, labels_dir):
    out = tmp_path / "out"
    with pytest.raises(AssetError, match="does not exist"):
        run(CFG, [labels_dir], str(out), tmp_path / "no-assets", synth=SMALL, progress=False)
    synthetic = tmp_path / "bundle"
    synthetic.mkdir()
    (synthetic / "bundle.json").write_text(json.dumps({"synthetic": True, "profile": "paper"}))
    with pytest.raises(AssetError, match="synthetic bundle .*profile is 'paper'.*genhead-ffhq512.pkl"):
        run(build_config("paper"), [labels_dir], str(out), synthetic, synth=SMALL, progress=False)
    with pytest.raises(AssetError, match="genhead"):  # tiny profile: synthetic is fine, missing files are not
        run(CFG, [labels_dir], str(out), synthetic, synth=SMALL, progress=False)
    assert not out.exists()


def test_cli_resolves_profile_params_and_flags(tmp_path):
    from components.config import ConfigError
    from components.synthesize.cli import resolve_config

    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nsynthesize:\n  views: 4\n  triplane_points: 0\n")
    cfg, synth = resolve_config(None, params, {"identities": 9, "seed": 2})
    assert cfg.profile == "tiny" and (synth.identities, synth.views, synth.seed, synth.triplane_points) == (9, 4, 2, 0)
    assert synth.neural_rendering_resolution == CFG.synthesize.neural_rendering_resolution
    _, paper = resolve_config("paper", None, {})
    assert paper == SynthesizeConfig() and paper.neural_rendering_resolution == 64 and paper.views == 3
    with pytest.raises(ConfigError, match="synthesize.shard_size: got 0"):
        resolve_config(None, None, {"shard_size": 0})


def test_cli_renders_from_a_synthetic_tiny_bundle(tmp_path, labels_dir, capsys):
    import argparse

    from components.assets.synth import synthesize_bundle
    from components.synthesize import cli

    assets = synthesize_bundle(tmp_path / "assets", profile="tiny")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synthesize", "--labels", str(labels_dir), "--assets", str(assets), "--out",
                              str(tmp_path / "out"), "--identities", "3", "--views", "2", "--shard-size", "2",
                              "--seed", "4", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "synthesized 3 identities x 2 views = 6 images in 2 shards" in printed
    assert "images/s" in printed and "label rows: 24 used of 24" in printed
    index = read_index(open_store(tmp_path / "out"))
    assert index["complete"] and index["fingerprint"]["synthesize"]["seed"] == 4
    # the run folder holds the resolved config of the run, command-line flags included
    used = build_config("tiny", {"synthesize": {"identities": 3, "views": 2, "shard_size": 2, "seed": 4}})
    assert load_params(tmp_path / "out" / RUN_CONFIG_FILE) == used
