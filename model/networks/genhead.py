"""GenHead: the FLAME-conditioned part-wise triplane GAN that synthesizes Ψ_3d's multi-view data.

Official training/generator/triplane.py `PartTriPlaneGeneratorDeform` as configured by
configs/genhead-ffhq512.yaml + train_genhead.py: mapping on z (512) and the condition
[camera label (25), FLAME shape (300)]; a StyleGAN2 backbone makes 6 planes x 32 ch at 256²
(eye/mouth + face parts, see genhead_parts.py); a second StyleGAN2 paints a 32-ch background at 64²;
the OSG decoder and the importance renderer (48 + 48 samples) give a 32-ch neural render that the
8X super-resolution lifts to 512². State-dict keys mirror the official ones, except the FLAME
deformer, which is passed in at call time (model.deformation) and owns no GenHead parameters.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from model.cameras import CAMERA_LABEL_DIM, LabelLayout, split_camera_label
from model.networks.genhead_parts import N_PART_PLANES, PartDeformer, part_radiance_field, resize_mask
from model.networks.stylegan2.synthesis import Generator as StyleGAN2Generator
from model.networks.superresolution import SuperresolutionConfig, SuperresolutionHybrid8XDC
from model.rendering.config import RenderingConfig
from model.rendering.decoder import OSGDecoder, OSGDecoderConfig
from model.rendering.ray_sampler import RaySampler, camera_depth_of_origin
from model.rendering.renderer import render_rays, to_image

FLAME_SHAPE_DIM = LabelLayout.SHAPE.stop - LabelLayout.SHAPE.start  # 300


class GenHeadConfig(BaseModel):
    """Defaults: the released genhead-ffhq512 generator (model/official_keys/kwargs.json 'genhead')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    z_dim: int = Field(512, gt=0, description="latent z size (also the background's z)")
    w_dim: int = Field(512, gt=0, description="intermediate latent w size")
    camera_dim: int = Field(CAMERA_LABEL_DIM, ge=0, description="camera label size in the mapping condition")
    flame_condition: bool = Field(True, description="append the FLAME shape to the mapping condition")
    shape_dim: int = Field(FLAME_SHAPE_DIM, ge=0, description="FLAME shape coefficients in the condition")
    c_scale: float = Field(1.0, description="multiplier of the mapping condition (official c_scale)")
    img_resolution: int = Field(512, ge=8, description="final (super-resolved) image size")
    triplane_resolution: int = Field(256, ge=4, description="resolution of the 6 part planes")
    triplane_channels: int = Field(192, gt=0, description="backbone output channels = 6 planes x plane features")
    channel_base: int = Field(32768, gt=0, description="backbone channel schedule base")
    channel_max: int = Field(512, gt=0, description="backbone channel cap")
    num_fp16_res: int = Field(0, ge=0, description="fp16 resolutions of the backbone (official 0)")
    conv_clamp: float | None = Field(None, description="backbone conv clamp (official None without fp16)")
    mapping_layers: int = Field(2, gt=0, description="backbone mapping depth (official map_depth 2)")
    fused_modconv_default: bool | Literal["inference_only"] = Field(
        "inference_only", description="grouped modulated conv: 'inference_only' = fused in eval mode only")
    has_background: bool = Field(True, description="composite over a StyleGAN2-generated background")
    background_resolution: int = Field(64, ge=4, description="background generator resolution")
    background_channel_base: int = Field(16384, gt=0, description="background channel schedule base")
    background_mapping_layers: int = Field(8, gt=0, description="background mapping depth")
    background_num_fp16_res: int = Field(4, ge=0, description="background fp16 resolutions (official default)")
    background_conv_clamp: float | None = Field(256, description="background conv clamp (official default)")
    has_superresolution: bool = Field(True, description="super-resolve the neural render to img_resolution")
    superresolution: SuperresolutionConfig = Field(
        SuperresolutionConfig(use_ws_ones=True), description="SR module (GenHead styles it with all-ones w)")
    decoder: OSGDecoderConfig = Field(OSGDecoderConfig(), description="OSG decoder MLP")
    rendering: RenderingConfig = Field(RenderingConfig(), description="volume rendering settings")
    neural_rendering_resolution: int = Field(64, ge=4, description="default neural render size (official 64)")
    truncation_psi: float = Field(0.95, ge=0, le=1, description="truncation for data synthesis (paper: 0.95)")
    truncation_cutoff: int | None = Field(14, ge=0, description="truncate the first N ws (official 14 = all)")

    @property
    def condition_dim(self) -> int:
        return self.camera_dim + (self.shape_dim if self.flame_condition else 0)

    @property
    def plane_features(self) -> int:
        return self.triplane_channels // N_PART_PLANES

    @model_validator(mode="after")
    def _consistent(self) -> "GenHeadConfig":
        if self.triplane_channels % N_PART_PLANES or self.plane_features != self.decoder.n_features:
            raise ValueError(f"triplane_channels ({self.triplane_channels}) must be {N_PART_PLANES} x "
                             f"decoder.n_features ({self.decoder.n_features})")
        feat = self.decoder.decoder_output_dim
        if self.has_superresolution:
            sr = self.superresolution
            if sr.channels != feat or sr.img_resolution != self.img_resolution or sr.w_dim != self.w_dim:
                raise ValueError(f"superresolution (channels {sr.channels}, img_resolution {sr.img_resolution}, "
                                 f"w_dim {sr.w_dim}) must match decoder_output_dim {feat}, img_resolution "
                                 f"{self.img_resolution}, w_dim {self.w_dim}")
        elif feat != 3:
            raise ValueError("without super-resolution the decoder must output rgb (decoder_output_dim=3)")
        return self

    @classmethod
    def tiny(cls) -> "GenHeadConfig":
        """64² output from 16² renders of 6 x 8-ch 32² planes; minutes-free CPU tests."""
        return cls(z_dim=32, w_dim=32, img_resolution=64, triplane_resolution=32, triplane_channels=48,
                   channel_base=1024, channel_max=32, background_resolution=16, background_channel_base=256,
                   background_num_fp16_res=0, background_conv_clamp=None,
                   superresolution=SuperresolutionConfig.tiny().model_copy(update={"use_ws_ones": True}),
                   decoder=OSGDecoderConfig.tiny(), rendering=RenderingConfig.tiny(), neural_rendering_resolution=16)


