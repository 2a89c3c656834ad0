import pytest
import torch

from model.face_align import crop_for_motion
from model.networks.pdfgc import PDFGCConfig, PDFGCMotionEncoder
from tests.model.official_keys import official_shapes, state_dict_shapes


@pytest.fixture(scope="module")
def tiny_encoder() -> PDFGCMotionEncoder:
    torch.manual_seed(0)
    return PDFGCMotionEncoder(PDFGCConfig.tiny()).eval()


def test_paper_motion_embedding_is_eye_emotion_mouth_548():
    cfg = PDFGCConfig()
    assert (cfg.eye_dim, cfg.emotion_dim, cfg.feature_dim) == (6, 30, 512)
    assert cfg.motion_dim == 548


def test_paper_state_dict_matches_released_motion_model():
    with torch.device("meta"):
        encoder = PDFGCMotionEncoder()
    assert list(state_dict_shapes(encoder).items()) == list(official_shapes("pdfgc_motion_model").items())


def test_paper_state_dict_shapes_follow_the_fan_layout():
    with torch.device("meta"):
        shapes = state_dict_shapes(PDFGCMotionEncoder())
    assert len(shapes) == 387
    assert shapes["model.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["model.m0.b2_plus_1.conv3.weight"] == (64, 64, 3, 3)
    assert shapes["model.l0.weight"] == (68, 256, 1, 1)
    assert shapes["model.fc.weight"] == (512, 28 * 28)
    assert shapes["to_mouth.3.weight"] == (512, 512)
    assert shapes["mouth_embed.1.weight"] == (500, 512)
    assert shapes["eye_embed.1.weight"] == (6, 512)
    assert shapes["emo_embed.1.weight"] == (30, 512)
    assert shapes["headpose_embed.1.weight"] == (6, 512)


def test_forward_concatenates_eye_emotion_mouth(tiny_encoder):
    cfg = tiny_encoder.cfg
    crops = torch.rand(3, 3, cfg.input_size, cfg.input_size) * 2 - 1
    with torch.no_grad():
        motion = tiny_encoder(crops)
        feature = tiny_encoder.model(crops)
        eye = tiny_encoder.eye_embed(tiny_encoder.to_eye(feature))
        emotion = tiny_encoder.emo_embed(tiny_encoder.to_emo(feature))
        mouth = tiny_encoder.to_mouth(feature)
    assert motion.shape == (3, cfg.motion_dim)
    parts = tiny_encoder.split(motion)
    assert {k: v.shape[1] for k, v in parts.items()} == {"eye": 6, "emotion": 30, "mouth": cfg.feature_dim}
    torch.testing.assert_close(parts["eye"], eye)
    torch.testing.assert_close(parts["emotion"], emotion)
    torch.testing.assert_close(parts["mouth"], mouth)
    assert tiny_encoder.head_pose(crops).shape == (3, cfg.pose_dim)


def test_each_motion_depends_only_on_its_own_crop(tiny_encoder):
    size = tiny_encoder.cfg.input_size
    crops = torch.rand(4, 3, size, size) * 2 - 1
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(tiny_encoder(crops[perm]), tiny_encoder(crops)[perm])
        assert not torch.allclose(tiny_encoder(crops[:1]), tiny_encoder(crops[1:2]))


def test_gradients_reach_the_crop_through_a_frozen_encoder(tiny_encoder):
    size = tiny_encoder.cfg.input_size
    tiny_encoder.requires_grad_(False)
    crops = (torch.rand(2, 3, size, size) * 2 - 1).requires_grad_(True)
    tiny_encoder(crops).square().sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def test_wrong_crop_size_is_rejected(tiny_encoder):
    with pytest.raises(ValueError, match="motion crops"):
        tiny_encoder(torch.zeros(1, 3, 32, 32))


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError):
        PDFGCConfig(feature_dim=10, eye_dim=6, pose_dim=6)
    with pytest.raises(ValueError):
        PDFGCConfig(input_size=100)  # not a multiple of 8


def test_starts_in_eval_mode_like_the_official_frozen_encoder():
    assert not PDFGCMotionEncoder(PDFGCConfig.tiny()).training


def test_motion_embedding_crops_with_landmarks_then_encodes(tiny_encoder):
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    landmarks = torch.rand(2, 68, 2) * 60 + 30
    size = tiny_encoder.cfg.input_size
    with torch.no_grad():
        direct = tiny_encoder.motion_embedding(images, landmarks)
        manual = tiny_encoder(crop_for_motion(images, landmarks, size=size))
    torch.testing.assert_close(direct, manual)
