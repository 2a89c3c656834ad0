import pytest
import torch

from model.networks.lpips import LPIPS, LPIPSConfig, normalize_channels
from model.networks.vgg16 import VGG16Features, slice_key
from tests.model.official_keys import official_shapes, state_dict_shapes


@pytest.fixture(scope="module")
def tiny_lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(LPIPSConfig.tiny()).eval()


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_paper_state_dict_matches_official_lpips_vgg():
    with torch.device("meta"):
        ours = state_dict_shapes(LPIPS())
    official = official_shapes("lpips_vgg")
    # The official module also registers lin0-4 a second time as ``lins.0-4`` (same tensors);
    # we keep one copy. Everything else matches in order and shape.
    aliases = {k: v for k, v in official.items() if k.startswith("lins.")}
    assert list(ours.items()) == [(k, v) for k, v in official.items() if k not in aliases]
    assert all(ours[k.replace("lins.", "lin", 1)] == v for k, v in aliases.items())
    # ... and both released weight files map onto our keys: vgg.pth as is, ImageNet VGG16 renamed.
    assert official_shapes("lpips_vgg", "lpips_lin_vgg_pth").items() <= ours.items()
    imagenet = official_shapes("lpips_vgg", "torchvision_vgg16_features")
    assert {f"net.{slice_key(k)}": v for k, v in imagenet.items()}.items() <= ours.items()
    assert len(imagenet) == sum(k.startswith("net.") for k in ours)


def test_vgg16_slices_keep_torchvision_feature_indices():
    with torch.device("meta"):
        shapes = state_dict_shapes(VGG16Features())
    convs = sorted(int(k.split(".")[1]) for k in shapes if k.endswith(".weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert shapes["slice1.0.weight"] == (64, 3, 3, 3)
    assert shapes["slice3.14.weight"] == (256, 256, 3, 3)
    assert shapes["slice5.28.weight"] == (512, 512, 3, 3)


def test_slice_key_rejects_foreign_keys():
    assert slice_key("features.0.bias") == "slice1.0.bias"
    assert slice_key("features.23.weight") == "slice5.23.weight"
    with pytest.raises(ValueError, match="VGG16"):
        slice_key("classifier.0.weight")
    with pytest.raises(ValueError, match="VGG16"):
        slice_key("features.0")


def test_taps_have_vgg16_strides():
    taps = VGG16Features(LPIPSConfig.tiny().widths)(torch.zeros(1, 3, 32, 32))
    assert [tuple(t.shape[1:]) for t in taps] == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (64, 2, 2)]


def test_distance_to_itself_is_zero(tiny_lpips):
    x = _images()
    with torch.no_grad():
        assert torch.equal(tiny_lpips(x, x), torch.zeros(2))


def test_distance_is_symmetric_and_positive(tiny_lpips):
    x, y = _images(seed=1), _images(seed=2)
    with torch.no_grad():
        d_xy, d_yx = tiny_lpips(x, y), tiny_lpips(y, x)
    assert d_xy.shape == (2,)
    torch.testing.assert_close(d_xy, d_yx)
    assert (d_xy > 0).all()


def test_distance_grows_with_noise_level(tiny_lpips):
    x = _images(n=1, seed=3) * 0.5
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        d = [tiny_lpips(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.1, 0.3, 0.8)]
    assert d == sorted(d) and d[0] > 0


def test_each_distance_depends_only_on_its_own_pair(tiny_lpips):
    x, y = _images(n=3, seed=5), _images(n=3, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(tiny_lpips(x[1:2], y[1:2]), tiny_lpips(x, y)[1:2])


def test_normalize_flag_takes_unit_range_images(tiny_lpips):
    x, y = _images(seed=7), _images(seed=8)
    with torch.no_grad():
        torch.testing.assert_close(tiny_lpips((x + 1) / 2, (y + 1) / 2, normalize=True), tiny_lpips(x, y))


def test_gradients_reach_the_generated_image(tiny_lpips):
    tiny_lpips.requires_grad_(False)
    fake, real = _images(seed=9).requires_grad_(True), _images(seed=10)
    tiny_lpips(fake, real).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_channel_normalisation_gives_unit_vectors():
    f = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(normalize_channels(f).norm(dim=1), torch.ones(2, 3, 3))


def test_mismatched_batches_are_rejected(tiny_lpips):
    with pytest.raises(ValueError, match="equal"):
        tiny_lpips(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))
