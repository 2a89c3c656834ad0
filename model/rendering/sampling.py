"""Where to sample along rays: stratified coarse depths and importance (inverse-CDF) fine depths.

Random draws go through ``generator`` (None = torch's global RNG, as official; otherwise a generator
on the tensors' device) so renders are reproducible for a fixed seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Official sample_importance: blurred weights get this floor so empty rays still spread samples.
_WEIGHT_FLOOR = 0.01


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def sample_stratified(
    ray_start: torch.Tensor,
    ray_end: torch.Tensor,
    n_rays: int,
    n_samples: int,
    disparity_space: bool = False,
    perturb: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Coarse depths (B, n_rays, n_samples, 1), sorted along each ray.

    ray_start / ray_end: (B, R', 1) with R' = n_rays, or R' = 1 to share bounds AND jitter across
    all rays of an image (official 'auto-plane' mode). Evenly spaced from start to end (inclusive),
    each jittered forward by up to one spacing when ``perturb`` (official: the last sample may
    pass ray_end by up to one spacing). With ``disparity_space`` the spacing and jitter are in 1/depth.
    """
    if n_samples < 2:
        raise ValueError(f"need at least 2 samples per ray, got {n_samples}")
    ray_start, ray_end = torch.broadcast_tensors(ray_start, ray_end)
    if ray_start.dim() != 3 or ray_start.shape[-1] != 1 or ray_start.shape[1] not in (1, n_rays):
        raise ValueError(f"ray bounds must be (B, 1 or {n_rays}, 1), got {tuple(ray_start.shape)}")
    start, end = ray_start.unsqueeze(-2), ray_end.unsqueeze(-2)  # (B, R', 1, 1)
    steps = torch.arange(n_samples, dtype=torch.float32, device=start.device) / (n_samples - 1)
    steps = steps.to(start.dtype).reshape(1, 1, n_samples, 1)
    b, r = start.shape[:2]
    if disparity_space:
        t = steps.expand(b, r, n_samples, 1)
        if perturb:
            t = t + _uniform((b, r, n_samples, 1), start, generator) / (n_samples - 1)
        depths = 1.0 / ((1.0 - t) / start + t / end)
    else:
        depths = start + steps * (end - start)
        if perturb:
            spacing = (end - start) / (n_samples - 1)
            if r == 1:
                # Official draws the shared jitter sample-major ((S, B) in memory); same layout here
                # so that a seeded render reproduces the official one exactly.
                jitter = _uniform((n_samples, b, 1, 1), start, generator).permute(1, 2, 0, 3)
            else:
                jitter = _uniform((b, r, n_samples, 1), start, generator)
            depths = depths + jitter * spacing
    return depths.expand(b, n_rays, n_samples, 1)


def sample_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    deterministic: bool = False,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inverse-CDF sampling of a piecewise-constant pdf (NeRF; official sample_pdf).

    bins (N, K+1) sorted edges, weights (N, K) >= 0 -> (N, n_samples) depths inside [bins[0], bins[K]].
    ``deterministic`` uses evenly spaced quantiles 0..1 instead of uniform draws.
    """
    if bins.dim() != 2 or weights.dim() != 2 or bins.shape != (weights.shape[0], weights.shape[1] + 1):
        raise ValueError(f"need bins (N, K+1) and weights (N, K), got {tuple(bins.shape)}, {tuple(weights.shape)}")
    n_rays, n_bins = weights.shape
    pdf = (weights + eps) / (weights + eps).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], dim=-1)  # (N, K+1), 0 .. 1
    if deterministic:
        u = torch.linspace(0, 1, n_samples, dtype=cdf.dtype, device=cdf.device).expand(n_rays, n_samples)
    else:
        u = _uniform((n_rays, n_samples), cdf, generator)
    u = u.contiguous()

    upper = torch.searchsorted(cdf, u, right=True)
    lo_idx = (upper - 1).clamp(min=0)
    hi_idx = upper.clamp(max=n_bins)
    cdf_lo, cdf_hi = cdf.gather(1, lo_idx), cdf.gather(1, hi_idx)
    bin_lo, bin_hi = bins.gather(1, lo_idx), bins.gather(1, hi_idx)
    span = cdf_hi - cdf_lo
    # A (near-)empty bin is never chosen by u anyway; any denominator avoids 0/0 there.
    span = torch.where(span < eps, torch.ones_like(span), span)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


@torch.no_grad()
def sample_importance(
    depths: torch.Tensor,
    weights: torch.Tensor,
    n_importance: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fine depths (B, R, n_importance, 1) drawn where the coarse weights are high (no gradient).

    depths (B, R, S, 1) coarse depths; weights (B, R, S-1, 1) from the ray marcher.
    """
    b, r, s, _ = depths.shape
    if weights.shape[:3] != (b, r, s - 1):
        raise ValueError(f"weights must be (B, R, S-1, 1) for depths {tuple(depths.shape)}, got {tuple(weights.shape)}")
    z = depths.reshape(b * r, s).float()
    w = weights.reshape(b * r, 1, s - 1).float()
    # Smooth the weights (official: max-pool then average-pool, both width 2) and floor them.
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + _WEIGHT_FLOOR  # (N, S-1)
    z_mid = (z[:, :-1] + z[:, 1:]) / 2  # (N, S-1)
    # Official passes all S-1 midpoints as bins but only the inner S-3 weights, so only the first
    # S-2 midpoints are ever reached; slice to that consistent (edges = weights + 1) form.
    fine = sample_pdf(z_mid[:, :-1], w[:, 1:-1], n_importance, deterministic, generator=generator)
    return fine.reshape(b, r, n_importance, 1).to(depths.dtype)


def unify_samples(
    depths_a: torch.Tensor,
    colors_a: torch.Tensor,
    densities_a: torch.Tensor,
    depths_b: torch.Tensor,
    colors_b: torch.Tensor,
    densities_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two sample sets of the same rays along dim -2 and sort them by depth."""
    depths = torch.cat([depths_a, depths_b], dim=-2)
    colors = torch.cat([colors_a, colors_b.to(colors_a.dtype)], dim=-2)
    densities = torch.cat([densities_a, densities_b.to(densities_a.dtype)], dim=-2)
    depths, order = torch.sort(depths, dim=-2)
    colors = colors.gather(-2, order.expand(*order.shape[:-1], colors.shape[-1]))
    densities = densities.gather(-2, order)
    return depths, colors, densities
