"""OSG decoder: the small MLP that turns triplane features into density and colour features."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.networks.stylegan2.layers import FullyConnectedLayer
from model.rendering.triplane import plane_mean

# MipNeRF's widened sigmoid keeps colours reachable at exactly 0 and 1 (official OSGDecoder).
_RGB_PADDING = 0.001


class OSGDecoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_features: int = Field(32, gt=0, description="channels per triplane")
    hidden_dim: int = Field(64, gt=0, description="hidden width")
    decoder_output_dim: int = Field(
        32, gt=0, description="feature channels rendered per pixel (32 with super-resolution, 3 without)"
    )
    decoder_lr_mul: float = Field(1.0, gt=0, description="equalized-lr multiplier of the FC layers")

    @classmethod
    def tiny(cls) -> "OSGDecoderConfig":
        return cls(n_features=8, hidden_dim=16, decoder_output_dim=8)


class DecoderOutput(NamedTuple):
    rgb: torch.Tensor  # (B, P, decoder_output_dim), in (-0.001, 1.001)
    sigma: torch.Tensor  # (B, P, 1), raw density before the ray marcher's softplus


class OSGDecoder(nn.Module):
    """mean over planes -> FC(n_features -> hidden) softplus -> FC heads for sigma (1) and rgb.

    Parameter names are the official ones (training/generator/triplane.py OSGDecoder):
    net.0.{weight,bias}, out_sigma.{weight,bias}, out_rgb.{weight,bias}.
    """

    def __init__(
        self,
        n_features: int = 32,
        hidden_dim: int = 64,
        decoder_output_dim: int = 32,
        decoder_lr_mul: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=decoder_lr_mul),
            nn.Softplus(),
        )
        self.out_sigma = FullyConnectedLayer(hidden_dim, 1, lr_multiplier=decoder_lr_mul)
        self.out_rgb = FullyConnectedLayer(hidden_dim, decoder_output_dim, lr_multiplier=decoder_lr_mul)
        # Official zero-inits the density head: every point starts at softplus(-1) density.
        nn.init.zeros_(self.out_sigma.weight)
        nn.init.zeros_(self.out_sigma.bias)

    @classmethod
    def from_config(cls, cfg: OSGDecoderConfig) -> "OSGDecoder":
        return cls(cfg.n_features, cfg.hidden_dim, cfg.decoder_output_dim, cfg.decoder_lr_mul)

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor | None = None) -> DecoderOutput:
        """sampled_features (B, n_planes, P, C) -> DecoderOutput. Directions are unused (no view dependence)."""
        if sampled_features.dim() != 4 or sampled_features.shape[-1] != self.n_features:
            raise ValueError(
                f"sampled_features must be (B, n_planes, P, {self.n_features}), got {tuple(sampled_features.shape)}"
            )
        x = plane_mean(sampled_features)  # (B, P, C)
        b, p, c = x.shape
        hidden = self.net(x.reshape(b * p, c))
        rgb = torch.sigmoid(self.out_rgb(hidden)) * (1 + 2 * _RGB_PADDING) - _RGB_PADDING
        sigma = self.out_sigma(hidden)
        return DecoderOutput(rgb.reshape(b, p, -1), sigma.reshape(b, p, 1))
