"""Volume-rendering quadrature over sorted samples (official MipRayMarcher2: midpoint rule)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.rendering.config import RenderingConfig

# Keeps the transmittance product from reaching exactly zero (official value).
_TRANSMITTANCE_EPS = 1e-10


class MarchResult(NamedTuple):
    rgb: torch.Tensor  # (B, R, C) composited colour / features
    depth: torch.Tensor  # (B, R, 1) expected depth, clamped to the sampled range
    weights: torch.Tensor  # (B, R, S-1, 1) per-interval weights
    weights_sum: torch.Tensor  # (B, R, 1) opacity; 1 - weights_sum is the background transmittance

    @property
    def background_transmittance(self) -> torch.Tensor:
        """(B, R, 1) official ``T_bg``: how much of the background shows through."""
        return 1 - self.weights_sum


def density_activation(sigma: torch.Tensor, cfg: RenderingConfig) -> torch.Tensor:
    """Raw decoder density -> non-negative density (softplus with an activation bias of -1, official)."""
    if cfg.clamp_mode != "softplus":  # pragma: no cover - the config only admits softplus
        raise ValueError(f"unsupported clamp_mode {cfg.clamp_mode!r}")
    return F.softplus(sigma - 1)


class RayMarcher(nn.Module):
    """Composite S samples per ray into colour, depth and opacity.

    Colours and densities are averaged onto the S-1 interval midpoints; everything runs in at least
    fp32 because a bf16 transmittance product loses whole percents of opacity over 96 samples.
    """

    @staticmethod
    def weights(densities: torch.Tensor, depths: torch.Tensor, cfg: RenderingConfig) -> torch.Tensor:
        """Per-interval weights (B, R, S-1, 1) alone, in >= fp32: all the coarse pass needs for importance
        sampling (its composite colours would be thrown away)."""
        dtype = torch.promote_types(torch.promote_types(densities.dtype, depths.dtype), torch.float32)
        densities, depths = densities.to(dtype), depths.to(dtype)
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        densities_mid = density_activation((densities[:, :, :-1] + densities[:, :, 1:]) / 2, cfg)
        alpha = 1 - torch.exp(-densities_mid * deltas)
        # Transmittance before interval i: prod_{j<i} (1 - alpha_j + eps), exclusive cumulative product.
        survive = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + _TRANSMITTANCE_EPS], dim=-2)
        return alpha * torch.cumprod(survive, dim=-2)[:, :, :-1]

    def forward(
        self, colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, cfg: RenderingConfig
    ) -> MarchResult:
        """colors (B,R,S,C), raw densities (B,R,S,1), sorted depths (B,R,S,1) -> MarchResult."""
        if depths.shape[-2] < 2:
            raise ValueError(f"need at least 2 samples per ray, got {depths.shape[-2]}")
        if colors.shape[:-1] != depths.shape[:-1] or densities.shape != depths.shape:
            raise ValueError(
                f"shape mismatch: colors {tuple(colors.shape)}, densities {tuple(densities.shape)}, "
                f"depths {tuple(depths.shape)}"
            )
        dtype = torch.promote_types(torch.promote_types(colors.dtype, densities.dtype), torch.float32)
        colors, depths = colors.to(dtype), depths.to(dtype)
        weights = self.weights(densities.to(dtype), depths, cfg)
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

        rgb = (weights * colors_mid).sum(-2)
        weights_sum = weights.sum(-2)
        depth = (weights * depths_mid).sum(-2) / weights_sum
        # Empty rays give 0/0: official sends them to the far end, then clamps to the batch's sampled range.
        depth = torch.nan_to_num(depth, nan=float("inf")).clamp(depths.min(), depths.max())
        if cfg.white_back:
            rgb = rgb + 1 - weights_sum
        return MarchResult(rgb, depth, weights, weights_sum)