class GenHeadOutput(NamedTuple):
    image: torch.Tensor  # (B,3,S,S) super-resolved image in [-1,1] (official 'image_sr')
    image_raw: torch.Tensor  # (B,3,r,r) neural render rgb, background composited (official 'image')
    image_feature: torch.Tensor  # (B,C,r,r) all rendered feature channels, composited (official 'image_feature')
    image_depth: torch.Tensor  # (B,1,r,r) expected ray depth
    seg: torch.Tensor  # (B,1,r,r) foreground opacity mapped to [-1,1] (official 'seg')
    background: torch.Tensor  # (B,C,r,r) background features in [-1,1], or zeros without a background
    eye_mask: torch.Tensor  # (B,1,r,r) eye-region mask used for the part fusion
    mouth_mask: torch.Tensor  # (B,1,r,r) inner-mouth mask used for the part fusion


class GenHead(nn.Module):
    """mapping() -> ws; synthesis(ws, c, deformer) -> GenHeadOutput; forward() does both.

    Keys as official: `backbone.{synthesis,mapping}.*`, `background.{synthesis,mapping}.*`,
    `superresolution.block{0,1}.*`, `decoder.*`, plus the `dataset_label_std` buffer.
    """

    def __init__(self, cfg: GenHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or GenHeadConfig()
        self.cfg = cfg
        # Registered by official training_loop_genhead.py after construction; kept so released weights load strictly.
        self.register_buffer("dataset_label_std", torch.tensor(0))
        self.backbone = StyleGAN2Generator(
            cfg.z_dim, cfg.condition_dim, cfg.w_dim, img_resolution=cfg.triplane_resolution,
            img_channels=cfg.triplane_channels, mapping_kwargs={"num_layers": cfg.mapping_layers},
            channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=cfg.num_fp16_res,
            conv_clamp=cfg.conv_clamp, fused_modconv_default=cfg.fused_modconv_default)
        if cfg.has_background:
            # Official builds it with StyleGAN2 defaults (channel_max 512, fp16 res 4, clamp 256), unconditioned.
            self.background = StyleGAN2Generator(
                cfg.z_dim, 0, cfg.w_dim, img_resolution=cfg.background_resolution,
                img_channels=cfg.decoder.decoder_output_dim,
                mapping_kwargs={"num_layers": cfg.background_mapping_layers},
                channel_base=cfg.background_channel_base, num_fp16_res=cfg.background_num_fp16_res,
                conv_clamp=cfg.background_conv_clamp)
        self.superresolution = SuperresolutionHybrid8XDC(cfg.superresolution) if cfg.has_superresolution else None
        self.decoder = OSGDecoder.from_config(cfg.decoder)
        # Inference on CUDA may sample the part triplanes and run the decoder in one Triton kernel
        # (model.rendering.fused_field); synthesize.fused_field sets it. Not part of the state dict.
        self.fused_field = False
        self.ray_sampler = RaySampler()
        self.neural_rendering_resolution = cfg.neural_rendering_resolution

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def condition(self, c: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Mapping condition (B, condition_dim) from the conditioning camera c (B,25) and FLAME shape (B,300)."""
        cfg = self.cfg
        if c.ndim != 2 or c.shape[1] != cfg.camera_dim:
            raise ValueError(f"conditioning camera c must be (B, {cfg.camera_dim}), got {tuple(c.shape)}")
        if not cfg.flame_condition:
            return c
        if shape is None or shape.shape != (c.shape[0], cfg.shape_dim):
            raise ValueError(f"FLAME shape must be (B={c.shape[0]}, {cfg.shape_dim}), "
                             f"got {None if shape is None else tuple(shape.shape)}")
        return torch.cat([c, shape.to(c.dtype)], dim=1)

    def mapping(self, z: torch.Tensor, c: torch.Tensor, shape: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> torch.Tensor:
        """z (B,z_dim), c (B,25), shape (B,300) -> ws (B, num_ws, w_dim). psi 0 gives w_avg."""
        cond = self.condition(c, shape) * self.cfg.c_scale
        return self.backbone.mapping(z, cond, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     update_emas=update_emas)

    def _background(self, z_bg: torch.Tensor | None, background_ws: torch.Tensor | None, resolution: int,
                    **synthesis_kwargs) -> torch.Tensor:
        """Background features (B, C, r, r) in [0,1] (sigmoid of the background generator)."""
        if background_ws is None:
            if z_bg is None:
                raise ValueError("GenHead with a background needs z_bg (or background_ws)")
            background_ws = self.background.mapping(z_bg, None)
        background, _ = self.background.synthesis(background_ws, **synthesis_kwargs)
        background = torch.sigmoid(background)
        if background.shape[-1] != resolution:
            background = F.interpolate(background, size=(resolution, resolution), mode="bilinear",
                                       align_corners=False)
        return background

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, deformer: PartDeformer, z_bg: torch.Tensor | None = None,
                  background_ws: torch.Tensor | None = None, neural_rendering_resolution: int | None = None,
                  ws_super: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  **synthesis_kwargs) -> GenHeadOutput:
        """Render ws (B,num_ws,w_dim) from camera c (B,25) with the FLAME deformer bound to the batch.

        synthesis_kwargs (noise_mode, fused_modconv, ...) go to the StyleGAN2 blocks; the SR module uses
        its own noise_mode (official superresolution_noise_mode 'none').
        """
        cfg = self.cfg
        res = neural_rendering_resolution or self.neural_rendering_resolution
        if cfg.has_superresolution and res > 128:
            raise ValueError(f"neural_rendering_resolution {res} > 128 is the official patch-training path, "
                             "which GenHead does not implement")
        if c.ndim != 2 or c.shape[1] != CAMERA_LABEL_DIM or c.shape[0] != ws.shape[0]:
            raise ValueError(f"render camera c must be (B={ws.shape[0]}, {CAMERA_LABEL_DIM}), got {tuple(c.shape)}")
        cam2world, intrinsics = split_camera_label(c)
        b = ws.shape[0]

        # Part masks from the FLAME mesh, rasterized at the final resolution, then resized (official).
        with torch.no_grad():
            masks = deformer.part_masks(c, cfg.img_resolution)
            eye_mask = resize_mask(masks.eye.to(ws.dtype), res)
            mouth_mask = resize_mask(masks.mouth.to(ws.dtype), res)

        planes, _ = self.backbone.synthesis(ws, **synthesis_kwargs)  # (B, 6*C, T, T)
        planes = planes.view(b, N_PART_PLANES, cfg.plane_features, planes.shape[-2], planes.shape[-1])

        origins, directions = self.ray_sampler(cam2world, intrinsics, res)
        field = part_radiance_field(planes, self.decoder, deformer, eye_mask.reshape(b, -1, 1),
                                    mouth_mask.reshape(b, -1, 1), cfg.rendering, auto_fuse=res > 64,
                                    generator=generator, fused=self.fused_field)
        rendered = render_rays(field, origins, directions, cfg.rendering,
                               cam_z=camera_depth_of_origin(cam2world).to(origins), generator=generator)
        feature_image = to_image(rendered.features, res)  # (B, C, r, r) in [0, 1]
        depth_image = to_image(rendered.depth, res)
        transmittance = 1 - to_image(rendered.weights_sum, res)  # official T_bg

        if cfg.has_background:
            background = self._background(z_bg, background_ws, res, **synthesis_kwargs)
            feature_image = feature_image + transmittance * background
        else:
            background = torch.zeros_like(feature_image)
            feature_image = feature_image + transmittance
        feature_image = 2 * feature_image - 1
        rgb_image = feature_image[:, :3]
        if self.superresolution is not None:
            sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != "noise_mode"}
            sr_image = self.superresolution(rgb_image, feature_image, ws, ws_super=ws_super, **sr_kwargs)
        else:
            sr_image = rgb_image
        return GenHeadOutput(image=sr_image, image_raw=rgb_image, image_feature=feature_image,
                             image_depth=depth_image, seg=(1 - transmittance) * 2 - 1,
                             background=2 * background - 1, eye_mask=eye_mask, mouth_mask=mouth_mask)

    def forward(self, z: torch.Tensor, c: torch.Tensor, c_cond: torch.Tensor, shape: torch.Tensor | None,
                deformer: PartDeformer, z_bg: torch.Tensor | None = None, truncation_psi: float | None = None,
                truncation_cutoff: int | None = None, neural_rendering_resolution: int | None = None,
                update_emas: bool = False, **synthesis_kwargs) -> GenHeadOutput:
        """Sample a batch: z (B,z_dim), render camera c (B,25), conditioning camera c_cond (B,25), FLAME shape.

        truncation_psi / truncation_cutoff default to the config's data-synthesis values (0.95, 14); pass
        truncation_psi=1 for untruncated samples. The background uses z_bg (default: z, as official).
        """
        psi = self.cfg.truncation_psi if truncation_psi is None else truncation_psi
        cutoff = self.cfg.truncation_cutoff if truncation_cutoff is None else truncation_cutoff
        ws = self.mapping(z, c_cond, shape, truncation_psi=psi, truncation_cutoff=cutoff, update_emas=update_emas)
        return self.synthesis(ws, c, deformer, z_bg=z if z_bg is None else z_bg,
                              neural_rendering_resolution=neural_rendering_resolution, **synthesis_kwargs)
