"""StyleGAN2-based super-resolution: neural render (rgb + 32-ch features at 64-128²) -> 512² image.

The module GenHead, Ψ_3d and Ψ use at 512²: official models/stylegan/superresolution.py
`SuperresolutionHybrid8XDC` (selected by train_genhead.py / train_recon_v2.py for 512 data):
inputs resized to 128² (bilinear, antialiased), then two skip-architecture synthesis blocks
128->256 (256 ch) and 256->512 (128 ch), all styled by the LAST w of the generator's ws.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.networks.stylegan2.synthesis import SynthesisBlock

SR_INPUT_RESOLUTION = 128  # official: rendered inputs are resized to 128² first
SR_W_DIM = 512  # official: hard-coded w_dim of both SR blocks
SR_BLOCK_CHANNELS = (256, 128)  # "DC" (double channel) variant of EG3D's 8X module


class SuperresolutionConfig(BaseModel):
    """Defaults: the official GenHead/Ψ settings (train_genhead.py, train_recon_v2.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(32, gt=3, description="feature channels of the neural render (first 3 are rgb)")
    img_resolution: int = Field(512, ge=8, description="output resolution; must be 4 x input_resolution "
                                                        "(two 2x upsampling blocks)")
    input_resolution: int = Field(SR_INPUT_RESOLUTION, ge=2, description="inputs are resized to this first")
    block_channels: tuple[int, int] = Field(SR_BLOCK_CHANNELS, description="channels of the two SR blocks")
    w_dim: int = Field(SR_W_DIM, gt=0, description="size of the generator's w that styles the SR layers")
    sr_num_fp16_res: int = Field(4, ge=0, description="> 0 runs both blocks in fp16 on CUDA (with conv clamp 256)")
    sr_antialias: bool = Field(True, description="antialias when resizing inputs to input_resolution")
    use_ws_ones: bool = Field(False, description="style with all-ones w instead of the generator's last w "
                                                 "(GenHead: True, Ψ: False)")
    fused_modconv_default: bool | Literal["inference_only"] = Field(
        "inference_only", description="grouped (fused) modulated conv; 'inference_only' = fused in eval mode only")
    noise_mode: Literal["random", "const", "none"] = Field(
        "none", description="per-pixel noise in the SR layers (official superresolution_noise_mode)")

    @classmethod
    def tiny(cls) -> "SuperresolutionConfig":
        """16² inputs -> 64² output with 16/8 channels."""
        return cls(channels=8, img_resolution=64, input_resolution=16, block_channels=(16, 8), w_dim=32,
                   sr_num_fp16_res=0)


class SuperresolutionHybrid8XDC(nn.Module):
    """forward(rgb (B,3,h,w), x (B,channels,h,w), ws (B or 1,L,w_dim)) -> (B,3,img_resolution,img_resolution).

    Keys as official: `block0.*`, `block1.*` (each a StyleGAN2 SynthesisBlock).
    Built from a config, or from the official keyword arguments (channels=32, img_resolution=512, ...).
    """

    def __init__(self, cfg: SuperresolutionConfig | None = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = SuperresolutionConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"pass either a config or keyword arguments, not both (got {sorted(kwargs)})")
        if cfg.img_resolution != 4 * cfg.input_resolution:
            raise ValueError(f"img_resolution ({cfg.img_resolution}) must be 4 x input_resolution "
                             f"({cfg.input_resolution}): the module upsamples twice by 2")
        self.cfg = cfg
        self.input_resolution = cfg.input_resolution
        use_fp16 = cfg.sr_num_fp16_res > 0
        clamp = 256 if use_fp16 else None  # official: clamp only when running fp16
        c0, c1 = cfg.block_channels
        self.block0 = SynthesisBlock(cfg.channels, c0, w_dim=cfg.w_dim, resolution=2 * cfg.input_resolution,
                                     img_channels=3, is_last=False, use_fp16=use_fp16, conv_clamp=clamp,
                                     fused_modconv_default=cfg.fused_modconv_default)
        self.block1 = SynthesisBlock(c0, c1, w_dim=cfg.w_dim, resolution=4 * cfg.input_resolution,
                                     img_channels=3, is_last=True, use_fp16=use_fp16, conv_clamp=clamp,
                                     fused_modconv_default=cfg.fused_modconv_default)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, ws_super: torch.Tensor | None = None,
                **block_kwargs) -> torch.Tensor:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb must be (B, 3, h, w), got {tuple(rgb.shape)}")
        if x.ndim != 4 or x.shape[1] != self.cfg.channels:
            raise ValueError(f"x must be (B, {self.cfg.channels}, h, w), got {tuple(x.shape)}")
        source = ws if ws_super is None else ws_super
        if source.ndim != 3 or source.shape[-1] != self.cfg.w_dim or source.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"ws must be (B={rgb.shape[0]} or 1, L, {self.cfg.w_dim}), got {tuple(source.shape)}")
        # Every SR layer (2 convs + torgb per block, overlapping) uses the generator's last w. A w of batch 1
        # (Ψ's w_avg, GenHead's all-ones) styles every image alike: the layers then build their modulated
        # weights once and run dense convolutions (modulated_conv2d's shared-style path).
        ws = source[:, -1:, :].repeat(1, 3, 1)
        if self.cfg.use_ws_ones:
            ws = ws.new_ones(1, 3, self.cfg.w_dim)

        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.cfg.sr_antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.cfg.sr_antialias)

        block_kwargs.setdefault("noise_mode", self.cfg.noise_mode)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        _, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb
