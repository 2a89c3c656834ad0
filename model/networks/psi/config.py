"""Architecture settings of Ψ / Ψ_3d (one class; Ψ_3d is ``static=True``).

Defaults are the official ``TriPlaneReconstructorNeutralize`` settings of train_recon_v1.py /
train_recon_v2.py with configs/portrait4d-v2-vfhq512.yaml and portrait4d-static-genhead512.yaml
(mot_dims 548, 4 neutral + 4 motion blocks, motion_map_layers 2, background and 8X super-resolution on)
and the sub-module defaults of training/reconstructor/networks_reconstructor.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.networks.resnet import ResNetConfig
from model.networks.superresolution import SuperresolutionConfig
from model.rendering import OSGDecoderConfig, RenderingConfig

MOTION_DIM = 548  # PD-FGC motion embedding: eye 6 + emotion 30 + mouth 512


class PsiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    static: bool = Field(
        False, description="Ψ_3d: motion cross-attention off (motion scale 0); motion inputs ignored"
    )
    img_resolution: int = Field(512, gt=0, description="source image and final (super-resolved) image size")
    neural_rendering_resolution: int = Field(
        128, gt=0, description="default volume-rendering size (paper: 64 -> 128 for Ψ_3d, 128 for Ψ)"
    )
    # motion conditioning (canonical encoder)
    motion_dim: int = Field(MOTION_DIM, gt=0, description="motion embedding size (official mot_dims)")
    motion_hidden_dim: int = Field(512, gt=0, description="width of the motion mapping MLPs")
    motion_map_layers: int = Field(2, ge=0, description="layers of each motion mapping MLP (g_motion_map_layers)")
    motion_token_grid: int = Field(8, gt=0, description="motion tokens per side (8 -> 64 tokens)")
    # global encoder
    resnet: ResNetConfig = Field(default_factory=ResNetConfig, description="global encoder backbone")
    global_channels: int = Field(256, gt=0, description="ASPP output channels (global features)")
    atrous_rates: tuple[int, int, int] = Field((12, 24, 36), description="ASPP dilation rates")
    # detail encoder
    detail_hidden: int = Field(64, gt=0, description="channels of the detail encoder's stride-2 stem")
    detail_channels: int = Field(96, gt=0, description="detail feature channels")
    # canonical encoder
    canonical_dim: int = Field(1024, gt=0, description="token width; must be 4 x global_channels")
    canonical_heads: int = Field(4, gt=0, description="attention heads of the neutral/motion blocks")
    num_blocks_neutral: int = Field(4, ge=0, description="blocks cross-attending to the source motion")
    num_blocks_motion: int = Field(4, ge=0, description="blocks cross-attending to the driving motion")
    mlp_ratio: float = Field(2.0, gt=0, description="Mix-FFN expansion of every transformer block")
    canonical_conv_channels: int = Field(128, gt=0, description="channels of the canonical upsampling convs")
    # triplane decoder
    decoder_dim: int = Field(1024, gt=0, description="token width of the triplane decoder's transformer")
    decoder_heads: int = Field(2, gt=0, description="attention heads of the triplane decoder")
    decoder_sr_ratio: int = Field(2, gt=0, description="spatial reduction of the decoder's key/value map")
    decoder_blocks: int = Field(1, ge=0, description="transformer blocks of the triplane decoder")
    decoder_hidden: tuple[int, int] = Field((256, 128), description="conv widths of the triplane decoder")
    plane_channels: int = Field(32, gt=0, description="channels per plane (3 planes)")
    # background
    has_background: bool = Field(True, description="composite a learned background behind the head")
    background_channels: tuple[int, int, int, int] = Field((64, 128, 256, 512), description="U-Net widths")
    # rendering
    rendering: RenderingConfig = Field(default_factory=RenderingConfig, description="volume rendering")
    decoder: OSGDecoderConfig = Field(default_factory=OSGDecoderConfig, description="triplane MLP decoder")
    superresolution: SuperresolutionConfig = Field(
        default_factory=SuperresolutionConfig, description="StyleGAN2 8X super-resolution"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "PsiConfig":
        problems = []
        if self.img_resolution % 16:
            problems.append(f"img_resolution ({self.img_resolution}) must be divisible by 16")
        if self.canonical_dim != 4 * self.global_channels:
            problems.append(
                f"canonical_dim ({self.canonical_dim}) must be 4 x global_channels ({self.global_channels})"
            )
        if self.canonical_dim % self.canonical_heads or self.decoder_dim % self.decoder_heads:
            problems.append("canonical_dim / decoder_dim must be divisible by their head counts")
        if self.decoder.n_features != self.plane_channels:
            problems.append(f"decoder.n_features ({self.decoder.n_features}) must equal plane_channels")
        if self.decoder.decoder_output_dim != self.superresolution.channels:
            problems.append("decoder.decoder_output_dim must equal superresolution.channels")
        if self.superresolution.img_resolution != self.img_resolution:
            problems.append("superresolution.img_resolution must equal img_resolution")
        if self.resnet.output_stride != 8:
            problems.append("resnet.output_stride must be 8 (canonical tokens are img_resolution/16 per side)")
        if problems:
            raise ValueError("invalid PsiConfig: " + "; ".join(problems))
        return self

    @property
    def triplane_resolution(self) -> int:
        return self.img_resolution // 2

    @property
    def feature_channels(self) -> int:
        """Channels of the rendered feature image (and of the background)."""
        return self.decoder.decoder_output_dim

    @classmethod
    def psi3d(cls, **overrides) -> "PsiConfig":
        """Ψ_3d (portrait4d-static-genhead512): static, neural rendering starts at 64²."""
        return cls(**{"static": True, "neural_rendering_resolution": 64, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "PsiConfig":
        """64² source, 32² triplanes of 8 channels, 16² neural render, 8+8 samples: CPU tests."""
        values = dict(
            img_resolution=64,
            neural_rendering_resolution=16,
            motion_hidden_dim=16,
            motion_map_layers=2,
            motion_token_grid=2,
            resnet=ResNetConfig.tiny(),
            global_channels=8,
            atrous_rates=(1, 2, 3),
            detail_hidden=8,
            detail_channels=8,
            canonical_dim=32,
            canonical_heads=2,
            num_blocks_neutral=1,
            num_blocks_motion=1,
            canonical_conv_channels=8,
            decoder_dim=32,
            decoder_heads=2,
            decoder_blocks=1,
            decoder_hidden=(16, 8),
            plane_channels=8,
            background_channels=(8, 8, 8, 8),
            rendering=RenderingConfig.tiny(),
            decoder=OSGDecoderConfig.tiny(),
            superresolution=SuperresolutionConfig.tiny(),
        )
        return cls(**{**values, **overrides})
