"""StyleGAN2 mapping network z (+ condition c) -> w, with the tracked w average used for truncation."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.stylegan2.layers import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """z (B, z_dim), c (B, c_dim) -> ws (B, num_ws, w_dim), or (B, w_dim) when `num_ws` is None.

    Keys as official: `embed.*` (condition embedding), `fc{i}.*`, buffer `w_avg` (tracked when
    `w_avg_beta` is set and `num_ws` is not None). With z_dim=0 it maps the condition only
    (the discriminator's camera mapping).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998,
                 normalize: bool = True) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        self.normalize = normalize  # normalize the condition embedding (official "add by DY" flag)

        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                                         lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must be (B, {self.z_dim}), got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be (B, {self.c_dim}), got {None if c is None else tuple(c.shape)}")
            y = self.embed(c.to(torch.float32))
            if self.normalize:
                y = normalize_2nd_moment(y)
            x = y if x is None else torch.cat([x, y], dim=1)
        if x is None:
            raise ValueError("mapping network has neither z nor c inputs")

        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)

        if update_emas and self.w_avg_beta is not None:
            # w_avg <- beta * w_avg + (1 - beta) * batch mean
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # (B, num_ws, w_dim)

        if truncation_psi != 1:
            if self.w_avg_beta is None or not hasattr(self, "w_avg"):
                raise ValueError("truncation needs a tracked w_avg (w_avg_beta and num_ws must be set)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = torch.cat([self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi),
                               x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
