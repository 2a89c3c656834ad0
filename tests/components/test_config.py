import json

import pytest
import yaml

from components.config import ConfigError, P4DConfig, build_config, load_params
from pipelines.cli import main


def test_paper_profile_holds_every_seed_number():
    cfg = build_config("paper")
    cam = cfg.cameras
    assert cam.pitch == (-0.25, 0.65) and cam.yaw == (-0.78, 0.78) and cam.roll == (-0.25, 0.25)
    assert cam.radius == (3.65, 4.45)
    assert cam.lookat_min == (-0.01, -0.01, 0.02) and cam.lookat_max == (0.01, 0.01, 0.04)
    assert cam.fov_deg == 12.0
    s3 = cfg.psi3d
    for net in (cfg.networks.psi3d, cfg.networks.psi, cfg.networks.genhead):
        assert (net.rendering.depth_resolution, net.rendering.depth_resolution_importance) == (48, 48)
        assert net.rendering.box_warp == 1.3 and net.rendering.clamp_mode == "softplus"
    assert (s3.neural_resolution_initial, s3.neural_resolution_final) == (64, 128)
    assert s3.resolution_ramp_start_images == 1_000_000 and s3.resolution_ramp_images == 1_000_000
    assert s3.adversarial_start_images == 1_000_000
    assert s3.renderer_frozen_until_images == 1_000_000
    assert s3.depth_and_triplane_loss_until_images == 1_000_000
    assert s3.lr == 1e-4 and s3.batch == 32 and s3.total_images == 10_000_000
    p = cfg.psi
    assert p.lr_motion == 2.5e-4 and p.lr == 1e-4 and p.batch == 32 and p.total_images == 6_000_000
    assert p.neural_resolution == 128
    assert p.training_clips == 10_000 and p.frames_per_clip == 50 and p.mot_aug_prob == 0.9
    assert cfg.networks.image_resolution == 512
    assert cfg.networks.psi3d.static and not cfg.networks.psi.static
    assert cfg.networks.psi.motion_dim == 548
    assert cfg.networks.genhead.truncation_psi == 0.95
    assert cfg.losses.adversarial == 0.01 and cfg.losses.r1_gamma == 1.0


def test_tiny_keeps_the_structure_and_every_switch():
    tiny, paper = build_config("tiny"), build_config("paper")
    assert set(tiny.model_dump()) == set(paper.model_dump())
    t = tiny.psi3d
    assert 0 < t.adversarial_start_images < t.total_images
    assert t.neural_resolution_initial < t.neural_resolution_final
    assert tiny.networks.image_resolution < paper.networks.image_resolution


@pytest.mark.parametrize(
    "overrides, needles",
    [
        ({"psi3d": {"lr": "fast"}}, ["psi3d.lr", "'fast'", "number"]),
        ({"psi3d": {"batch": -1}}, ["psi3d.batch", "-1", "greater than 0"]),
        ({"psi": {"mot_aug_prob": 1.5}}, ["psi.mot_aug_prob", "1.5", "less than or equal to 1"]),
        ({"psi3d": {"learning_rate": 1}}, ["psi3d.learning_rate", "unknown key", "lr"]),
        ({"camras": {}}, ["camras", "unknown key", "cameras"]),
    ],
)
def test_invalid_values_name_field_value_and_what_is_allowed(overrides, needles):
    with pytest.raises(ConfigError) as info:
        build_config("tiny", overrides)
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_profile_is_refused():
    with pytest.raises(ConfigError, match="allowed: tiny, paper"):
        build_config("huge")


def test_params_file_is_read_through_the_models(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"profile": "tiny", "psi3d": {"lr": 0.5}}))
    cfg = load_params(p)
    assert cfg.psi3d.lr == 0.5 and cfg.psi3d.batch == build_config("tiny").psi3d.batch
    p.write_text("psi3d: {lr: [1, 2]}")
    with pytest.raises(ConfigError, match=r"(?s)params.yaml: .*psi3d.lr"):
        load_params(p)


def test_repository_params_yaml_is_valid_tiny():
    cfg = load_params("params.yaml")
    assert cfg.profile == "tiny"


def test_config_show_cli_prints_seed_numbers(capsys):
    assert main(["config", "show", "--profile", "paper", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["psi"]["lr_motion"] == 2.5e-4 and data["cameras"]["fov_deg"] == 12.0
    assert P4DConfig.model_validate(data) == build_config("paper")


def test_config_cli_reports_bad_params_in_one_line(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("profile: tiny\npsi: {batch: zero}\n")
    assert main(["config", "show", "--params", str(p)]) == 2
    err = capsys.readouterr().err
    assert "psi.batch" in err and "'zero'" in err and "Traceback" not in err


def test_every_loss_weight_lives_in_losses_with_the_official_values():
    cfg = build_config("paper")
    w = cfg.losses
    assert (w.segmentation, w.density_reg, w.cross_view) == (0.3, 0.25, 1.0)
    assert (w.r1_gamma, w.r1_gamma_uv, w.r1_gamma_seg) == (1.0, 10.0, 1.0)
    # the train section keeps when the terms run, never how much they count
    assert not {"seg_weight", "density_reg", "cross_view_weight", "r1_gamma_uv", "r1_gamma_seg"} & set(cfg.train.model_dump())
    assert cfg.train.density_reg_every == 16 and cfg.train.cross_view_every == 4
    with pytest.raises(ConfigError, match=r"train.seg_weight: unknown key \(allowed here: .*density_reg_every"):
        build_config("tiny", {"train": {"seg_weight": 0.5}})


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_psi_is_served_at_the_neural_resolution_it_trains_at(profile):
    cfg = build_config(profile)
    assert cfg.networks.psi.neural_rendering_resolution == cfg.psi.neural_resolution
    assert cfg.networks.psi3d.neural_rendering_resolution == cfg.psi3d.neural_resolution_initial


def test_a_neural_resolution_mismatch_is_refused_naming_both_keys():
    with pytest.raises(ConfigError) as info:
        build_config("paper", {"psi": {"neural_resolution": 64}})
    message = str(info.value)
    assert "psi.neural_resolution (64)" in message
    assert "networks.psi.neural_rendering_resolution (128)" in message
    # setting both moves the resolution consistently
    both = build_config("paper", {"psi": {"neural_resolution": 64}, "networks": {"psi": {"neural_rendering_resolution": 64}}})
    assert both.psi.neural_resolution == both.networks.psi.neural_rendering_resolution == 64
