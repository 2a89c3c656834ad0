"""Ψ / Ψ_3d reconstructor: official layout, source/frame split, motion on/off, training and autocast."""

import pytest
import torch

from model.cameras import CameraDistribution, sample_cameras
from model.networks.psi import MOTION_DIM, Psi, PsiConfig, is_motion_parameter
from model.rendering import RenderingConfig
from tests.model.official_keys import official_shapes, state_dict_shapes

B = 2


def _inputs(seed: int = 0, cfg: PsiConfig | None = None):
    cfg = cfg or PsiConfig.tiny()
    g = torch.Generator().manual_seed(seed)
    s = cfg.img_resolution
    image = torch.rand(B, 3, s, s, generator=g) * 2 - 1
    source_motion = torch.randn(B, MOTION_DIM, generator=g)
    motion = torch.randn(B, MOTION_DIM, generator=g)
    c = sample_cameras(CameraDistribution(), B, g)["c"]
    return image, source_motion, motion, c


def _model(seed: int = 0, **overrides) -> Psi:
    torch.manual_seed(seed)
    return Psi(PsiConfig.tiny(**overrides)).eval()


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- official layout (paper sizes, meta device)
# Not Ψ's own state: the official module also holds FLAME buffers of its deformer (``deformer.*``, rebuilt
# from the user's FLAME files; our neck rotation field is passed in as deform_fn) and the training loop's
# ``dataset_label_std`` (a dataset statistic registered after construction).
def _own_official_keys(name: str) -> dict[str, tuple[int, ...]]:
    shapes = official_shapes(name)
    return {k: v for k, v in shapes.items() if not k.startswith("deformer.") and k != "dataset_label_std"}


@pytest.mark.parametrize("name, cfg", [("psi", PsiConfig()), ("psi3d", PsiConfig.psi3d())])
def test_paper_state_dict_equals_official_keys_and_shapes(name, cfg):
    with torch.device("meta"):
        model = Psi(cfg)
    assert state_dict_shapes(model) == _own_official_keys(name)
    # Ψ_3d keeps the motion layers (official: same class, motion scale 0)
    assert any(is_motion_parameter(k) for k in state_dict_shapes(model))


def test_excluded_official_keys_are_only_deformer_buffers_and_label_std():
    excluded = set(official_shapes("psi")) - set(_own_official_keys("psi"))
    assert "dataset_label_std" in excluded
    assert all(k == "dataset_label_std" or k.startswith("deformer.flame_deform.") for k in excluded)


def test_motion_parameters_are_the_official_cross_attention_group():
    with torch.device("meta"):
        names = [n for n, _ in Psi(PsiConfig()).named_parameters() if is_motion_parameter(n)]
    # per block: norm2 (2) + attn2 q/kv/proj (6); 8 blocks; plus 2 mapping MLPs (2 x 2 x 2) and 2 projections (2 x 2)
    assert len(names) == 8 * 8 + 8 + 4
    assert "encoder_canonical.proj_y.weight" in names and "encoder_canonical.maps_neutral.2.bias" in names
    assert "encoder_canonical.trans_blocks_motion.3.attn1.q.weight" not in names
    assert not any(n.startswith("generator_triplane.") for n in names)  # its norm2 is not a motion layer


