"""Ψ's background U-Net: source image -> background feature image behind the head.

Facts from official training/reconstructor/networks_reconstructor.py (``EncoderBG``, with ``Downsample`` /
``Upsample`` of models/unet/openaimodel.py): a stride-2 input conv, three (conv, strided-conv) down
stages, a middle conv, four (conv on [x, skip], nearest x2 + conv) up stages and an output conv; LeakyReLU
0.01 throughout. The output has the input's resolution; Ψ applies a sigmoid and resizes it to the neural
rendering resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.psi.appearance_encoders import with_pixel_coords
from model.networks.psi.segformer import init_segformer_weights


class _StridedConv(nn.Module):
    """Key ``op`` as in the official unet ``Downsample``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _UpConv(nn.Module):
    """Nearest x2 then 3x3 conv; key ``conv`` as in the official unet ``Upsample``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _conv_lrelu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.01)]


class BackgroundUNet(nn.Module):
    """(B, 3, H, W) -> (B, out_channels, H, W); H, W divisible by 16."""

    def __init__(self, channels: tuple[int, int, int, int], out_channels: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels  # official 64, 128, 256, 512
        self.input_conv = nn.Sequential(*_conv_lrelu(5, c1, stride=2))
        self.down_conv_1 = nn.Sequential(*_conv_lrelu(c1, c1), _StridedConv(c1, c2))
        self.down_conv_2 = nn.Sequential(*_conv_lrelu(c2, c2), _StridedConv(c2, c3))
        self.down_conv_3 = nn.Sequential(*_conv_lrelu(c3, c3), _StridedConv(c3, c4))
        self.middle = nn.Sequential(*_conv_lrelu(c4, c4))
        self.up_conv_1 = nn.Sequential(*_conv_lrelu(2 * c4, c3), _UpConv(c3, c3))
        self.up_conv_2 = nn.Sequential(*_conv_lrelu(2 * c3, c2), _UpConv(c2, c2))
        self.up_conv_3 = nn.Sequential(*_conv_lrelu(2 * c2, c1), _UpConv(c1, c1))
        self.up_conv_4 = nn.Sequential(*_conv_lrelu(2 * c1, c1), _UpConv(c1, c1))
        self.out_conv = nn.Conv2d(c1, out_channels, 3, padding=1)
        init_segformer_weights(self)  # official EncoderBG uses the same _init_weights

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h1 = self.input_conv(with_pixel_coords(image))  # H/2
        h2 = self.down_conv_1(h1)  # H/4
        h3 = self.down_conv_2(h2)  # H/8
        h4 = self.down_conv_3(h3)  # H/16
        x = self.up_conv_1(torch.cat([self.middle(h4), h4], 1))  # H/8
        x = self.up_conv_2(torch.cat([x, h3], 1))  # H/4
        x = self.up_conv_3(torch.cat([x, h2], 1))  # H/2
        x = self.up_conv_4(torch.cat([x, h1], 1))  # H
        return self.out_conv(x)
