"""Ψ's triplane decoder: canonical + detail features -> three 32-channel planes.

Facts from official training/reconstructor/networks_reconstructor.py (``DecoderTriplane``): two 3x3 convs,
an overlapping patch embedding (stride 2) into one SegFormer block with spatial reduction 2, pixel-shuffle
back to full resolution, concatenation with the canonical features, three 3x3 convs and a final conv to
3 x plane_channels (initialised with std 0.15). For a 512² source this runs at 256² (16384 tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from model.networks.psi.segformer import OverlapPatchEmbed, SegFormerBlock, init_segformer_weights


def _conv_lrelu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.01)]


class TriplaneDecoder(nn.Module):
    def __init__(
        self,
        canonical_channels: int,
        detail_channels: int,
        hidden: tuple[int, int],
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        num_blocks: int,
        plane_channels: int,
    ) -> None:
        super().__init__()
        wide, narrow = hidden  # official 256, 128
        if dim % 4:
            raise ValueError(f"triplane decoder dim must be divisible by 4 (pixel-shuffle x2), got {dim}")
        self.dim = dim
        self.plane_channels = plane_channels
        self.convs1 = nn.Sequential(
            *_conv_lrelu(canonical_channels + detail_channels, wide), *_conv_lrelu(wide, narrow)
        )
        self.patch_embed = OverlapPatchEmbed(narrow, dim)
        self.trans_blocks = nn.ModuleList(
            [SegFormerBlock(dim, num_heads, mlp_ratio, sr_ratio) for _ in range(num_blocks)]
        )
        self.pixelshuffle = nn.PixelShuffle(2)
        self.convs2 = nn.Sequential(
            *_conv_lrelu(dim // 4 + canonical_channels, wide), *_conv_lrelu(wide, narrow), *_conv_lrelu(narrow, narrow)
        )
        self.conv_last = nn.Conv2d(narrow, 3 * plane_channels, 3, padding=1)
        init_segformer_weights(self)
        nn.init.normal_(self.conv_last.weight, 0.0, 0.15)  # official _init_weights_last

    def forward(self, canonical: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """(B, Cc, H, W), (B, Cd, H, W) -> planes (B, 3, plane_channels, H, W)."""
        x = self.convs1(torch.cat([canonical, detail], dim=1))
        x, height, width = self.patch_embed(x)
        for block in self.trans_blocks:
            x = block(x, height, width)
        x = x.reshape(x.shape[0], height, width, self.dim).permute(0, 3, 1, 2)
        x = self.convs2(torch.cat([self.pixelshuffle(x), canonical], dim=1))
        planes = self.conv_last(x)
        return planes.reshape(planes.shape[0], 3, self.plane_channels, *planes.shape[-2:])