def test_paper_defaults_are_the_official_kwargs():
    cfg = PsiConfig()
    assert (cfg.motion_dim, cfg.num_blocks_neutral, cfg.num_blocks_motion, cfg.motion_map_layers) == (548, 4, 4, 2)
    assert cfg.motion_token_grid**2 == 64 and cfg.canonical_dim == 1024
    assert (cfg.img_resolution // 16) ** 2 == 1024  # canonical tokens
    assert cfg.triplane_resolution == 256 and cfg.plane_channels == 32
    assert cfg.rendering.depth_resolution == cfg.rendering.depth_resolution_importance == 48
    assert cfg.rendering.box_warp == 1.3 and cfg.neural_rendering_resolution == 128
    assert PsiConfig.psi3d().static and PsiConfig.psi3d().neural_rendering_resolution == 64


# ---------------------------------------------------------------- behaviour (tiny)
def test_output_shapes_and_ranges():
    cfg = PsiConfig.tiny()
    model = _model()
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        out = model(image, source_motion, motion, c, generator=_gen())
    s, r, ch = cfg.img_resolution, cfg.neural_rendering_resolution, cfg.feature_channels
    expected = {
        "image": (B, 3, s, s),
        "image_raw": (B, 3, r, r),
        "image_raw_wobg": (B, 3, r, r),
        "image_feature": (B, ch, r, r),
        "image_feature_wobg": (B, ch, r, r),
        "image_depth": (B, 1, r, r),
        "T_bg": (B, 1, r, r),
        "seg": (B, 1, r, r),
        "background_feature": (B, ch, r, r),
        "rgb_bg": (B, 3, r, r),
        "planes": (B, 3, cfg.plane_channels, s // 2, s // 2),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["T_bg"].min() >= 0 and out["T_bg"].max() <= 1
    assert out["image_raw"].abs().max() <= 1.003  # MipNeRF-padded sigmoid colours, mapped to [-1, 1]
    assert torch.equal(out["seg"], 1 - 2 * out["T_bg"])


def test_neural_rendering_resolution_argument_sets_the_raw_size():
    model = _model()
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        out = model(image, source_motion, motion, c, neural_rendering_resolution=8)
    assert out["image_raw"].shape[-1] == 8 and out["image"].shape[-1] == 64


def test_encode_source_then_render_frame_equals_forward():
    model = _model()
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        full = model(image, source_motion, motion, c, generator=_gen())
        source = model.encode_source(image, source_motion)
        split = model.render_frame(source, motion, c, generator=_gen())
        # the cached source serves further frames without re-encoding
        other = model.render_frame(source, torch.roll(motion, 1, 0), c, generator=_gen())
    assert full.keys() == split.keys()
    for k in full:
        assert torch.equal(full[k], split[k]), k
    assert not torch.equal(other["planes"], full["planes"])


def test_driving_motion_changes_psi_output():
    model = _model()
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        source = model.encode_source(image, source_motion)
        a = model.render_frame(source, motion, c, generator=_gen())
        b = model.render_frame(source, motion * 2 + 1, c, generator=_gen())
    assert (a["planes"] - b["planes"]).abs().max() > 1e-4
    assert (a["image"] - b["image"]).abs().max() > 1e-6


def test_static_psi3d_ignores_motion():
    model = _model(static=True)
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        a = model(image, source_motion, motion, c, generator=_gen())
        b = model(image, -source_motion, motion * 3, c, generator=_gen())
        d = model(image, None, None, c, generator=_gen())
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], d[k]), k


def test_static_equals_psi_with_motion_scale_zero():
    psi = _model()
    psi3d = Psi(PsiConfig.tiny(static=True)).eval()
    psi3d.load_state_dict(psi.state_dict())
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        a = psi(image, source_motion, motion, c, motion_scale=0.0, generator=_gen())
        b = psi3d(image, None, None, c, generator=_gen())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_per_sample_motion_scale_matches_individual_scales():
    model = _model()
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        scale = torch.tensor([1.0, 0.0])
        mixed = model(image, source_motion, motion, c, motion_scale=scale, generator=_gen())["planes"]
        on = model(image, source_motion, motion, c, motion_scale=1.0, generator=_gen())["planes"]
        off = model(image, source_motion, motion, c, motion_scale=0.0, generator=_gen())["planes"]
    torch.testing.assert_close(mixed[0], on[0])
    torch.testing.assert_close(mixed[1], off[1])


def test_deterministic_given_seed_and_without_perturbation():
    image, source_motion, motion, c = _inputs()
    m1, m2 = _model(seed=3), _model(seed=3)
    with torch.no_grad():
        a = m1(image, source_motion, motion, c, generator=_gen(5))
        b = m2(image, source_motion, motion, c, generator=_gen(5))
        jittered = m1(image, source_motion, motion, c, generator=_gen(6))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["image_depth"], jittered["image_depth"])  # stratified jitter is on by default

    det = _model(seed=3, rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8, perturb=False))
    with torch.no_grad():
        x = det(image, source_motion, motion, c)
        y = det(image, source_motion, motion, c)
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_deform_fn_moves_the_sample_points():
    model = _model(rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8, perturb=False))
    image, source_motion, motion, c = _inputs()
    seen = []

    def shift(points: torch.Tensor) -> torch.Tensor:
        seen.append(points.shape)
        return points + torch.tensor([0.1, 0.0, 0.0])

    with torch.no_grad():
        source = model.encode_source(image, source_motion)
        plain = model.render_frame(source, motion, c)
        moved = model.render_frame(source, motion, c, deform_fn=shift)
    assert seen and all(s[0] == B and s[-1] == 3 for s in seen)
    assert not torch.equal(plain["image_raw"], moved["image_raw"])


