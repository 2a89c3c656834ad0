"""Render identities' K views with GenHead: one sampler for the offline shards and the online mode.

Per view the sampler returns what the Ψ_3d losses consume (official loss_recon_v1.py with
training_loop_recon_v1.py's targets): the super-resolved image (L1 + LPIPS on SR), the neural-resolution
raw render (raw term), the foreground opacity ``seg`` (raw-no-bg / bg split, seg term), the background
rgb (bg term), the depth (early depth loss) and, optionally, target-space points with their
face-triplane features (early triplane loss L_T).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from components.synthesize.conditions import IdentityConditions, LabelPool, derive_seed, draw_identity
from components.config.synthesize import SynthesizeConfig
from components.synthesize.genhead_deformer import GenHeadDeformer
from model.cameras import CameraDistribution, split_camera_label
from model.deformation import FlameHead
from model.networks.genhead import GenHead
from model.networks.genhead_parts import N_PART_PLANES
from model.rendering.config import RenderingConfig
from model.rendering.ray_sampler import RaySampler, camera_depth_of_origin
from model.rendering.renderer import ray_bounds
from model.rendering.triplane import plane_mean, sample_from_planes, triplane_axes

SALT_RENDER, SALT_ONLINE, SALT_CHUNK = 1, 2, 3


@dataclass
class ViewRenders:
    """B rendered views; images in [-1, 1]."""

    image: torch.Tensor  # (B, 3, S, S) super-resolved
    image_raw: torch.Tensor  # (B, 3, r, r) neural render
    seg: torch.Tensor  # (B, 1, r, r) foreground opacity in [-1, 1]
    background: torch.Tensor  # (B, 3, r, r) background rgb
    depth: torch.Tensor  # (B, 1, r, r) expected ray depth
    triplane: torch.Tensor | None  # (B, N, 3 + C): target-space point, mean face-plane feature

    @staticmethod
    def cat(parts: Sequence["ViewRenders"]) -> "ViewRenders":
        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return ViewRenders(*(join(n) for n in ("image", "image_raw", "seg", "background", "depth", "triplane")))

    def to(self, device: torch.device | str) -> "ViewRenders":
        return ViewRenders(*(None if t is None else t.to(device) for t in (
            self.image, self.image_raw, self.seg, self.background, self.depth, self.triplane)))


def triplane_targets(planes: torch.Tensor, deformer: GenHeadDeformer, c: torch.Tensor, eye_mask: torch.Tensor,
                     mouth_mask: torch.Tensor, rendering: RenderingConfig, n_points: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """(B, n, 3 + C) points along the rays with their face-plane features, outside the eye/mouth parts.

    Official (renderer.py PartDeformImportanceRenderer + training_loop_recon_v1.py): the coarse ray
    samples whose eye selection (eye mask x inside eye box) and mouth mask are zero, 4000 at random,
    each with the mean over the 3 face planes at its face-canonical point. Coarse samples are stratified
    over the ray range, so drawing a uniform depth in that range gives the same distribution.
    """
    b, res = planes.shape[0], eye_mask.shape[-1]
    face_planes = planes.reshape(b, N_PART_PLANES, -1, *planes.shape[-2:])[:, 3:]  # (B, 3, C, T, T)
    cam2world, intrinsics = split_camera_label(c)
    origins, directions = RaySampler()(cam2world, intrinsics, res)  # (B, R, 3)
    start, end = ray_bounds(rendering, origins, camera_depth_of_origin(cam2world).to(origins))
    m = 2 * n_points  # candidates; masked ones are dropped
    pix = torch.randint(res * res, (b, m), generator=generator, device=planes.device)
    index = pix[..., None].expand(b, m, 3)
    if start.shape[1] != 1:
        start, end = start.gather(1, pix[..., None]), end.gather(1, pix[..., None])
    depth = start + (end - start) * torch.rand(b, m, 1, generator=generator, device=planes.device)
    points = origins.gather(1, index) + depth * directions.gather(1, index)  # (B, M, 3)

    parts = deformer(points)
    eye = eye_mask.reshape(b, -1).gather(1, pix).float() * parts.inside_eye_box.float()
    mouth = mouth_mask.reshape(b, -1).gather(1, pix).float()
    keep = (eye == 0) & (mouth == 0)
    features = plane_mean(sample_from_planes(triplane_axes(device=planes.device), face_planes.float(),
                                             parts.canonical_face.float(), rendering.box_warp))  # (B, M, C)
    rows = torch.cat([points.float(), features], dim=-1)
    # Kept candidates first (in their random order); cycle through them when fewer than n survive.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    count = keep.sum(1, keepdim=True).clamp_min(1)
    pick = order.gather(1, torch.arange(n_points, device=planes.device)[None].expand(b, -1) % count)
    return rows.gather(1, pick[..., None].expand(b, n_points, rows.shape[-1]))


class GenHeadSampler:
    """GenHead + FLAME head on one device; ``render`` draws nothing itself, so results follow the seed."""

    def __init__(self, genhead: GenHead, head: FlameHead, cfg: SynthesizeConfig, truncation_psi: float,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.genhead = genhead.eval().requires_grad_(False).to(self.device)
        self.genhead.fused_field = cfg.fused_field and self.device.type == "cuda"
        self.head = head.to(self.device)
        self.cfg = cfg
        self.truncation_psi = truncation_psi
        self.truncation_cutoff = genhead.cfg.truncation_cutoff
        if cfg.neural_rendering_resolution > genhead.cfg.img_resolution:
            raise ValueError(f"neural_rendering_resolution {cfg.neural_rendering_resolution} exceeds GenHead's "
                             f"image size {genhead.cfg.img_resolution}")

    @property
    def z_dim(self) -> int:
        return self.genhead.cfg.z_dim

    def _autocast(self):
        if self.cfg.dtype == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def _render_chunk(self, views: Sequence[tuple[IdentityConditions, int]], generator: torch.Generator) -> ViewRenders:
        dev = self.device

        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(cond, name) for cond, _ in views]).to(dev)

        z, shape, c_cond = stack("z"), stack("shape"), stack("c_cond")
        expression, jaw, eye = stack("expression"), stack("jaw_pose"), stack("eye_pose")
        c = torch.stack([cond.c[v] for cond, v in views]).to(dev)
        deformer = GenHeadDeformer(self.head, shape, expression, torch.zeros_like(jaw), jaw, eye)  # neck pose 0

        captured: dict[str, torch.Tensor] = {}
        hook = None
        if self.cfg.triplane_points:
            hook = self.genhead.backbone.synthesis.register_forward_hook(
                lambda _m, _i, out: captured.__setitem__("planes", out[0] if isinstance(out, tuple) else out))
        try:
            with self._autocast():
                g = self.genhead
                ws = g.mapping(z, c_cond, shape, truncation_psi=self.truncation_psi,
                               truncation_cutoff=self.truncation_cutoff)
                # official: the SR module is styled with the average latent (truncation_psi=0)
                ws_super = g.mapping(z, c_cond, shape, truncation_psi=0.0, truncation_cutoff=self.truncation_cutoff)
                out = g.synthesis(ws, c, deformer, z_bg=z, ws_super=ws_super,
                                  neural_rendering_resolution=self.cfg.neural_rendering_resolution,
                                  generator=generator, noise_mode=self.cfg.noise_mode)
                triplane = None
                if self.cfg.triplane_points:
                    triplane = triplane_targets(captured["planes"], deformer, c, out.eye_mask, out.mouth_mask,
                                                g.cfg.rendering, self.cfg.triplane_points, generator)
        finally:
            if hook is not None:
                hook.remove()
        f32 = torch.float32
        return ViewRenders(
            image=out.image.to(f32), image_raw=out.image_raw.to(f32), seg=out.seg.to(f32),
            background=out.background[:, :3].to(f32), depth=out.image_depth.to(f32),
            triplane=None if triplane is None else triplane.to(f32))

    def render(self, views: Sequence[tuple[IdentityConditions, int]], seed: int) -> ViewRenders:
        """Render (identity conditions, view index) pairs in chunks of ``cfg.batch``; chunk j uses seed (seed, j)."""
        parts = []
        for j in range(0, len(views), self.cfg.batch):
            g = torch.Generator(device=self.device).manual_seed(derive_seed(seed, SALT_CHUNK, j // self.cfg.batch))
            parts.append(self._render_chunk(views[j : j + self.cfg.batch], g))
        return ViewRenders.cat(parts)


class OnlineSynthesizer:
    """Fresh multi-view batches for train_psi3d, drawn exactly as the stored shards are.

    ``draw(identities)`` returns a dict with the reader's keys (``components.synthesize.reader``),
    tensors on the sampler's device with a leading (n, K) shape. ``batches(n)`` never ends; with
    ``rank`` / ``world_size`` each rank draws disjoint identities. Use a seed different from a stored
    dataset's seed when training on both, or the online identities repeat the stored ones.
    """

    def __init__(self, sampler: GenHeadSampler, pool: LabelPool, cameras: CameraDistribution, fitted_prob: float,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.sampler, self.pool, self.cameras, self.fitted_prob = sampler, pool, cameras, fitted_prob
        self.rank, self.world_size = rank, world_size

    def conditions(self, identity: int) -> IdentityConditions:
        return draw_identity(self.pool, identity, self.sampler.cfg, self.cameras, self.fitted_prob, self.sampler.z_dim)

    def draw(self, identities: Sequence[int]) -> dict[str, torch.Tensor]:
        conds = [self.conditions(i) for i in identities]
        k = self.sampler.cfg.views
        renders = self.sampler.render([(cond, v) for cond in conds for v in range(k)],
                                      derive_seed(self.sampler.cfg.seed, SALT_ONLINE, identities[0]))
        dev = self.sampler.device

        def per_identity(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(len(conds), k, *t.shape[1:])

        batch = {
            "identity": torch.tensor(list(identities), device=dev),
            "image": per_identity(renders.image),
            "image_raw": per_identity(renders.image_raw),
            "seg": per_identity(renders.seg),
            "bg": per_identity(renders.background),
            "depth": per_identity(renders.depth),
            "label": torch.stack([cond.labels() for cond in conds]).to(dev),
            "camera_fitted": torch.stack([cond.camera_fitted for cond in conds]).to(dev),
        }
        if renders.triplane is not None:
            batch["triplane"] = per_identity(renders.triplane)
        return batch

    def batches(self, n_identities: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        step = 0
        while True:
            first = start + (step * self.world_size + self.rank) * n_identities
            yield self.draw(range(first, first + n_identities))
            step += 1
