"""One rule, one message: every stage that loads assets refuses a synthetic bundle outside the tiny profile
(components/assets/policy.py), before it reads any input or writes anything."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main

STAGE_ARGV = {
    "fit-flame": ["fit-flame", "--input", "{tmp}/photos"],
    "synthesize": ["synthesize", "--labels", "{tmp}/labels"],
    # train psi reads its clips and Ψ_3d weights first, then runs the same components/train/stage.prepare()
    "train psi3d": ["train", "psi3d", "--data", "{tmp}/shards"],
    "evaluate": ["evaluate", "--psi", "{tmp}/psi", "--data", "{tmp}/test_clips"],
}


@pytest.fixture
def synthetic_bundle(tmp_path):
    bundle = tmp_path / "assets"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"synthetic": True, "profile": "tiny"}))
    return bundle


@pytest.mark.parametrize("stage", sorted(STAGE_ARGV))
def test_each_stage_refuses_a_synthetic_bundle_in_paper_with_the_same_message(stage, synthetic_bundle, tmp_path,
                                                                                 capsys):
    argv = [a.format(tmp=tmp_path) for a in STAGE_ARGV[stage]]
    out = tmp_path / "out"
    code = main([*argv, "--assets", str(synthetic_bundle), "--out", str(out), "--profile", "paper", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    expected = (f"p4d {argv[0]}: error: {synthetic_bundle} is a synthetic bundle (random weights, `p4d assets synth`) "
                "but the profile is 'paper'; synthetic assets are for the tiny profile only: place the real files "
                "there (flame/generic_model.pkl, flame/landmark_embedding.npy, flame/mediapipe_landmark_embedding.npz, "
                "weights/genhead-ffhq512.pkl, weights/motion_model.pth, weights/arcface_r18_backbone.pth, "
                "weights/lpips_vgg.pth; `p4d assets list` says where to get them) or use --profile tiny\n")
    assert err == expected
    assert not out.exists()


def test_tiny_accepts_the_synthetic_bundle_and_real_files_pass_in_paper(synthetic_bundle, tmp_path):
    from components.assets.policy import refuse_synthetic_outside_tiny

    assert refuse_synthetic_outside_tiny(synthetic_bundle, "tiny").synthetic is True
    real = tmp_path / "real"  # no bundle.json: the user's own files
    real.mkdir()
    assert refuse_synthetic_outside_tiny(real, "paper").synthetic is False
