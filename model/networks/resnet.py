"""ResNet-34 backbone without normalization layers, dilated to output stride 8.

Ψ's global encoder uses the segmentation-models-pytorch ResNet-34 encoder with every BatchNorm
replaced by identity (Live3DPortrait, arXiv 2305.02310) and ``output_stride=8``: the strides of
layer3 and layer4 become dilations 2 and 4 (official training/reconstructor/networks_reconstructor.py,
``EncoderGlobal`` / ``get_encoder``). State-dict keys follow torchvision's ResNet (``conv1``,
``layerN.M.conv1``, ``layerN.0.downsample.0``) so official weights load unchanged.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class ResNetConfig(BaseModel):
    """Defaults: ResNet-34 on RGB+xy input, output stride 8 (official global encoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(5, gt=0, description="input channels (RGB + 2 pixel-coordinate channels)")
    stem_channels: int = Field(64, gt=0, description="channels of the 7x7 stem convolution")
    widths: tuple[int, int, int, int] = Field((64, 128, 256, 512), description="channels of layer1..layer4")
    blocks: tuple[int, int, int, int] = Field((3, 4, 6, 3), description="basic blocks per layer (ResNet-34)")
    output_stride: int = Field(8, description="8 (layer3/4 dilated), 16 (layer4 dilated) or 32 (plain)")

    @model_validator(mode="after")
    def _check(self) -> "ResNetConfig":
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if min(self.widths) <= 0 or min(self.blocks) <= 0:
            raise ValueError(f"widths and blocks must be positive, got {self.widths}, {self.blocks}")
        return self

    @classmethod
    def tiny(cls) -> "ResNetConfig":
        return cls(stem_channels=8, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1))


def _conv3x3(cin: int, cout: int, stride: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _Downsample(nn.Sequential):
    """1x1 projection of the shortcut; a Sequential so its key is ``downsample.0.weight``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1-projected) shortcut; no normalization."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, project: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, dilation)
        self.conv2 = _conv3x3(cout, cout, 1, dilation)
        self.downsample = _Downsample(cin, cout, stride) if project or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(out) + shortcut)


class ResNetBackbone(nn.Module):
    """(B, in_channels, H, W) -> (B, widths[-1], H/output_stride, W/output_stride)."""

    def __init__(self, cfg: ResNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ResNetConfig()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.in_channels, cfg.stem_channels, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # smp's make_dilated turns EVERY conv of a dilated layer (first block included) into
        # stride 1 with the layer's dilation; torchvision's replace_stride_with_dilation would not.
        dilations = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}[cfg.output_stride]
        cin = cfg.stem_channels
        for i, (width, n_blocks, dilation) in enumerate(zip(cfg.widths, cfg.blocks, dilations)):
            stride = 1 if i == 0 or dilation > 1 else 2
            # layers 2-4 were built strided, so their first block keeps its 1x1 projection
            # even where dilation has set the stride back to 1
            blocks = [BasicBlock(cin, width, stride, dilation, project=i > 0)]
            blocks += [BasicBlock(width, width, 1, dilation) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's ResNet init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected (B, {self.cfg.in_channels}, H, W) input, got {tuple(x.shape)}")
        x = self.maxpool(torch.relu(self.conv1(x)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return x
