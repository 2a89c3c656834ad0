"""Ψ: one-shot animatable triplane reconstructor of Portrait4D(-v2); Ψ_3d is the same class, static.

Official training/reconstructor/triplane_reconstruct.py (``TriPlaneReconstructorNeutralize``). The
source image goes through the global, detail and background encoders and the NEUTRAL half of the
canonical encoder once (``encode_source``; serving caches the result). Per driving frame
(``render_frame``), the motion half of the canonical encoder and the triplane decoder build the
triplanes, which are volume-rendered from camera ``c`` and super-resolved to the final image.

State-dict keys and shapes equal the official module's, except two things that are not Ψ's own state:
the ``deformer.*`` FLAME buffers (our neck-pose rotation field is passed in as ``deform_fn``) and the
``dataset_label_std`` buffer that the official training loop registers after construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from model.cameras import CAMERA_LABEL_DIM, split_camera_label
from model.networks.psi.appearance_encoders import DetailEncoder, GlobalEncoder
from model.networks.psi.background import BackgroundUNet
from model.networks.psi.canonical_encoder import CanonicalEncoder
from model.networks.psi.config import PsiConfig
from model.networks.psi.segformer import Scale
from model.networks.psi.triplane_decoder import TriplaneDecoder
from model.networks.superresolution import SuperresolutionHybrid8XDC
from model.rendering import ImportanceRenderer, OSGDecoder, plane_mean, sample_from_planes, triplane_axes
from model.rendering.renderer import DeformFn

# Official optimizer grouping (training_loop_recon_v2.py): these canonical-encoder parameters are
# the "motion cross-attention layers" (lr x cross_lr_scale; random init when Ψ starts from Ψ_3d).
_MOTION_PARAMETER_TAGS = ("maps", "proj_y", "norm2", "attn2")


def is_motion_parameter(name: str) -> bool:
    """True for a Ψ parameter name that belongs to the motion cross-attention layers."""
    return name.startswith("encoder_canonical.") and any(tag in name for tag in _MOTION_PARAMETER_TAGS)


@dataclass(frozen=True)
class SourceFeatures:
    """Everything Ψ needs from the source image; independent of the driving frame and camera."""

    neutral_tokens: torch.Tensor  # (B, (S/16)², canonical_dim) after the neutral blocks
    token_grid: tuple[int, int]  # (S/16, S/16)
    detail: torch.Tensor  # (B, detail_channels, S/2, S/2)
    background: torch.Tensor | None  # (B, feature_channels, S, S) in (0, 1), None without background
    motion_scale: Scale  # the same factor scales the neutral and the motion cross-attention
    planes: torch.Tensor | None = None  # (B, 3, C, S/2, S/2): Ψ_3d only (motion-independent)

    @property
    def batch_size(self) -> int:
        return self.neutral_tokens.shape[0]


def _check_batch(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


class Psi(nn.Module):
    """Ψ (``cfg.static=False``) or Ψ_3d (``cfg.static=True``)."""

    def __init__(self, cfg: PsiConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PsiConfig()
        self.cfg = cfg
        self.encoder_global = GlobalEncoder(cfg.resnet, cfg.global_channels, cfg.atrous_rates)
        self.encoder_detail = DetailEncoder(cfg.detail_hidden, cfg.detail_channels)
        self.encoder_canonical = CanonicalEncoder(
            in_channels=cfg.global_channels,
            dim=cfg.canonical_dim,
            num_heads=cfg.canonical_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_blocks_neutral=cfg.num_blocks_neutral,
            num_blocks_motion=cfg.num_blocks_motion,
            motion_dim=cfg.motion_dim,
            motion_hidden_dim=cfg.motion_hidden_dim,
            motion_map_layers=cfg.motion_map_layers,
            motion_token_grid=cfg.motion_token_grid,
            conv_channels=cfg.canonical_conv_channels,
            out_channels=3 * cfg.plane_channels,
        )
        self.generator_triplane = TriplaneDecoder(
            canonical_channels=3 * cfg.plane_channels,
            detail_channels=cfg.detail_channels,
            hidden=cfg.decoder_hidden,
            dim=cfg.decoder_dim,
            num_heads=cfg.decoder_heads,
            mlp_ratio=cfg.mlp_ratio,
            sr_ratio=cfg.decoder_sr_ratio,
            num_blocks=cfg.decoder_blocks,
            plane_channels=cfg.plane_channels,
        )
        if cfg.has_background:
            self.background = BackgroundUNet(cfg.background_channels, cfg.feature_channels)
        self.renderer = ImportanceRenderer()
        self.decoder = OSGDecoder.from_config(cfg.decoder)
        # Inference on CUDA may sample the triplanes and run the decoder in one Triton kernel
        # (model.rendering.fused_field); the engine's animate.fused_field sets it. Not part of the state dict.
        self.fused_field = False
        self.superresolution = SuperresolutionHybrid8XDC(cfg.superresolution)
        # Ψ styles every SR layer with w_avg (zeros unless a checkpoint sets it), official use_ws_ones=False.
        self.register_buffer("w_avg", torch.zeros(cfg.superresolution.w_dim))
        if cfg.static:
            # Ψ_3d keeps the motion layers only so its checkpoints have the official layout; it never
            # uses them, so they are frozen (no unused-parameter surprises in distributed training).
            for name, p in self.named_parameters():
                if is_motion_parameter(name):
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ source-only part
    def encode_source(
        self,
        image: torch.Tensor,
        source_motion: torch.Tensor | None = None,
        motion_scale: Scale = 1.0,
    ) -> SourceFeatures:
        """image (B,3,S,S) in [-1,1], source_motion (B,motion_dim) (its own motion embedding).

        ``motion_scale``: float or (B,) per-sample factor of the cross-attention updates (official
        training sets it to 0 for some samples). Ignored, with ``source_motion``, when static.
        """
        cfg = self.cfg
        s = cfg.img_resolution
        _check_batch("image", image, (image.shape[0], 3, s, s))
        b = image.shape[0]
        if cfg.static:
            source_motion, motion_scale = None, 0.0
        else:
            if source_motion is None:
                raise ValueError("Ψ (static=False) needs source_motion (B, motion_dim) for the neutral blocks")
            _check_batch("source_motion", source_motion, (b, cfg.motion_dim))
            motion_scale = self._per_sample(motion_scale, b, image)
        neutral, h, w = self.encoder_canonical.neutralize(self.encoder_global(image), source_motion, motion_scale)
        background = torch.sigmoid(self.background(image)) if cfg.has_background else None
        source = SourceFeatures(neutral, (h, w), self.encoder_detail(image), background, motion_scale)
        if cfg.static:
            source = replace(source, planes=self._planes(source, None))
        return source

    @staticmethod
    def _per_sample(scale: Scale, batch: int, like: torch.Tensor) -> Scale:
        if isinstance(scale, (int, float)):
            return float(scale)
        scale = torch.as_tensor(scale, device=like.device)
        if scale.numel() != batch:
            raise ValueError(
                f"motion_scale must be a float or hold one value per sample ({batch}), got {tuple(scale.shape)}"
            )
        return scale.reshape(batch, 1, 1).to(like.dtype)

    # ------------------------------------------------------------------ per-frame part
    def _planes(self, source: SourceFeatures, motion: torch.Tensor | None) -> torch.Tensor:
        encoder = self.encoder_canonical
        canonical = encoder.animate(source.neutral_tokens, *source.token_grid, motion, source.motion_scale)
        return self.generator_triplane(canonical, source.detail)

    def planes(self, source: SourceFeatures, motion: torch.Tensor | None = None) -> torch.Tensor:
        """Triplanes (B, 3, plane_channels, S/2, S/2) of the source animated by ``motion`` (B, motion_dim)."""
        if source.planes is not None:
            return source.planes
        if motion is None:
            raise ValueError("Ψ (static=False) needs the driving motion (B, motion_dim)")
        _check_batch("motion", motion, (source.batch_size, self.cfg.motion_dim))
        return self._planes(source, motion)

    def render_frame(
        self,
        source: SourceFeatures,
        motion: torch.Tensor | None,
        c: torch.Tensor,
        neural_rendering_resolution: int | None = None,
        deform_fn: DeformFn | None = None,
        box_warp_scale: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
        super_resolve: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Render the source with driving ``motion`` (B, motion_dim; ignored when static) from camera c (B, 25).

        Returns (official name in brackets where it differs):
          image (B,3,S,S) super-resolved [image_sr]; image_raw (B,3,r,r) [image];
          image_raw_wobg [image_wobg]; image_feature / image_feature_wobg (B,C,r,r);
          image_depth (B,1,r,r); T_bg (B,1,r,r) transmittance to the background; seg = 1 - 2 T_bg;
          planes (B,3,C,S/2,S/2); with a background also background_feature (B,C,r,r) and rgb_bg (B,3,r,r).
        Images are in [-1, 1]; r = neural_rendering_resolution. ``super_resolve=False`` leaves ``image`` out
        (callers that need only the neural-resolution outputs, e.g. a segmentation target, skip the SR network).
        """
        cfg = self.cfg
        b = source.batch_size
        _check_batch("c", c, (b, CAMERA_LABEL_DIM))
        res = neural_rendering_resolution or cfg.neural_rendering_resolution
        planes = self.planes(source, None if cfg.static else motion)

        cam2world, intrinsics = split_camera_label(c)
        rendered = self.renderer.render_image(
            planes,
            self.decoder,
            cam2world,
            intrinsics,
            res,
            cfg.rendering,
            deform_fn,
            box_warp_scale=box_warp_scale,
            generator=generator,
            fused=self.fused_field,
        )
        features_wobg = rendered.features  # (B, C, r, r) in [0, 1]
        transmittance = 1 - rendered.weights_sum  # official T_bg
        result = {"planes": planes, "image_depth": rendered.depth, "T_bg": transmittance}
        features = features_wobg
        if source.background is not None:
            background = source.background
            if background.shape[-1] != res:
                background = F.interpolate(background, size=(res, res), mode="bilinear", align_corners=False)
            features = features + transmittance * background
            result["background_feature"] = 2 * background - 1
            result["rgb_bg"] = result["background_feature"][:, :3]
        features = 2 * features - 1
        features_wobg = 2 * features_wobg - 1
        ws = self.w_avg.reshape(1, 1, -1)  # one style for the whole batch: the SR runs dense convolutions
        if super_resolve:
            result["image"] = self.superresolution(features[:, :3], features, ws)
        result.update(
            image_raw=features[:, :3],
            image_raw_wobg=features_wobg[:, :3],
            image_feature=features,
            image_feature_wobg=features_wobg,
            seg=(1 - transmittance) * 2 - 1,
        )
        return result

    def sample_points(
        self, planes: torch.Tensor, coordinates: torch.Tensor, deform_fn: DeformFn | None = None
    ) -> dict[str, torch.Tensor]:
        """Query the radiance field at (B, P, 3) points (official ``sample_mixed``, density regularization).

        Returns rgb (B,P,C), raw sigma (B,P,1) and the plane-averaged triplane_feature (B,P,plane_channels).
        """
        if deform_fn is not None:
            coordinates = deform_fn(coordinates)
        features = sample_from_planes(
            triplane_axes(device=planes.device), planes, coordinates, self.cfg.rendering.box_warp
        )
        rgb, sigma = self.decoder(features)
        return {"rgb": rgb, "sigma": sigma, "triplane_feature": plane_mean(features)}

    def compile_per_frame(self) -> None:
        """torch.compile (nn.Module.compile: in place, state-dict keys unchanged, dynamic shapes) the modules a
        driving frame runs: the motion cross-attention blocks, the triplane decoder, the radiance decoder and the
        super-resolution network. For long-running inference on CUDA; measured in docs/benchmarks.md."""
        for block in self.encoder_canonical.trans_blocks_motion:
            block.compile(dynamic=True)
        for module in (self.generator_triplane, self.decoder, self.superresolution):
            module.compile(dynamic=True)

    # ------------------------------------------------------------------ both
    def forward(
        self,
        image: torch.Tensor,
        source_motion: torch.Tensor | None,
        motion: torch.Tensor | None,
        c: torch.Tensor,
        neural_rendering_resolution: int | None = None,
        deform_fn: DeformFn | None = None,
        motion_scale: Scale = 1.0,
        box_warp_scale: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """encode_source + render_frame; see both for the arguments and outputs."""
        source = self.encode_source(image, source_motion, motion_scale)
        return self.render_frame(
            source, motion, c, neural_rendering_resolution, deform_fn, box_warp_scale, generator
        )
