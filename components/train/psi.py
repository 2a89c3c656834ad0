"""Stage `train_psi`: the 4D synthesizer Ψ on real clip pairs plus frozen-Ψ_3d pseudo multi-view.

Ψ starts from a Ψ_3d run (all but the motion cross-attention layers, which start random). Per
micro-batch, two frames of one clip are the source and the driving frame (official loss_recon_v2.py):
- the frozen Ψ_3d renders the driving frame at its own camera, giving the segmentation target the
  real frame lacks (foreground / background split of the four image pairs);
- with probability ``mot_aug_prob`` (0.9) the driving motion is re-extracted by PD-FGC from a Ψ_3d
  render of the driving frame at a camera from the seed's distribution (official aug_mot_with_G_fix);
- every ``cross_view_every`` steps, Ψ and Ψ_3d both render the driving head without neck rotation
  at another such camera and LPIPS compares their foregrounds (the cross-view term, official
  G_fix_img regularisation; Ψ_3d's box shrinks with the eye opening, official g_fix_reg_img_aug).
Losses otherwise as Ψ_3d: L1 + LPIPS on four pairs, segmentation, identity, adversarial (+ R1 on D).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.assets.networks import build_network, expected_shapes
from components.config import P4DConfig
from components.train.conditions import FlameConditioner
from components.config.train import TrainConfig
from components.train.data import ClipPairStream, PsiBatch, data_version
from components.train.engine import Precision, micro_batch_per_gpu
from components.train.loop import MicroResult, StageTask, TrainResult, train
from components.train.models import (
    MODEL_DIR,
    find_psi3d_weights,
    frozen,
    init_psi_from_psi3d,
    load_frozen,
    load_state,
)
from components.train.schedule import StepSchedule, lazy_due, psi_schedule
from components.train.stage import prepare, sample_cameras_c, tiles
from model import losses as L
from model.cameras import LabelLayout, sample_cameras
from model.networks.psi import Psi
from model.rendering.renderer import DeformFn

REQUIRED_ASSETS = ["flame_model", "flame_landmarks", "arcface", "lpips", "pdfgc"]
# The config keys this stage reads (its DVC params in pipelines/dag.py are the same; tests hold them equal).
CONFIG_KEYS = ("profile", "seed", "cameras", "losses", "deepspeed", "checkpoints", "train", "psi",
               "networks.psi", "networks.psi3d", "networks.discriminator", "networks.pdfgc", "networks.lpips",
               "networks.arcface", "networks.deformation")


class PsiGenerator(nn.Module):
    """The G engine's module for Ψ: holds exactly Ψ (as ``psi``: engine checkpoint keys ``psi.*``), so
    DeepSpeed sees its parameters only, and its forward is the stage's generator call."""

    def __init__(self, psi: Psi) -> None:
        super().__init__()
        self.psi = psi

    def forward(self, source_image: torch.Tensor, source_motion: torch.Tensor, driving_motion: torch.Tensor,
                c: torch.Tensor, neural_rendering_resolution: int, deform_fn: DeformFn | None,
                generator: torch.Generator, c_cross: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode the (B, 3, H, W) source with its (B, motion_dim) motion once; render it with the driving
        motion at (B, 25) camera ``c`` and, when the cross-view term is due, at ``c_cross`` without neck
        rotation (``cross_image`` / ``cross_seg``)."""
        psi = self.psi
        source = psi.encode_source(source_image, source_motion)
        out = psi.render_frame(source, driving_motion, c, neural_rendering_resolution, deform_fn, generator=generator)
        if c_cross is not None:
            cross = psi.render_frame(source, driving_motion, c_cross, neural_rendering_resolution, None,
                                     generator=generator)
            out["cross_image"], out["cross_seg"] = cross["image"], cross["seg"]
        return out


def eye_box_scale(eye_opening: torch.Tensor) -> torch.Tensor:
    """(B,) eyelid gap / width -> (B, 1, 1) box-warp scale in [0.97, 1] (official g_fix_reg_img_aug)."""
    return (eye_opening.clamp(0, 0.3) * 0.3 / 3 + 0.97).clamp(0.97, 1.0).reshape(-1, 1, 1)


class PsiTask(StageTask):
    name = "psi"

    def __init__(self, cfg: P4DConfig, train_cfg: TrainConfig, psi, discriminator, teacher, pdfgc, lpips, arcface,
                 conditioner: FlameConditioner, data: ClipPairStream, fixed_stream: ClipPairStream,
                 device: torch.device, amp: Precision) -> None:
        self.cfg, self.train_cfg, self.amp = cfg, train_cfg, amp
        self.psi, self.discriminator, self.teacher, self.pdfgc = psi, discriminator, teacher, pdfgc
        self.lpips, self.arcface, self.conditioner = lpips, arcface, conditioner
        self.data, self._fixed_stream, self.device = data, fixed_stream, device
        self.batch, self.total_images = cfg.psi.batch, cfg.psi.total_images
        self.ema_rampup = None  # official: Ψ resumes from Ψ_3d, which switches the EMA ramp-up off
        self.config_keys = CONFIG_KEYS

    def schedule(self, images_seen: int) -> StepSchedule:
        return psi_schedule(images_seen, self.cfg.psi, self.train_cfg)

    def generator_module(self) -> PsiGenerator:
        return PsiGenerator(self.psi)

    def _cameras(self, n: int, generator: torch.Generator, salt: int) -> torch.Tensor:
        cpu = torch.Generator().manual_seed(generator.initial_seed() + salt)
        return sample_cameras(self.cfg.cameras, n, cpu)["c"].to(self.device)

    @torch.no_grad()
    def _teacher_targets(self, batch: PsiBatch, shape: torch.Tensor, cond, r: int, cross_due: bool,
                         generator: torch.Generator):
        """(segmentation target at the driving camera, driving motion to use, cross-view target or None, c_cross)."""
        b, prob = batch.size, self.cfg.psi.mot_aug_prob
        with self.amp():
            source = self.teacher.encode_source(batch.driving_image)
            seg = self.teacher.render_frame(source, None, cond.c_render, r, cond.deform_fn, generator=generator,
                                            super_resolve=False)["seg"]  # seg is neural-resolution: no SR needed
            motion = batch.driving_motion
            if prob > 0:
                c_aug = self._cameras(b, generator, 11)
                aug = self.conditioner(batch.driving_label, shape=shape, camera=c_aug, same_head=cond)
                image = self.teacher.render_frame(source, None, c_aug, r, aug.deform_fn, generator=generator)["image"]
                motion_aug = self.pdfgc.motion_embedding(image.float(), aug.landmarks).float()
                cpu = torch.Generator().manual_seed(generator.initial_seed() + 12)
                use = (torch.rand(b, 1, generator=cpu) < prob).to(self.device)
                motion = torch.where(use, motion_aug, motion)
            cross, c_cross = None, None
            if cross_due:
                c_cross = self._cameras(b, generator, 13)
                scale = 1.0
                if self.train_cfg.cross_view_eye_rescale:
                    scale = eye_box_scale(self.conditioner.eye_opening(batch.driving_label, shape))
                out = self.teacher.render_frame(source, None, c_cross, r, None, box_warp_scale=scale,
                                                generator=generator)
                cross = L.foreground_image(out["image"], out["seg"])
        return seg.float(), motion, cross, c_cross

    def generator_micro_step(self, engine, critic, batch: PsiBatch, sched: StepSchedule, iteration: int,
                             generator: torch.Generator) -> MicroResult:
        t = self.train_cfg
        r = sched.neural_rendering_resolution
        shape = batch.source_label[:, LabelLayout.SHAPE]  # official: the source's identity, the driving's motion
        cond = self.conditioner(batch.driving_label, shape=shape)
        cross_due = self.cfg.losses.cross_view > 0 and lazy_due(iteration, t.cross_view_every)
        seg, motion, cross_target, c_cross = self._teacher_targets(batch, shape, cond, r, cross_due, generator)
        out = engine(source_image=batch.source_image, source_motion=batch.source_motion, driving_motion=motion,
                     c=cond.c_render, neural_rendering_resolution=r, deform_fn=cond.deform_fn, generator=generator,
                     c_cross=c_cross)
        targets = L.reconstruction_targets(batch.driving_image, seg, r)
        cross = out["image"].new_zeros(())
        if cross_target is not None:
            with self.amp():
                generated = L.foreground_image(out["cross_image"], out["cross_seg"])
                cross = self.lpips(generated, cross_target).mean()
        extra = {"G/cross_view": (self.cfg.losses.cross_view * t.cross_view_every, cross)}  # lazy: gain = interval
        return self.reconstruction_step(critic, out, targets, batch.driving_image, cond, sched, extra)

    def fixed_batch(self, rows: int) -> PsiBatch:
        return next(self._fixed_stream).to(self.device)

    @torch.no_grad()
    def sample_rows(self, ema, batch: PsiBatch, sched: StepSchedule, views: int) -> list[list[np.ndarray]]:
        """source | driving | Ψ (source animated by the driving motion) | novel views of it."""
        shape = batch.source_label[:, LabelLayout.SHAPE]
        cond = self.conditioner(batch.driving_label, shape=shape)
        r = sched.neural_rendering_resolution
        with self.amp():
            source = ema.encode_source(batch.source_image, batch.source_motion)
            output = ema.render_frame(source, batch.driving_motion, cond.c_render, r, cond.deform_fn)["image"]
            novel = [ema.render_frame(source, batch.driving_motion, c.expand(batch.size, -1), r)["image"]
                     for c in sample_cameras_c(self.cfg.cameras, views, self.device)]
        size = batch.source_image.shape[-1]
        columns = [tiles(col, size) for col in (batch.source_image, batch.driving_image, output, *novel)]
        return [[col[i] for col in columns] for i in range(batch.size)]


def run(cfg: P4DConfig, data: str | Path, psi3d: str | Path, out: str | Path, assets: str | Path, *,
        resume: bool = False, device: str = "auto", progress: bool = True,
        checkpoint_store: str | None = None) -> TrainResult:
    """Train Ψ into ``out`` from the Ψ_3d weights at ``psi3d`` (a `p4d train psi3d` output, or a weights file)."""
    train_cfg = cfg.train  # Ψ's motion_dim equals PD-FGC's: the frozen config refuses anything else (NetworksSection)
    nets = cfg.networks
    ClipPairStream(data, 1, 0, 1, cfg.seed, nets.image_resolution, nets.psi.motion_dim)  # bad data fails here, early
    weights = find_psi3d_weights(psi3d)
    psi3d_state = load_state(weights, expected_shapes("psi3d", cfg))
    dist = prepare(cfg, assets, REQUIRED_ASSETS, device)
    micro = micro_batch_per_gpu(cfg.psi.batch, dist.world_size, cfg.deepspeed.gradient_accumulation_steps)
    torch.manual_seed(cfg.seed)  # the motion layers' random init is the same on every rank
    psi = build_network("psi", cfg, dist.device)
    init_psi_from_psi3d(psi, psi3d_state)
    teacher = build_network("psi3d", cfg, dist.device)
    teacher.load_state_dict(psi3d_state)
    discriminator = build_network("discriminator", cfg, dist.device)
    d_weights = Path(psi3d) / MODEL_DIR / "discriminator.safetensors"
    if d_weights.is_file():  # official v2 resumes D from the static run as well
        discriminator.load_state_dict(load_state(d_weights, expected_shapes("discriminator", cfg)))
    lpips = load_frozen("lpips_vgg", assets, cfg, dist.device)
    arcface = load_frozen("arcface_r18", assets, cfg, dist.device)
    pdfgc = load_frozen("pdfgc_motion_model", assets, cfg, dist.device)
    conditioner = FlameConditioner.from_assets(assets, nets.deformation, nets.image_resolution, str(dist.device))
    stream = ClipPairStream(data, micro, dist.rank, dist.world_size, cfg.seed, nets.image_resolution,
                            nets.psi.motion_dim)
    fixed = ClipPairStream(data, train_cfg.sample_grid_rows, 0, 1, cfg.seed + 1, nets.image_resolution,
                           nets.psi.motion_dim)
    task = PsiTask(cfg, train_cfg, psi.train(), discriminator.train(), frozen(teacher), pdfgc, lpips, arcface,
                   conditioner, stream, fixed, dist.device, Precision.of(cfg.deepspeed, dist.device))
    params = {**cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
              "run": {"world_size": dist.world_size, "micro_batch_per_gpu": micro, "psi3d_weights": _relative(weights, psi3d)}}
    return train(task, cfg, train_cfg, out, dist, resume, params, data_version(data), progress, checkpoint_store)


def _relative(weights: Path, psi3d: str | Path) -> str:
    """The Ψ_3d weights file as a path inside the --psi3d run folder (a parameter names no local absolute path)."""
    base = Path(psi3d)
    return weights.relative_to(base).as_posix() if base.is_dir() and weights.is_relative_to(base) else weights.name
