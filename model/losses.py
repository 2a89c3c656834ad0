"""Loss terms of Ψ_3d and Ψ training as pure tensor functions (official training/loss/loss_recon_v1.py, v2).

Images are in [-1, 1]; segmentations are in [-1, 1] too (foreground opacity x 2 - 1), as the
official code keeps them. Networks (LPIPS, ArcFace, discriminator) are passed in as callables, so
nothing here owns weights or reads files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from model.networks.discriminator import filtered_resize

ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B,3,H,W) x2 -> (B,)


def to_unit(seg: torch.Tensor) -> torch.Tensor:
    """[-1, 1] segmentation -> [0, 1] opacity."""
    return (seg + 1) * 0.5


def composite(image: torch.Tensor, weight01: torch.Tensor) -> torch.Tensor:
    """Multiply an image in [-1, 1] by a [0, 1] weight in [0, 1] space (official ((x+1)/2 * w) * 2 - 1)."""
    return ((image + 1) * 0.5 * weight01) * 2 - 1


class ReconstructionTargets(NamedTuple):
    """The four target images of the reconstruction loss at neural resolution r (plus the full one)."""

    image: torch.Tensor  # (B, 3, S, S) super-resolved target
    image_raw: torch.Tensor  # (B, 3, r, r) filtered resize of the target
    image_raw_wobg: torch.Tensor  # (B, 3, r, r) foreground only
    background: torch.Tensor  # (B, 3, r, r) background target
    seg: torch.Tensor  # (B, 1, r, r) target segmentation in [-1, 1]
    background_given: bool  # True: ``background`` is a rendered background (GenHead), not a masked photo


def reconstruction_targets(
    image: torch.Tensor, seg: torch.Tensor, resolution: int, background: torch.Tensor | None = None
) -> ReconstructionTargets:
    """image (B,3,S,S), seg (B,1|3,h,w) in [-1,1], optional rendered background (B,3,h,w) -> targets at r².

    Official: raw targets are filtered resizes of the SR target; the foreground/background split uses
    the resized segmentation; with a rendered background (synthetic data) it is the bg target itself.
    """
    raw = filtered_resize(image, resolution)
    seg_r = filtered_resize(seg, resolution)[:, :1]
    seg01 = to_unit(seg_r)
    wobg = composite(raw, seg01)
    if background is not None:
        bg = filtered_resize(background[:, :3], resolution)
    else:
        bg = composite(raw, 1 - seg01)
    return ReconstructionTargets(image, raw, wobg, bg, seg_r, background is not None)


def _generated_background(gen: dict[str, torch.Tensor], targets: ReconstructionTargets) -> torch.Tensor:
    bg = gen["rgb_bg"]
    if targets.background_given:
        return bg
    # Official, without a rendered target background: the learned background only where the target is not head.
    return composite(bg, 1 - to_unit(targets.seg))


Pair = tuple[torch.Tensor, torch.Tensor]


def image_pairs(gen: dict[str, torch.Tensor], targets: ReconstructionTargets) -> list[Pair]:
    """The four (generated, target) pairs: SR, raw, raw without background, background."""
    pairs = [
        (gen["image"], targets.image),
        (gen["image_raw"], targets.image_raw),
        (gen["image_raw_wobg"], targets.image_raw_wobg),
    ]
    if "rgb_bg" in gen:
        pairs.append((_generated_background(gen, targets), targets.background))
    return pairs


def l1_term(pairs: list[Pair]) -> torch.Tensor:
    """Sum over pairs of the mean absolute difference (scalar)."""
    return sum(torch.abs(g - t).mean() for g, t in pairs)


def lpips_term(pairs: list[Pair], lpips: ImageDistance) -> torch.Tensor:
    """Sum over pairs of the batch-mean LPIPS distance (scalar)."""
    return sum(lpips(g, t).mean() for g, t in pairs)


def segmentation_term(gen_seg: torch.Tensor, target_seg: torch.Tensor) -> torch.Tensor:
    return torch.abs(target_seg - gen_seg).mean()


def identity_term(gen_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of identity features (B, D), batch mean; the target side is detached."""
    return torch.mean(1 - F.cosine_similarity(gen_features, target_features.detach(), dim=-1))


def depth_term(gen_depth: torch.Tensor, target_depth: torch.Tensor, target_seg: torch.Tensor) -> torch.Tensor:
    """L1 of depth (B,1,r,r) on the target's foreground (official early depth loss)."""
    if target_depth.shape[-1] != gen_depth.shape[-1]:
        target_depth = F.interpolate(target_depth, size=gen_depth.shape[-2:], mode="bilinear", align_corners=False)
    if target_seg.shape[-1] != gen_depth.shape[-1]:
        target_seg = filtered_resize(target_seg, gen_depth.shape[-1])
    return torch.abs((target_depth - gen_depth) * to_unit(target_seg[:, :1])).mean()


def triplane_term(gen_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """L1 of triplane features (B,N,C) at the same points (official early L_T)."""
    if gen_features.shape != target_features.shape:
        raise ValueError(
            f"triplane features disagree: generated {tuple(gen_features.shape)} "
            f"vs target {tuple(target_features.shape)}"
        )
    return torch.abs(target_features - gen_features).mean()


def density_tv_term(sigma: torch.Tensor) -> torch.Tensor:
    """sigma (B, 2N, 1) at N random points then the same N points perturbed -> L1 between the halves."""
    n = sigma.shape[1] // 2
    return F.l1_loss(sigma[:, :n], sigma[:, n : 2 * n])


def generator_adversarial_term(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss softplus(-D(G)) (batch mean)."""
    return F.softplus(-fake_logits).mean()


def discriminator_adversarial_term(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(G)) + softplus(-D(x)) (batch means)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_term(
    real_logits: torch.Tensor, inputs: dict[str, torch.Tensor], gammas: dict[str, float]
) -> torch.Tensor:
    """R1 on the real D inputs: sum_k gamma_k / 2 x |dD/dx_k|² per sample, batch mean.

    ``inputs`` are the (requires_grad) real tensors the logits came from; the graph is kept so the
    penalty can be back-propagated into D (official dual-discrimination R1 with uv / seg gammas).
    """
    names = [k for k in inputs if gammas.get(k, 0) > 0]
    grads = torch.autograd.grad(real_logits.sum(), [inputs[k] for k in names], create_graph=True)
    penalty = real_logits.new_zeros(real_logits.shape[0])
    for name, g in zip(names, grads):
        penalty = penalty + g.square().sum(dim=(1, 2, 3)) * (gammas[name] / 2)
    return penalty.mean()


def foreground_image(image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """SR image (B,3,S,S) with the background removed by a (B,1,r,r) segmentation (official G_fix_img reg)."""
    return composite(image, to_unit(filtered_resize(seg, image.shape[-1])))
