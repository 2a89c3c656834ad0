"""Every place the trainer relies on DeepSpeed behaviour beyond its public API, checked for ONE version.

Two things need DeepSpeed's internals:

- ``initialize``: DeepSpeed 0.19.8 broadcasts rank 0's weights at ``deepspeed.initialize`` by viewing
  each parameter as bytes, which raises for 0-dim parameters (StyleGAN2's ``noise_strength``, kept 0-dim
  for the official key shapes). It skips parameters carrying the (private) ``ds_optim_param`` attribute,
  so those few are tagged and broadcast here instead.
- ``load_zero_regrouped``: resuming a ZeRO-1/2 checkpoint on another number of processes. DeepSpeed
  refuses that (its only route, a universal checkpoint made by ``ds_to_universal``, fails on the same
  0-dim parameters: ``torch.cat`` of zero-dimensional slices), so the optimizer's partitions are re-cut
  here from the private attributes of its ZeRO optimizer (``single_partition_of_fp32_groups``,
  ``partition_size``, ``dp_process_group``, ``_lazy_init_hp_params_optimizer_state``) and the layout of
  its checkpoint files.

Both were read against ``PINNED_VERSION``, the version pyproject.toml pins. A test fails when another
version is installed: whoever bumps DeepSpeed re-checks this module (the 2-process runs in
tests/components/test_train.py go through ``initialize``; test_train_resume_world.py through the re-cutting)
and then moves the pin here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.errors import P4DError

PINNED_VERSION = "0.19.8"  # pyproject.toml: deepspeed==0.19.8; the private attributes below are this version's
MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file names inside an engine checkpoint folder
OPTIM_SHARD_GLOB = "zero_pp_rank_*_mp_rank_00_optim_states.pt"


class ZeroLayoutError(P4DError):
    """A ZeRO checkpoint's files do not describe the optimizer being resumed (shard count, groups)."""


def installed_version() -> str:
    from importlib.metadata import version

    return version("deepspeed")


def version_problem() -> str | None:
    """Why this module cannot be trusted with the installed DeepSpeed, or None when it is the pinned one."""
    found = installed_version()
    if found == PINNED_VERSION:
        return None
    return (f"DeepSpeed {found} is installed but components/train/deepspeed_compat.py was written against "
            f"{PINNED_VERSION}: re-check the private attributes it reads (ds_optim_param tagging at initialize, "
            f"ZeRO partition re-cutting on resume), then set PINNED_VERSION = {found!r}")


def initialize(module: nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict):
    """``deepspeed.initialize`` for a module that may hold 0-dim parameters; returns the engine."""
    import deepspeed

    scalars = [p for p in module.parameters() if p.dim() == 0]
    for p in scalars:
        p.ds_optim_param = True  # DeepSpeed's own rank-0 broadcast skips parameters with this attribute
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
    if torch.distributed.get_world_size() > 1:
        for p in scalars:
            torch.distributed.broadcast(p.data, src=0)
    return engine


def can_regroup(engine) -> bool:
    """Whether ``engine`` is a DeepSpeed engine whose ZeRO state ``load_zero_regrouped`` can re-cut."""
    return hasattr(engine, "zero_optimization_stage") and hasattr(engine, "optimizer")


def load_zero_regrouped(engine, folder: Path) -> None:
    """Load a ZeRO-1/2 engine checkpoint written by another number of processes into ``engine``.

    ZeRO-1/2 keeps, per parameter group, one flat fp32 vector (the group's parameters in order, zero
    padding at the end) cut into equal contiguous partitions, one per rank, with Adam's ``exp_avg`` /
    ``exp_avg_sq`` laid out the same way. So the old partitions are concatenated, the padding dropped,
    and this rank's partition of the new layout cut out of it: exact master weights and moments, in any
    world size. Raises ZeroLayoutError when the files do not fit the optimizer.
    """
    zero = engine.optimizer
    model_states = torch.load(folder / MODEL_STATES, map_location="cpu", weights_only=False)
    files = sorted(folder.glob(OPTIM_SHARD_GLOB), key=lambda f: int(f.name.split("_")[3]))
    if len(files) != model_states["dp_world_size"]:
        raise ZeroLayoutError(f"{folder}: {len(files)} ZeRO shards for a world of {model_states['dp_world_size']}")
    shards = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    engine.load_checkpoint(str(folder.parent), tag=folder.name, load_module_only=True)  # the weights, any world
    shapes = model_states["param_shapes"]
    masters = zero.single_partition_of_fp32_groups
    if len(shapes) != len(masters):
        raise ZeroLayoutError(f"{folder}: {len(shapes)} parameter groups saved, this model has {len(masters)}")
    world = torch.distributed.get_world_size(group=zero.dp_process_group)
    rank = torch.distributed.get_rank(group=zero.dp_process_group)
    for i, master in enumerate(masters):
        numel = sum(int(np.prod(s)) for s in shapes[i].values())
        size = int(zero.partition_size[i])

        def part(tensors: list[torch.Tensor]) -> torch.Tensor:
            flat = torch.cat([t.reshape(-1).to("cpu", torch.float32) for t in tensors])[:numel]
            padded = torch.zeros(size * world)  # this world's padding
            padded[:numel] = flat
            return padded[rank * size:(rank + 1) * size].to(master.device, master.dtype)

        master.data.copy_(part([s["single_partition_of_fp32_groups"][i] for s in shards]))
        moments = [s["base_optimizer_state"]["state"].get(i) for s in shards]
        if all(m is not None for m in moments):
            zero.optimizer.state[master] = {
                "step": moments[0]["step"].clone(),
                **{k: part([m[k] for m in moments]) for k in ("exp_avg", "exp_avg_sq")},
            }
    zero._lazy_init_hp_params_optimizer_state()  # link the new state to the parameters' fragments (safe_get_*)
    for key in ("global_steps", "global_samples", "skipped_steps"):
        setattr(engine, key, model_states[key])
