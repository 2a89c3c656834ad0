"""Stage `train_psi3d`: the static 3D synthesizer Ψ_3d on GenHead pseudo multi-view data.

Per micro-batch (official loss_recon_v1.py with the paper's schedule): Ψ_3d encodes the source view
and renders the target view's camera; losses are L1 + LPIPS on the four image pairs (SR, raw, raw
without background, background), segmentation L1 (x0.3), ArcFace identity, while early the depth
and triplane terms L_T and, every ``density_reg_every`` steps, the density TV regulariser; once
adversarial training is on, 0.01 x softplus against the dual discriminator (R1 lazily on D).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.assets.networks import build_network
from components.config import P4DConfig
from components.train.conditions import FlameConditioner
from components.config.train import TrainConfig
from components.train.data import MixedStream, OnlineStream, Psi3dBatch, ShardStream, TrainingDataError, data_version
from components.train.engine import DistInfo, Precision, micro_batch_per_gpu
from components.train.loop import MicroResult, StageTask, TrainResult, train
from components.train.models import init_renderer_from_genhead, load_frozen
from components.train.schedule import StepSchedule, lazy_due, psi3d_schedule
from components.train.stage import prepare, sample_cameras_c, tiles
from model import losses as L
from model.networks.psi import Psi
from model.rendering.renderer import DeformFn

REQUIRED_ASSETS = ["genhead", "flame_model", "flame_landmarks", "arcface", "lpips"]
# The config keys this stage reads (its DVC params in pipelines/dag.py are the same; tests hold them equal).
# networks.psi's image size is read too, but the config forces every network's img_resolution equal.
CONFIG_KEYS = ("profile", "seed", "cameras", "losses", "deepspeed", "checkpoints", "train", "psi3d",
               "networks.psi3d", "networks.genhead", "networks.discriminator", "networks.lpips", "networks.arcface",
               "networks.deformation")
ONLINE_CONFIG_KEYS = ("synthesize", "camera_mix_fitted_prob")  # the online GenHead sampler's (--online)
ONLINE_FIXED_IDENTITY = 1 << 41  # sample-grid identities: away from the training draws


class Psi3dGenerator(nn.Module):
    """The G engine's module for Ψ_3d: holds exactly Ψ_3d (as ``psi``: engine checkpoint keys ``psi.*``), so
    DeepSpeed sees its parameters only, and its forward is the stage's generator call."""

    def __init__(self, psi: Psi) -> None:
        super().__init__()
        self.psi = psi

    def forward(self, source_image: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: int,
                deform_fn: DeformFn | None, generator: torch.Generator, triplane_points: torch.Tensor | None = None,
                density_points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode the (B, 3, H, W) source view and render (B, 25) camera ``c``; where a loss term needs it,
        also query the field at (B, P, 3) ``triplane_points`` (L_T) and ``density_points`` (density TV)."""
        psi = self.psi
        source = psi.encode_source(source_image)
        out = psi.render_frame(source, None, c, neural_rendering_resolution, deform_fn, generator=generator)
        if triplane_points is not None:
            out["triplane_feature"] = psi.sample_points(out["planes"], triplane_points, deform_fn)["triplane_feature"]
        if density_points is not None:
            out["density_sigma"] = psi.sample_points(out["planes"], density_points)["sigma"]
        return out


class Psi3dTask(StageTask):
    name = "psi3d"
    ema_rampup: float | None

    def __init__(self, cfg: P4DConfig, train_cfg: TrainConfig, psi, discriminator, lpips, arcface,
                 conditioner: FlameConditioner, data, fixed_stream, device: torch.device, amp: Precision) -> None:
        self.cfg, self.train_cfg, self.amp = cfg, train_cfg, amp
        self.psi, self.discriminator, self.lpips, self.arcface = psi, discriminator, lpips, arcface
        self.conditioner, self.data, self._fixed_stream, self.device = conditioner, data, fixed_stream, device
        self.batch, self.total_images = cfg.psi3d.batch, cfg.psi3d.total_images
        self.ema_rampup = train_cfg.ema_rampup  # official: ramp-up on when not resuming from a pickle
        self.config_keys = CONFIG_KEYS

    def schedule(self, images_seen: int) -> StepSchedule:
        return psi3d_schedule(images_seen, self.cfg.psi3d, self.train_cfg)

    def generator_module(self) -> Psi3dGenerator:
        return Psi3dGenerator(self.psi)

    def _density_points(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """Official density regularisation: N uniform points in [-1, 1]³ and the same points jittered."""
        t = self.train_cfg
        box = self.psi.cfg.rendering.box_warp
        cpu = torch.Generator().manual_seed(generator.initial_seed() + 1)
        initial = torch.rand(b, t.density_reg_points, 3, generator=cpu) * 2 - 1
        perturbed = initial + torch.randn(initial.shape, generator=cpu) * t.density_reg_p_dist * box
        return torch.cat([initial, perturbed], dim=1).to(self.device)

    def generator_micro_step(self, engine, critic, batch: Psi3dBatch, sched: StepSchedule, iteration: int,
                             generator: torch.Generator) -> MicroResult:
        w, t = self.cfg.losses, self.train_cfg
        r = sched.neural_rendering_resolution
        cond = self.conditioner(batch.target_label)
        targets = L.reconstruction_targets(batch.target_image, batch.target_seg, r, batch.target_background)
        use_triplane = sched.early_terms and batch.target_triplane is not None and w.triplane > 0
        use_density = w.density_reg > 0 and lazy_due(iteration, t.density_reg_every)
        out = engine(source_image=batch.source_image, c=cond.c_render, neural_rendering_resolution=r,
                     deform_fn=cond.deform_fn, generator=generator,
                     triplane_points=batch.target_triplane[..., :3] if use_triplane else None,
                     density_points=self._density_points(batch.size, generator) if use_density else None)
        depth = triplane = density = out["image"].new_zeros(())
        with self.amp():
            if sched.early_terms and w.depth > 0:
                depth = L.depth_term(out["image_depth"], batch.target_depth, batch.target_seg)
            if use_triplane:
                triplane = L.triplane_term(out["triplane_feature"], batch.target_triplane[..., 3:])
            if use_density:
                density = L.density_tv_term(out["density_sigma"])
        extra = {"G/depth": (w.depth, depth), "G/triplane": (w.triplane, triplane),
                 "G/density": (w.density_reg * t.density_reg_every, density)}  # lazy: weight x interval
        return self.reconstruction_step(critic, out, targets, batch.target_image, cond, sched, extra)

    def fixed_batch(self, rows: int) -> Psi3dBatch:
        return next(self._fixed_stream).to(self.device)

    @torch.no_grad()
    def sample_rows(self, ema, batch: Psi3dBatch, sched: StepSchedule, views: int) -> list[list[np.ndarray]]:
        """source | target view | Ψ_3d at the target camera | novel views at fixed seed-distribution cameras."""
        cond = self.conditioner(batch.target_label)
        r = sched.neural_rendering_resolution
        with self.amp():
            source = ema.encode_source(batch.source_image)
            output = ema.render_frame(source, None, cond.c_render, r, cond.deform_fn)["image"]
            novel = [ema.render_frame(source, None, c.expand(batch.size, -1), r)["image"]
                     for c in sample_cameras_c(self.cfg.cameras, views, self.device)]
        size = batch.source_image.shape[-1]
        columns = [tiles(col, size) for col in (batch.source_image, batch.target_image, output, *novel)]
        return [[col[i] for col in columns] for i in range(batch.size)]


def _psi3d_streams(cfg: P4DConfig, train_cfg: TrainConfig, data: str | None, online_labels, assets, dist: DistInfo,
                   micro: int, genhead, device):
    """(training stream, sample-grid stream) from stored shards, the online sampler, or both."""
    online = None
    if online_labels:
        from components.assets.flame import load_flame_head
        from components.synthesize import GenHeadSampler, OnlineSynthesizer, load_label_pool

        pool = load_label_pool(online_labels)
        pool.check(cfg.synthesize.max_failure_ratio)
        head = load_flame_head(assets, cfg.networks.deformation).head
        sampler = GenHeadSampler(genhead, head, cfg.synthesize, cfg.networks.genhead.truncation_psi, device)
        online = OnlineSynthesizer(sampler, pool, cfg.cameras, cfg.camera_mix_fitted_prob)
    seed = cfg.seed
    if data is not None:
        stored = ShardStream(str(data), micro, dist.rank, dist.world_size, seed, train_cfg.data_workers,
                             cfg.storage.endpoint_url_env)
        rows = min(train_cfg.sample_grid_rows, stored.dataset.num_identities)
        fixed = ShardStream(str(data), rows, 0, 1, seed + 1, 0, cfg.storage.endpoint_url_env)
        if online is None:
            return stored, fixed
        return MixedStream(stored, OnlineStream(online, micro, dist.rank, dist.world_size)), fixed
    return (OnlineStream(online, micro, dist.rank, dist.world_size),
            OnlineStream(online, train_cfg.sample_grid_rows, 0, 1, first_identity=ONLINE_FIXED_IDENTITY))


def run(cfg: P4DConfig, data: str | None, out: str | Path, assets: str | Path, *, online_labels=None,
        resume: bool = False, device: str = "auto", progress: bool = True,
        checkpoint_store: str | None = None) -> TrainResult:
    """Train Ψ_3d into ``out`` (checkpoints, model/psi3d.safetensors, metrics.jsonl, deepspeed_config.json);
    with ``checkpoint_store`` every checkpoint is uploaded there and a start resumes from it."""
    train_cfg = cfg.train
    if data is None and not online_labels:
        raise TrainingDataError("no training data: pass --data (synthesized shards) and/or --online with --labels")
    dist = prepare(cfg, assets, REQUIRED_ASSETS, device)
    micro = micro_batch_per_gpu(cfg.psi3d.batch, dist.world_size, cfg.deepspeed.gradient_accumulation_steps)
    nets = cfg.networks
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    psi = build_network("psi3d", cfg, dist.device)
    genhead = load_frozen("genhead", assets, cfg, dist.device)
    init_renderer_from_genhead(psi, genhead.state_dict())
    discriminator = build_network("discriminator", cfg, dist.device)
    lpips = load_frozen("lpips_vgg", assets, cfg, dist.device)
    arcface = load_frozen("arcface_r18", assets, cfg, dist.device)
    conditioner = FlameConditioner.from_assets(assets, nets.deformation, nets.image_resolution, str(dist.device))
    stream, fixed = _psi3d_streams(cfg, train_cfg, data, online_labels, assets, dist, micro, genhead, dist.device)
    if not online_labels:
        del genhead  # only the online sampler keeps GenHead
    task = Psi3dTask(cfg, train_cfg, psi.train(), discriminator.train(), lpips, arcface, conditioner, stream,
                     fixed, dist.device, Precision.of(cfg.deepspeed, dist.device))
    if online_labels:
        task.config_keys = CONFIG_KEYS + ONLINE_CONFIG_KEYS
    version = data_version(data) if data is not None else "online"
    params = {**cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
              "run": {"world_size": dist.world_size, "micro_batch_per_gpu": micro, "online": bool(online_labels)}}
    return train(task, cfg, train_cfg, out, dist, resume, params, version, progress, checkpoint_store)

