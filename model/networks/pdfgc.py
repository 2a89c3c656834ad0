"""PD-FGC motion encoder: the implicit 2D motion embedding that drives Ψ.

A FAN-style hourglass turns a 224² face crop (see ``model.face_align.crop_for_motion``) into a
512-d feature; small heads split it into disentangled motion factors. The paper uses
``motion_embedding = cat(eye 6, emotion 30, mouth 512)`` = 548-d (official
models/pdfgc/encoder.py, training/loss/loss_recon_v2.py ``get_motion_feature``). Head pose is
deliberately not part of it — Ψ gets the neck rotation explicitly.

Module / parameter names mirror the released ``motion_model.pth`` so it loads strictly.
The encoder is frozen during training and is constructed in eval mode (its BatchNorm layers need it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from model.face_align import crop_for_motion


class PDFGCConfig(BaseModel):
    """Sizes of the PD-FGC motion encoder; defaults are the released model's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(224, gt=0, multiple_of=8, description="square crop side the encoder expects")
    width: int = Field(256, gt=0, multiple_of=16, description="hourglass feature channels (stem uses width/4, width/2)")
    hourglass_depth: int = Field(4, ge=1, description="number of down/up levels of the single hourglass")
    n_heatmaps: int = Field(68, gt=0, description="landmark heatmap channels of the FAN trunk")
    feature_dim: int = Field(512, gt=0, description="trunk feature size = mouth embedding size")
    eye_dim: int = Field(6, gt=0, description="eye motion embedding size")
    emotion_dim: int = Field(30, gt=0, description="emotion embedding size")
    pose_dim: int = Field(6, gt=0, description="head-pose embedding size (weights kept, unused by Ψ)")

    @model_validator(mode="after")
    def _mouth_embed_fits(self) -> "PDFGCConfig":
        if self.feature_dim <= self.eye_dim + self.pose_dim:
            raise ValueError("feature_dim must exceed eye_dim + pose_dim (official mouth_embed size)")
        return self

    @property
    def motion_dim(self) -> int:
        """Size of the motion embedding Ψ consumes (548 for the paper)."""
        return self.eye_dim + self.emotion_dim + self.feature_dim

    @classmethod
    def tiny(cls) -> "PDFGCConfig":
        return cls(input_size=64, width=32, hourglass_depth=2, n_heatmaps=8, feature_dim=64)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block whose three 3x3 branches (c/2, c/4, c/4) are concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout // 2)
        self.bn2 = nn.BatchNorm2d(cout // 2)
        self.conv2 = _conv3x3(cout // 2, cout // 4)
        self.bn3 = nn.BatchNorm2d(cout // 4)
        self.conv3 = _conv3x3(cout // 4, cout // 4)
        self.downsample: nn.Module | None = None
        if cin != cout:  # indices 0 / 2 match the official Sequential(BN, ReLU, conv1x1)
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel_size=1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], dim=1) + residual


class HourGlass(nn.Module):
    """Recursive hourglass; blocks are named b1_/b2_/b2_plus_/b3_<level> as in FAN."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.depth = depth
        self.dropout = nn.Dropout(0.5)  # official: on the skip branch (inactive in eval)
        self._add_level(depth, width)

    def _add_level(self, level: int, width: int) -> None:
        # Registration order follows the official recursion so state-dict order matches too.
        self.add_module(f"b1_{level}", ConvBlock(width, width))
        self.add_module(f"b2_{level}", ConvBlock(width, width))
        if level > 1:
            self._add_level(level - 1, width)
        else:
            self.add_module("b2_plus_1", ConvBlock(width, width))
        self.add_module(f"b3_{level}", ConvBlock(width, width))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        skip = self.dropout(self._modules[f"b1_{level}"](x))
        low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        if level > 1:
            low = self._level(level - 1, low)
        else:
            low = self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FANTrunk(nn.Module):
    """FAN landmark network cut after its heatmaps: (B, 3, S, S) -> (B, feature_dim)."""

    def __init__(self, cfg: PDFGCConfig):
        super().__init__()
        w, n = cfg.width, cfg.n_heatmaps
        self.conv1 = nn.Conv2d(3, w // 4, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(w // 4)
        self.conv2 = ConvBlock(w // 4, w // 2)
        self.conv3 = ConvBlock(w // 2, w // 2)
        self.conv4 = ConvBlock(w // 2, w)
        # Names with a trailing 0 come from FAN's stack of hourglasses (PD-FGC keeps one).
        self.m0 = HourGlass(cfg.hourglass_depth, w)
        self.top_m_0 = ConvBlock(w, w)
        self.conv_last0 = nn.Conv2d(w, w, kernel_size=1)
        self.l0 = nn.Conv2d(w, n, kernel_size=1)
        self.bn_end0 = nn.BatchNorm2d(w)
        self.conv6 = nn.Conv2d(n, 1, kernel_size=3, stride=2, padding=1)
        heat = cfg.input_size // 8  # stride-2 conv1, max-pool, stride-2 conv6
        self.fc = nn.Linear(heat * heat, cfg.feature_dim)
        self.bn5 = nn.BatchNorm2d(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        heatmaps = self.l0(F.relu(self.bn_end0(self.conv_last0(x))))  # (B, n_heatmaps, S/4, S/4)
        x = self.conv6(F.relu(self.bn5(heatmaps)))  # (B, 1, S/8, S/8)
        return self.fc(F.relu(x.flatten(1)))


def _factor_head(dim: int) -> nn.Sequential:
    # indices 0 / 2 / 3 match the official Sequential(Linear, ReLU, BatchNorm1d, Linear)
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim), nn.Linear(dim, dim))


def _embed(din: int, dout: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(din, dout))  # weights at index 1, as official


class PDFGCMotionEncoder(nn.Module):
    """(B, 3, S, S) motion crop in [-1, 1] -> (B, 548) motion embedding = cat(eye, emotion, mouth)."""

    def __init__(self, cfg: PDFGCConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PDFGCConfig()
        d = cfg.feature_dim
        self.model = FANTrunk(cfg)
        # mouth_embed and the head-pose pair are in the released weights but unused by
        # Portrait4D; kept so loading is strict. Order = official registration order.
        self.to_mouth = _factor_head(d)
        self.mouth_embed = _embed(d, d - cfg.pose_dim - cfg.eye_dim)
        self.to_headpose = _factor_head(d)
        self.headpose_embed = _embed(d, cfg.pose_dim)
        self.to_eye = _factor_head(d)
        self.eye_embed = _embed(d, cfg.eye_dim)
        self.to_emo = _factor_head(d)
        self.emo_embed = _embed(d, cfg.emotion_dim)
        self.eval()  # a frozen feature extractor, put in eval mode right away as the official code does

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        s = self.cfg.input_size
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, s, s):
            raise ValueError(f"PD-FGC expects (B, 3, {s}, {s}) motion crops, got {tuple(crops.shape)}")
        feature = self.model(crops)
        eye = self.eye_embed(self.to_eye(feature))  # (B, 6)
        emotion = self.emo_embed(self.to_emo(feature))  # (B, 30)
        mouth = self.to_mouth(feature)  # (B, 512): the official mouth motion is the head output itself
        return torch.cat([eye, emotion, mouth], dim=-1)

    def motion_embedding(self, images: torch.Tensor, landmarks: torch.Tensor, y_up: bool = False) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] + (B, 68+, 2) pixel landmarks -> (B, motion_dim).

        Crops the official way first (``model.face_align.crop_for_motion``).
        """
        return self(crop_for_motion(images, landmarks, y_up=y_up, size=self.cfg.input_size))

    def split(self, motion: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of a (B, motion_dim) embedding."""
        e, m = self.cfg.eye_dim, self.cfg.emotion_dim
        return {"eye": motion[:, :e], "emotion": motion[:, e : e + m], "mouth": motion[:, e + m :]}

    def head_pose(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 6) PD-FGC head-pose code; not part of the motion embedding (Ψ rotates the neck explicitly)."""
        return self.headpose_embed(self.to_headpose(self.model(crops)))
