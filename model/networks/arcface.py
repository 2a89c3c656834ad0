"""ArcFace iResNet-18 face-recognition backbone for the identity loss.

Official models/arcface/iresnet.py (insightface arcface_torch), loaded from
``ms1mv3_arcface_r18_fp16/backbone.pth``; parameter names mirror it so that file loads strictly.
Input: a 112² crop aligned by ``model.face_align.crop_for_identity``, RGB in [-1, 1] (insightface
normalises (x/255 - 0.5)/0.5; the official loss feeds the [-1, 1] generator output directly).
The identity loss is ``1 - cos(features(fake), features(real))`` (official loss_recon_v2.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from model.face_align import IDENTITY_CROP_SIZE, crop_for_identity


class ArcFaceConfig(BaseModel):
    """Sizes of the iResNet backbone; defaults are ArcFace r18 (ms1mv3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(IDENTITY_CROP_SIZE, gt=0, multiple_of=16, description="aligned crop side")
    widths: tuple[int, int, int, int] = Field((64, 128, 256, 512), description="channels of the four stages")
    blocks: tuple[int, int, int, int] = Field((2, 2, 2, 2), description="residual blocks per stage (r18)")
    embedding_dim: int = Field(512, gt=0, description="identity feature size")

    @model_validator(mode="after")
    def _positive(self) -> "ArcFaceConfig":
        if min(self.widths) <= 0 or min(self.blocks) <= 0:
            raise ValueError("widths and blocks must be positive")
        return self

    @classmethod
    def tiny(cls) -> "ArcFaceConfig":
        return cls(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1), embedding_dim=64)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN residual block; the stride sits on the second conv."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class ArcFaceIResNet(nn.Module):
    """(B, 3, 112, 112) aligned face in [-1, 1] -> (B, 512) un-normalised identity embedding."""

    def __init__(self, cfg: ArcFaceConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ArcFaceConfig()
        stem = cfg.widths[0]  # r18's stem width equals the stage-1 width
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.prelu = nn.PReLU(stem)
        cin = stem
        for i, (width, n_blocks) in enumerate(zip(cfg.widths, cfg.blocks), start=1):
            blocks = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(cin)
        side = cfg.input_size // 16  # four stride-2 stages
        self.fc = nn.Linear(cin * side * side, cfg.embedding_dim)
        self.features = nn.BatchNorm1d(cfg.embedding_dim)
        # Official: the final BN has a fixed unit scale (never trained).
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)
        self.eval()  # frozen loss network: eval mode from the start, as the official code puts it

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        s = self.cfg.input_size
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, s, s):
            raise ValueError(f"ArcFace expects aligned (B, 3, {s}, {s}) faces, got {tuple(faces.shape)}")
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))

    def identity_features(self, images: torch.Tensor, landmarks: torch.Tensor | None = None, y_up: bool = False) -> torch.Tensor:
        """Unit-norm (B, embedding_dim) identity features.

        With ``landmarks`` (B, 70, 2) the images (any size, [-1, 1]) are aligned the official way
        first; without, they must already be aligned crops of ``input_size``. Differentiable
        w.r.t. images.
        """
        if landmarks is not None:
            images = crop_for_identity(images, landmarks, y_up=y_up)
        return F.normalize(self(images.clamp(-1.0, 1.0)), dim=-1)
