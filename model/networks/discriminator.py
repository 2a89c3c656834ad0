"""Dual discriminator of GenHead / Ψ_3d / Ψ: judges the SR image together with the raw neural render,
the FLAME correspondence (uv) map and the foreground segmentation, conditioned on the camera.

Official training/discriminator/dual_discriminator.py `DualDiscriminatorDeform` (EG3D's dual
discrimination plus uv/seg channels): a StyleGAN2 residual discriminator over a 10-channel image
(3 SR rgb + 3 raw rgb upsampled + 3 uv + 1 seg), with a projection head on the mapped camera label.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.cameras import CAMERA_LABEL_DIM
from model.networks.stylegan2.layers import DEFAULT_RESAMPLE_FILTER, setup_filter
from model.networks.stylegan2.discriminator import DiscriminatorBlock, DiscriminatorEpilogue
from model.networks.stylegan2.mapping import MappingNetwork
from model.networks.stylegan2.synthesis import channels_per_resolution, fp16_min_resolution


class DiscriminatorConfig(BaseModel):
    """Defaults: official train_genhead.py / train_recon_v2.py + configs/default.yaml (same D for all three)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    c_dim: int = Field(CAMERA_LABEL_DIM, ge=0, description="camera label size (25); 0 = unconditional")
    img_resolution: int = Field(512, ge=8, description="resolution of the SR image the D judges")
    img_channels: int = Field(3, gt=0, description="channels of one image (rgb)")
    architecture: Literal["orig", "skip", "resnet"] = Field("resnet", description="StyleGAN2 D architecture")
    channel_base: int = Field(32768, gt=0, description="channels at resolution r = min(channel_base // r, channel_max)")
    channel_max: int = Field(512, gt=0, description="channel cap")
    num_fp16_res: int = Field(4, ge=0, description="fp16 (CUDA only) for the N highest resolutions")
    conv_clamp: float | None = Field(256, gt=0, description="clamp conv outputs to +-X (official: 256 with fp16)")
    cmap_dim: int | None = Field(None, gt=0, description="mapped-camera size; None = channels at 4² (512)")
    disc_c_noise: float = Field(0.0, ge=0, description="camera-label noise in std devs (pose-conditioning reg.)")
    mapping_layers: int = Field(8, gt=0, description="layers of the camera mapping network (official default 8)")
    mbstd_group_size: int | None = Field(2, gt=0, description="minibatch-stddev group (configs/default.yaml: 2)")
    mbstd_num_channels: int = Field(1, ge=0, description="minibatch-stddev features; 0 disables")
    freeze_layers: int = Field(0, ge=0, description="Freeze-D: number of leading layers held fixed")
    has_superresolution: bool = Field(True, description="also judge the raw neural render (dual discrimination)")
    has_uv: bool = Field(True, description="append the 3-ch FLAME correspondence map")
    has_seg: bool = Field(True, description="append the 1-ch foreground segmentation")

    @property
    def input_channels(self) -> int:
        return self.img_channels * (2 if self.has_superresolution else 1) + 3 * self.has_uv + self.has_seg

    @classmethod
    def tiny(cls) -> "DiscriminatorConfig":
        """32² input, <= 32 channels, fp32, small camera mapping."""
        return cls(img_resolution=32, channel_base=512, channel_max=32, num_fp16_res=0, conv_clamp=None,
                   mapping_layers=2)


def filtered_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize (official filtered_resizing, filter_mode 'antialiased')."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class DualDiscriminator(nn.Module):
    """forward(image (B,3,R,R), c (B,25), image_raw (B,3,r,r), uv (B,3,*,*), seg (B,1,*,*)) -> logits (B,1).

    Keys as official: `b{res}.*` for res = R..8, `mapping.*` (camera), `b4.*` (epilogue).
    """

    def __init__(self, cfg: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        if cfg.img_resolution & (cfg.img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two, got {cfg.img_resolution}")
        self.cfg = cfg
        self.c_dim = cfg.c_dim
        self.img_resolution = cfg.img_resolution
        log2 = int(np.log2(cfg.img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = channels_per_resolution(self.block_resolutions + [4], cfg.channel_base, cfg.channel_max)
        fp16_res = fp16_min_resolution(cfg.img_resolution, cfg.num_fp16_res)
        cmap_dim = 0 if cfg.c_dim == 0 else (channels[4] if cfg.cmap_dim is None else cfg.cmap_dim)

        common = dict(img_channels=cfg.input_channels, architecture=cfg.architecture, conv_clamp=cfg.conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < cfg.img_resolution else 0, channels[res],
                                       channels[res // 2], resolution=res, first_layer_idx=layer_idx,
                                       use_fp16=res >= fp16_res, freeze_layers=cfg.freeze_layers, **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if cfg.c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=cfg.c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          num_layers=cfg.mapping_layers)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4,
                                        mbstd_group_size=cfg.mbstd_group_size,
                                        mbstd_num_channels=cfg.mbstd_num_channels, **common)
        # Unused by forward; kept so official state dicts load strictly.
        self.register_buffer("resample_filter", setup_filter(DEFAULT_RESAMPLE_FILTER))

    def assemble_input(self, image: torch.Tensor, image_raw: torch.Tensor | None = None,
                       uv: torch.Tensor | None = None, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Stack the D input channels in official order: [image, raw upsampled, uv, seg] -> (B, C_in, R, R)."""
        cfg = self.cfg
        if image.ndim != 4 or image.shape[1] != cfg.img_channels or image.shape[-1] != cfg.img_resolution:
            raise ValueError(f"image must be (B, {cfg.img_channels}, {cfg.img_resolution}, {cfg.img_resolution}), "
                             f"got {tuple(image.shape)}")
        parts = [image]
        for name, needed, tensor, ch in (("image_raw", cfg.has_superresolution, image_raw, cfg.img_channels),
                                         ("uv", cfg.has_uv, uv, 3), ("seg", cfg.has_seg, seg, 1)):
            if not needed:
                continue
            if tensor is None or tensor.ndim != 4 or tensor.shape[1] != ch or tensor.shape[0] != image.shape[0]:
                raise ValueError(f"{name} must be (B={image.shape[0]}, {ch}, H, W), "
                                 f"got {None if tensor is None else tuple(tensor.shape)}")
            parts.append(filtered_resize(tensor, image.shape[-1]))
        return torch.cat(parts, dim=1)

    def forward(self, image: torch.Tensor, c: torch.Tensor | None, image_raw: torch.Tensor | None = None,
                uv: torch.Tensor | None = None, seg: torch.Tensor | None = None, **block_kwargs) -> torch.Tensor:
        img: torch.Tensor | None = self.assemble_input(image, image_raw, uv, seg)
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)

        cmap = None
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be (B, {self.c_dim}), got {None if c is None else tuple(c.shape)}")
            if self.cfg.disc_c_noise > 0:
                c = c + torch.randn_like(c) * c.std(0) * self.cfg.disc_c_noise
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, input_channels={self.cfg.input_channels}"
