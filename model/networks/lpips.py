"""LPIPS (VGG16 trunk, v0.1): the perceptual reconstruction distance of every training stage.

Official models/lpips (Zhang et al. 2018), used as ``LPIPS(net='vgg')`` on images in [-1, 1]:
shift/scale to ImageNet statistics, VGG16 taps, unit-normalise each tap over channels, square
the difference, weight channels with a learned 1x1 conv (``lin<k>``), average over space, sum
over taps. Parameter names mirror the official module so its state dict loads strictly.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.networks.vgg16 import VGG16_WIDTHS, VGG16Features

# official models/lpips/lpips.py ScalingLayer: (x - shift) / scale maps [-1, 1] to ImageNet stats
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # official normalize_tensor


class LPIPSConfig(BaseModel):
    """LPIPS-VGG sizes; defaults are the released v0.1 VGG model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    widths: tuple[int, int, int, int, int] = Field(VGG16_WIDTHS, description="VGG16 stage widths")
    use_dropout: bool = Field(True, description="dropout before each lin layer (official default; train mode only)")

    @classmethod
    def tiny(cls) -> "LPIPSConfig":
        return cls(widths=(8, 16, 32, 64, 64))


class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Non-negative channel weighting of a squared feature difference (1x1 conv, no bias)."""

    def __init__(self, channels: int, use_dropout: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        self.model = nn.Sequential(*layers, nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        # Untrained default = the un-calibrated "baseline" LPIPS (all channel weights 1), so a
        # randomly initialised metric is still a non-negative distance.
        nn.init.ones_(self.model[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(features: torch.Tensor) -> torch.Tensor:
    """Unit-normalise (B, C, H, W) features along C, with the official epsilons."""
    norm = torch.sqrt((features**2).sum(dim=1, keepdim=True) + _EPS)
    return features / (norm + _EPS)


class LPIPS(nn.Module):
    """LPIPS distance between two (B, 3, H, W) image batches in [-1, 1] -> (B,)."""

    def __init__(self, cfg: LPIPSConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LPIPSConfig()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features(cfg.widths)
        for k, width in enumerate(cfg.widths):
            self.add_module(f"lin{k}", NetLinLayer(width, cfg.use_dropout))
        self.eval()  # official eval_mode=True: the lin dropout is off unless someone calls .train()

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``normalize=True`` takes images in [0, 1] instead (official flag)."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two equal (B, 3, H, W) batches, got {tuple(x.shape)} and {tuple(y.shape)}")
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        # One trunk pass over both batches: same result, half the kernel launches.
        taps = self.net(self.scaling_layer(torch.cat([x, y], dim=0)))
        distance = x.new_zeros(x.shape[0])
        for k, tap in enumerate(taps):
            fx, fy = normalize_channels(tap).chunk(2, dim=0)
            distance = distance + self._modules[f"lin{k}"]((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return distance
