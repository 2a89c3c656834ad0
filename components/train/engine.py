"""DeepSpeed glue: process group, the generated DeepSpeed config, and one engine each for G and D.

The DeepSpeed JSON is a pure function of the typed config and the world size (``deepspeed_config``);
it is written into the run folder and logged, never edited by hand. The global batch is the
config's (32 in ``paper``) whatever the GPU count: micro-batch per GPU = batch / (world x accumulation).

G and D each get an engine: both are trained with gradients all-reduced across ranks, and both have
optimizer state worth partitioning with ZeRO. DeepSpeed hooks the outputs of ``engine(...)`` to scale
gradients on backward, so everything that back-propagates through an engine's output must go through
that engine's ``backward``. Hence D's loss, R1's ``autograd.grad`` included, is computed INSIDE the D
engine's forward (``DiscriminatorObjective`` below); and G's engine wraps the stage's generator module
(psi3d.Psi3dGenerator, psi.PsiGenerator), whose forward returns the render, whose losses (LPIPS,
ArcFace, D as a fixed critic with ``requires_grad`` off) are back-propagated with G's ``backward``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from components.errors import P4DError
from components.train import deepspeed_compat
from model.losses import discriminator_adversarial_term, r1_term


class DistributedSetupError(P4DError):
    """The process group or the batch split cannot be set up; the message says which setting to change."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto") -> DistInfo:
    """Join (or, without torchrun, create a one-process) group: nccl on CUDA, gloo on CPU.

    On CUDA this also turns cuDNN autotuning on for the process."""
    import deepspeed

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ:  # plain `p4d train ...`: a world of one
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DistributedSetupError("--device cuda but no CUDA device is visible; use --device cpu")
        dev = torch.device("cuda", local_rank if device == "cuda" else torch.device(device).index)
        torch.cuda.set_device(dev)
        # cuDNN autotuning: training shapes are fixed within a schedule phase, and without it cuDNN's
        # heuristics picked 20-120 ms kernels for some of the discriminator's 512² convolutions (H200 profile).
        torch.backends.cudnn.benchmark = True
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistInfo(torch.distributed.get_rank(), local_rank, torch.distributed.get_world_size(), dev)


def micro_batch_per_gpu(global_batch: int, world_size: int, accumulation: int) -> int:
    per_step = world_size * accumulation
    if global_batch % per_step:
        raise DistributedSetupError(
            f"global batch {global_batch} is not divisible by world size {world_size} x gradient_accumulation_steps "
            f"{accumulation}; change deepspeed.gradient_accumulation_steps or the number of processes"
        )
    return global_batch // per_step


def deepspeed_config(section, global_batch: int, world_size: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed config dict of ``section`` (P4DConfig.deepspeed) for this world size and device.

    bf16 is DeepSpeed's ``torch_autocast`` (fp32 master weights, bf16 matmuls / convolutions) rather
    than its ``bf16`` mode (bf16 weights): the volume renderer's transmittance products and the
    StyleGAN2 modulated convolutions stay accurate in fp32 weights. On CPU it is off (fp32).
    """
    if section.zero_stage == 3:
        raise DistributedSetupError(
            "deepspeed.zero_stage 3 is not supported by the GAN trainers: the discriminator runs as a fixed "
            "critic inside the generator step and the EMA reads full weights; use 0, 1 or 2"
        )
    micro = micro_batch_per_gpu(global_batch, world_size, section.gradient_accumulation_steps)
    bf16 = uses_bf16(section, device_type)
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": section.gradient_accumulation_steps,
        "gradient_clipping": section.gradient_clipping,
        "zero_optimization": {"stage": section.zero_stage},
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"} if bf16 else {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our Adam with per-group learning rates (motion layers)
        "steps_per_print": 2**31 - 1,  # progress and metrics are ours
        "wall_clock_breakdown": False,
        "dump_state": False,
    }


def uses_bf16(section, device_type: str) -> bool:
    """bf16 autocast on CUDA when the DeepSpeed section asks for it; CPU runs fp32 (the one rule for both)."""
    return bool(section.bf16 and device_type == "cuda")


@dataclass(frozen=True)
class Precision:
    """The engines' precision for the work outside them (losses, frozen networks, sample grids).

    A stage's task is built with it (``Precision.of(cfg.deepspeed, device)``); ``deepspeed_config`` reads
    the same rule (``uses_bf16``), so the engines and the task cannot disagree. Call it for a context.
    """

    bf16: bool
    device_type: str

    @classmethod
    def of(cls, section, device: torch.device) -> "Precision":
        return cls(uses_bf16(section, device.type), device.type)

    def __call__(self):
        if self.bf16:
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_engine(module: nn.Module, param_groups: list[dict], ds_config: dict[str, Any], betas, eps: float):
    """A DeepSpeed engine around ``module`` with our Adam over ``param_groups`` (each with its lr and name)."""
    groups = [g for g in param_groups if g["params"]]
    optimizer = torch.optim.Adam(groups, betas=tuple(betas), eps=eps)
    return deepspeed_compat.initialize(module, optimizer, ds_config)


def set_learning_rates(engine, rates: dict[str, float]) -> None:
    for group in engine.optimizer.param_groups:
        if group.get("name") in rates:
            group["lr"] = rates[group["name"]]


class DiscriminatorObjective(nn.Module):
    """D engine's module: returns D's loss (softplus terms + lazy R1) for real and generated inputs.

    Inputs are dicts with ``image``, ``image_raw``, ``uv``, ``seg``; ``r1_gain`` = 0 skips R1 (lazy
    regularization runs it every N-th step with gain N, official D_reg_interval).
    """

    def __init__(self, discriminator: nn.Module, gammas: dict[str, float]) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.gammas = gammas

    def logits(self, x: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x["image"], c, x["image_raw"], x["uv"], x["seg"])

    def forward(self, real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], c: torch.Tensor,
                r1_gain: float) -> dict[str, torch.Tensor]:
        fake_logits = self.logits({k: v.detach() for k, v in fake.items()}, c)
        if r1_gain > 0:
            real = {k: v.detach().requires_grad_(True) for k, v in real.items()}
        real_logits = self.logits(real, c)
        loss = discriminator_adversarial_term(real_logits, fake_logits)
        r1 = loss.new_zeros(())
        if r1_gain > 0:
            with torch.autocast(real_logits.device.type, enabled=False):
                r1 = r1_term(real_logits.float(), real, self.gammas)
            loss = loss + r1 * r1_gain
        return {
            "loss": loss,
            "r1": r1.detach(),
            "real_score": real_logits.detach().mean(),
            "fake_score": fake_logits.detach().mean(),
        }
