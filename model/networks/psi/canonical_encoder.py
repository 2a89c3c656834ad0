"""Ψ's canonical encoder: neutralize the source face, then re-animate it with the driving motion.

Facts from official training/reconstructor/networks_reconstructor.py (``EncoderCanonical``): the global
features are patch-embedded to (H/2)x(W/2) tokens of ``dim`` channels (32x32 = 1024 tokens x 1024 for a
512² source). Each motion embedding goes through its own LeakyReLU MLP and a linear layer that unfolds
it into a grid of motion tokens (8x8 = 64). ``num_blocks_neutral`` blocks cross-attend to the SOURCE
motion (removing the source expression), then ``num_blocks_motion`` blocks cross-attend to the DRIVING
motion. Pixel-shuffle and two bilinear x2 convolution stages lift the tokens to the triplane resolution.

The work is split at the neutral/motion boundary: ``neutralize`` needs only the source and is cached
by serving; ``animate`` runs per driving frame.
"""

from __future__ import annotations

import torch
from torch import nn

from model.networks.psi.segformer import MotionBlock, OverlapPatchEmbed, Scale, init_segformer_weights


class MotionMapping(nn.Sequential):
    """Motion embedding (B, motion_dim) -> (B, hidden_dim): ``layers`` x (Linear, LeakyReLU 0.01)."""

    def __init__(self, motion_dim: int, hidden_dim: int, layers: int) -> None:
        modules: list[nn.Module] = []
        for i in range(layers):
            modules += [nn.Linear(motion_dim if i == 0 else hidden_dim, hidden_dim), nn.LeakyReLU(0.01)]
        super().__init__(*modules)


class CanonicalEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        num_blocks_neutral: int,
        num_blocks_motion: int,
        motion_dim: int,
        motion_hidden_dim: int,
        motion_map_layers: int,
        motion_token_grid: int,
        conv_channels: int,
        out_channels: int,
    ) -> None:
        super().__init__()
        if dim != 4 * in_channels:
            # pixel-shuffle x2 turns dim channels into dim/4, which the conv stages read as in_channels
            raise ValueError(f"canonical dim must be 4 x global channels ({4 * in_channels}), got {dim}")
        self.dim = dim
        self.motion_tokens = motion_token_grid**2
        mapped_dim = motion_hidden_dim if motion_map_layers > 0 else motion_dim
        # with motion_map_layers == 0 the official module has no mapping networks at all
        self.maps = MotionMapping(motion_dim, motion_hidden_dim, motion_map_layers) if motion_map_layers else None
        self.maps_neutral = (
            MotionMapping(motion_dim, motion_hidden_dim, motion_map_layers) if motion_map_layers else None
        )
        self.proj_y_neutral = nn.Linear(mapped_dim, self.motion_tokens * dim)
        self.proj_y = nn.Linear(mapped_dim, self.motion_tokens * dim)
        self.patch_embed = OverlapPatchEmbed(in_channels, dim)
        self.trans_blocks_neutral = nn.ModuleList(
            [MotionBlock(dim, num_heads, mlp_ratio) for _ in range(num_blocks_neutral)]
        )
        self.trans_blocks_motion = nn.ModuleList(
            [MotionBlock(dim, num_heads, mlp_ratio) for _ in range(num_blocks_motion)]
        )
        self.pixelshuffle = nn.PixelShuffle(2)
        self.convs = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),  # = nn.UpsamplingBilinear2d
            nn.Conv2d(in_channels, conv_channels, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(conv_channels, out_channels, 3, padding=1),
        )
        init_segformer_weights(self)

    def _motion_tokens(self, motion: torch.Tensor, maps: nn.Module | None, proj: nn.Linear) -> torch.Tensor:
        """(B, motion_dim) -> (B, motion_token_grid², dim)."""
        if maps is not None:
            motion = maps(motion)
        return proj(motion).reshape(motion.shape[0], self.motion_tokens, self.dim)

    def neutralize(
        self, global_features: torch.Tensor, source_motion: torch.Tensor | None, motion_scale: Scale = 1.0
    ) -> tuple[torch.Tensor, int, int]:
        """(B, C, h, w) source features -> (neutral tokens (B, h/2*w/2, dim), h/2, w/2).

        ``source_motion=None`` runs without the cross-attention (motion off, Ψ_3d).
        """
        tokens = None
        if source_motion is not None:
            tokens = self._motion_tokens(source_motion, self.maps_neutral, self.proj_y_neutral)
        x, height, width = self.patch_embed(global_features)
        for block in self.trans_blocks_neutral:
            x = block(x, tokens, height, width, motion_scale)
        return x, height, width

    def animate(
        self,
        neutral: torch.Tensor,
        height: int,
        width: int,
        driving_motion: torch.Tensor | None,
        motion_scale: Scale = 1.0,
    ) -> torch.Tensor:
        """Neutral tokens + driving motion (B, motion_dim) -> canonical features (B, out_channels, 4h, 4w)."""
        tokens = None
        if driving_motion is not None:
            tokens = self._motion_tokens(driving_motion, self.maps, self.proj_y)
        x = neutral
        for block in self.trans_blocks_motion:
            x = block(x, tokens, height, width, motion_scale)
        x = x.reshape(x.shape[0], height, width, self.dim).permute(0, 3, 1, 2)
        return self.convs(self.pixelshuffle(x))
