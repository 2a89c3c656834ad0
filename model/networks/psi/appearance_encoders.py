"""Ψ's two appearance encoders of the source image: global (ResNet-34 + ASPP) and detail (shallow CNN).

Both see the image with two extra channels holding the pixel's (x, y) in [-1, 1] (official ``AddCoord``
in training/reconstructor/networks_reconstructor.py), so a 3-channel RGB image becomes 5 channels.
"""

from __future__ import annotations

import torch
from torch import nn

from model.networks.resnet import ResNetBackbone, ResNetConfig


def with_pixel_coords(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C+2, H, W): appends x (along width) and y (along height) in [-1, 1]."""
    b, _, h, w = image.shape
    y = torch.linspace(-1, 1, h, dtype=image.dtype, device=image.device)
    x = torch.linspace(-1, 1, w, dtype=image.dtype, device=image.device)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.cat([image, torch.stack([xx, yy]).expand(b, 2, h, w)], dim=1)


class _ConvReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1) -> None:
        pad = dilation * (kernel_size // 2)
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False), nn.ReLU())


class _ImagePooling(nn.Sequential):
    """ASPP image-level branch: global average -> 1x1 conv -> ReLU, broadcast back to the map size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bilinear upsampling of a 1x1 map (official) is exactly this broadcast
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3), without BatchNorm/Dropout (official models/deeplabv3)."""

    def __init__(self, cin: int, cout: int, atrous_rates: tuple[int, ...]) -> None:
        super().__init__()
        branches: list[nn.Module] = [_ConvReLU(cin, cout)]
        branches += [_ConvReLU(cin, cout, 3, rate) for rate in atrous_rates]
        branches.append(_ImagePooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = _ConvReLU(len(branches) * cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class GlobalEncoder(nn.Module):
    """Source image (B, 3, H, W) -> global appearance features (B, channels, H/8, W/8)."""

    def __init__(self, resnet: ResNetConfig, channels: int, atrous_rates: tuple[int, ...]) -> None:
        super().__init__()
        if resnet.in_channels != 5:
            raise ValueError(
                f"the global encoder sees RGB + xy, so resnet.in_channels must be 5, got {resnet.in_channels}"
            )
        self.encoder = ResNetBackbone(resnet)
        self.decoder = nn.Sequential(
            ASPP(self.encoder.out_channels, channels, atrous_rates),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(with_pixel_coords(image)))


class DetailEncoder(nn.Module):
    """Source image (B, 3, H, W) -> high-frequency detail features (B, channels, H/2, W/2)."""

    def __init__(self, hidden: int, channels: int, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(5, hidden, 7, stride=2, padding=3), nn.LeakyReLU(0.01)]
        for i in range(depth):
            layers += [nn.Conv2d(hidden if i == 0 else channels, channels, 3, padding=1), nn.LeakyReLU(0.01)]
        self.encoder = nn.Sequential(*layers)
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):  # official EncoderDetail init (biases keep torch's default)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(with_pixel_coords(image))
