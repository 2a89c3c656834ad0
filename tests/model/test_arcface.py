import pytest
import torch

from model.face_align import crop_for_identity
from model.networks.arcface import ArcFaceConfig, ArcFaceIResNet
from tests.model.official_keys import official_shapes, state_dict_shapes


@pytest.fixture(scope="module")
def tiny_arcface() -> ArcFaceIResNet:
    torch.manual_seed(0)
    return ArcFaceIResNet(ArcFaceConfig.tiny()).eval()


def test_paper_state_dict_matches_released_r18_backbone():
    with torch.device("meta"):
        net = ArcFaceIResNet()
    assert list(state_dict_shapes(net).items()) == list(official_shapes("arcface_r18").items())


def test_paper_state_dict_shapes_follow_iresnet18():
    with torch.device("meta"):
        net = ArcFaceIResNet()
    shapes = state_dict_shapes(net)
    assert len(shapes) == 187
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)  # stride-2 first block
    assert shapes["layer4.1.prelu.weight"] == (512,)
    assert shapes["fc.weight"] == (512, 512 * 7 * 7)
    assert shapes["features.running_var"] == (512,)
    assert not net.features.weight.requires_grad  # official: the last BN scale is fixed


def test_identity_features_are_unit_norm_and_batch_order_invariant(tiny_arcface):
    faces = torch.rand(4, 3, 112, 112) * 2 - 1
    perm = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        feats = tiny_arcface.identity_features(faces)
        feats_perm = tiny_arcface.identity_features(faces[perm])
    assert feats.shape == (4, 64)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(feats_perm, feats[perm], atol=1e-5, rtol=0)
    assert (feats[0] @ feats[1]).item() < 0.9999  # different faces, different features


def test_identity_features_align_with_landmarks_first(tiny_arcface):
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    landmarks = torch.rand(2, 70, 2) * 120 + 60
    with torch.no_grad():
        direct = tiny_arcface.identity_features(images, landmarks)
        manual = torch.nn.functional.normalize(tiny_arcface(crop_for_identity(images, landmarks)), dim=-1)
    torch.testing.assert_close(direct, manual)


def test_identity_loss_gradients_reach_the_image(tiny_arcface):
    tiny_arcface.requires_grad_(False)
    fake = (torch.rand(2, 3, 112, 112) * 1.8 - 0.9).requires_grad_(True)
    real = torch.rand(2, 3, 112, 112) * 2 - 1
    loss = (1 - (tiny_arcface.identity_features(fake) * tiny_arcface.identity_features(real)).sum(-1)).mean()
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_unaligned_input_without_landmarks_is_rejected(tiny_arcface):
    with pytest.raises(ValueError, match="aligned"):
        tiny_arcface.identity_features(torch.zeros(1, 3, 128, 128))