def test_render_without_super_resolution_keeps_the_neural_outputs():
    model = _model(rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8, perturb=False))
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        source = model.encode_source(image, source_motion)
        full = model.render_frame(source, motion, c)
        neural = model.render_frame(source, motion, c, super_resolve=False)
    assert "image" in full and "image" not in neural
    for key in ("seg", "image_raw", "image_depth", "T_bg"):
        torch.testing.assert_close(neural[key], full[key], rtol=0, atol=0)


def test_sample_points_queries_the_triplane_field():
    model = _model()
    image, source_motion, motion, c = _inputs()
    points = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05], [5.0, 5.0, 5.0]]).expand(B, 3, 3)
    with torch.no_grad():
        planes = model.planes(model.encode_source(image, source_motion), motion)
        out = model.sample_points(planes, points)
        shifted = model.sample_points(planes, points, deform_fn=lambda p: p * 0 + 5.0)
    cfg = model.cfg
    assert out["rgb"].shape == (B, 3, cfg.feature_channels) and out["sigma"].shape == (B, 3, 1)
    assert out["triplane_feature"].shape == (B, 3, cfg.plane_channels)
    assert out["triplane_feature"][:, :2].abs().max() > 0
    assert torch.equal(out["triplane_feature"][:, 2], torch.zeros(B, cfg.plane_channels))  # outside the cube
    assert torch.equal(shifted["triplane_feature"], torch.zeros(B, 3, cfg.plane_channels))


@pytest.mark.parametrize("static", [False, True])
def test_training_step_reaches_every_trainable_parameter(static):
    model = _model(static=static).train()
    image, source_motion, motion, c = _inputs()
    out = model(image, source_motion, motion, c, generator=_gen())
    loss = sum(out[k].square().mean() for k in ("image", "image_raw", "image_depth", "image_feature_wobg"))
    loss.backward()
    # SR noise strengths stay unused with the official superresolution_noise_mode 'none'
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("noise_strength")}
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = {n for n, p in trainable.items() if p.grad.abs().max() == 0}
    # Ψ styles the SR layers with w_avg = 0 (official), so their affine weights see a zero input
    assert zero == {n for n in trainable if n.startswith("superresolution.") and n.endswith("affine.weight")}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == ({n for n, _ in model.named_parameters() if is_motion_parameter(n)} if static else set())


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    model = _model(rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8, perturb=False))
    image, source_motion, motion, c = _inputs()
    with torch.no_grad():
        ref = model(image, source_motion, motion, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(image, source_motion, motion, c)
    for k in ("image", "image_raw", "planes"):
        assert torch.isfinite(low[k]).all()
        err = (low[k].float() - ref[k]).abs().max() / ref[k].abs().max()
        assert err < 0.1, (k, err.item())


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    model = _model()
    image, source_motion, motion, c = _inputs()
    with pytest.raises(ValueError, match="image must have shape"):
        model.encode_source(image[:, :, :32], source_motion)
    with pytest.raises(ValueError, match="needs source_motion"):
        model.encode_source(image, None)
    with pytest.raises(ValueError, match="source_motion must have shape"):
        model.encode_source(image, source_motion[:, :100])
    with pytest.raises(ValueError, match="motion_scale"):
        model.encode_source(image, source_motion, motion_scale=torch.ones(3))
    source = model.encode_source(image, source_motion)
    with pytest.raises(ValueError, match="needs the driving motion"):
        model.render_frame(source, None, c)
    with pytest.raises(ValueError, match="c must have shape"):
        model.render_frame(source, motion, c[:, :16])
    with pytest.raises(ValueError, match="motion must have shape"):
        model.render_frame(source, motion[:1], c)


def test_inconsistent_config_is_rejected():
    with pytest.raises(ValueError, match="canonical_dim"):
        PsiConfig.tiny(canonical_dim=48)
    with pytest.raises(ValueError, match="img_resolution"):
        PsiConfig.tiny(img_resolution=40)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wide_head_attention_on_cuda_matches_the_fused_kernel(monkeypatch):
    from model.networks.psi import segformer

    torch.manual_seed(0)
    attention = segformer.MotionCrossAttention(1024, 2).cuda()  # 512-wide heads, as Ψ's
    x, context = torch.randn(2, 256, 1024, device="cuda"), torch.randn(2, 64, 1024, device="cuda")
    outputs = []
    for widest in (segformer.FUSED_MAX_HEAD_DIM, 4096):  # explicit matmuls, then the fused kernel
        monkeypatch.setattr(segformer, "FUSED_MAX_HEAD_DIM", widest)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs.append(attention(x, context).float())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=2e-2, atol=2e-2)
