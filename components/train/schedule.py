"""Training schedules as pure functions of the images seen (so they do not depend on the GPU count).

Every switch is evaluated at the START of an iteration with the images seen before it: an iteration
that begins below a threshold runs with the old setting even if it ends above it (official
``cur_nimg`` comparisons in loss_recon_v1.py happen before ``cur_nimg += batch_size``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepSchedule:
    """Everything that changes with the images seen, for one iteration."""

    images_seen: int
    adversarial: bool  # G's adversarial term and D training
    renderer_frozen: bool  # MLP radiance decoder + super-resolution hold their weights
    early_terms: bool  # depth loss and triplane loss L_T (Ψ_3d)
    identity: bool  # ArcFace identity loss
    neural_rendering_resolution: int
    lr: float  # generator, all but the motion layers
    lr_motion: float  # generator, motion cross-attention layers
    d_lr: float

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def adversarial_on(images_seen: int, start_images: int) -> bool:
    return images_seen >= start_images


def renderer_frozen(images_seen: int, frozen_until_images: int) -> bool:
    return images_seen < frozen_until_images


def early_terms_on(images_seen: int, until_images: int) -> bool:
    return images_seen < until_images


def neural_resolution(images_seen: int, initial: int, final: int, ramp_start: int, ramp_images: int) -> int:
    """Linear ramp from ``initial`` to ``final`` over ``ramp_images`` starting at ``ramp_start``.

    Rounded half-to-even like the official ``np.rint`` (loss_recon_v1.py); a zero-length ramp jumps.
    """
    if ramp_images <= 0:
        alpha = 1.0 if images_seen >= ramp_start else 0.0
    else:
        alpha = min(max((images_seen - ramp_start) / ramp_images, 0.0), 1.0)
    return int(round(initial * (1 - alpha) + final * alpha))


def ema_beta(images_seen: int, batch: int, half_life_images: int, rampup: float | None) -> float:
    """Per-iteration EMA decay (official training_loop_recon_v*.py): half-life in images, ramped up early.

    The official loop scales the half-life with the batch (ema_kimg = batch x 10 / 32); our config
    gives it in images for the paper's batch of 32, so the same scaling is applied here.
    """
    half_life = half_life_images * batch / 32
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch / half_life)


def lazy_due(iteration: int, every: int) -> bool:
    """Lazy regularization runs on iterations 0, N, 2N, ... (official ``batch_idx % interval == 0``)."""
    return iteration % every == 0


def psi3d_schedule(images_seen: int, sched, train) -> StepSchedule:
    """``sched``: P4DConfig.psi3d; ``train``: TrainConfig."""
    return StepSchedule(
        images_seen=images_seen,
        adversarial=adversarial_on(images_seen, sched.adversarial_start_images),
        renderer_frozen=renderer_frozen(images_seen, sched.renderer_frozen_until_images),
        early_terms=early_terms_on(images_seen, sched.depth_and_triplane_loss_until_images),
        identity=images_seen >= train.identity_start_images,
        neural_rendering_resolution=neural_resolution(
            images_seen,
            sched.neural_resolution_initial,
            sched.neural_resolution_final,
            sched.resolution_ramp_start_images,
            sched.resolution_ramp_images,
        ),
        lr=sched.lr,
        lr_motion=sched.lr,  # Ψ_3d's motion layers are frozen (static); the value is never used
        d_lr=sched.d_lr,
    )


def psi_schedule(images_seen: int, sched, train) -> StepSchedule:
    """Ψ: everything on from the start (it continues Ψ_3d), neural rendering 128² throughout."""
    del train
    return StepSchedule(
        images_seen=images_seen,
        adversarial=True,
        renderer_frozen=False,
        early_terms=False,
        identity=True,
        neural_rendering_resolution=sched.neural_resolution,
        lr=sched.lr,
        lr_motion=sched.lr_motion,
        d_lr=sched.d_lr,
    )


def iterations(total_images: int, batch: int) -> int:
    """Iterations to see at least ``total_images`` with a global batch of ``batch``."""
    return math.ceil(total_images / batch)
