"""Preemption-safe training checkpoints: a folder per checkpoint, visible only once complete.

Layout under ``OUT/checkpoints/``::

    ckpt-000000016384/            images seen, zero-padded so names sort by time
      generator/  discriminator/  DeepSpeed engine states (model, optimizer, ZeRO shards per rank)
      ema.safetensors             EMA of the generator (what evaluation and the next stage read)
      rank-00000.pt ...           per rank: RNG states and data position
      trainer.json                images seen, iteration, MLflow run id, world size, config digest
      COMPLETE                    written last
    .tmp-ckpt-.../                being written (or left by a kill): never read, removed on start

Every rank writes its shards into the temporary folder; after a barrier rank 0 writes ``COMPLETE``,
fsyncs and renames the folder into place (atomic on one filesystem), so a kill at any moment leaves
either the previous checkpoints or the new one, never a half-written one under a visible name.
Multi-node runs need ``OUT`` on storage every node mounts (a ReadWriteMany volume).
A checkpoint resumes on another number of processes too: ZeRO-1/2 optimizer partitions are
re-cut for the new world (``load_zero_regrouped``) and every rank takes rank 0's data position.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from components.errors import P4DError

PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"
COMPLETE = "COMPLETE"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer.json"


class CheckpointError(P4DError):
    """A checkpoint cannot be resumed (another stage or config, unreadable shards); says what to do."""


@dataclass
class TrainerState:
    stage: str
    iteration: int
    images_seen: int
    world_size: int
    config_sha256: str
    mlflow_run_id: str | None = None


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_module_safetensors(module: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    safetensors.torch.save_file(state, str(path), metadata=metadata)


def is_complete(path: Path) -> bool:
    named = path.is_dir() and path.name.startswith(PREFIX)
    return named and (path / COMPLETE).is_file() and (path / STATE_FILE).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_complete(p))


class Checkpoints:
    """Save / find / load checkpoints of one training run; call on every rank."""

    def __init__(self, root: str | Path, keep_last: int, rank: int) -> None:
        self.root, self.keep_last, self.rank = Path(root), keep_last, rank
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_partial()
        _barrier()

    def remove_partial(self) -> None:
        """Drop folders a kill left half-written or half-deleted (they were never visible)."""
        for path in self.root.iterdir():
            if path.name.startswith((TMP_PREFIX, DEL_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)

    def complete(self) -> list[Path]:
        return complete_checkpoints(self.root)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, state: TrainerState, g_engine, d_engine, ema: nn.Module, rank_state: dict,
             ema_metadata: dict[str, str]) -> Path:
        final = self.root / f"{PREFIX}{state.images_seen:012d}"
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if is_complete(final):  # e.g. SIGTERM right after a scheduled save
            return final
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        g_engine.save_checkpoint(str(tmp), tag="generator", save_latest=False)
        d_engine.save_checkpoint(str(tmp), tag="discriminator", save_latest=False)
        torch.save(rank_state, tmp / f"rank-{self.rank:05d}.pt")
        if self.rank == 0:
            save_module_safetensors(ema, tmp / EMA_FILE, ema_metadata)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        _barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            (tmp / COMPLETE).write_text("ok\n")
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep_last]:
            doomed = self.root / f"{DEL_PREFIX}{old.name}"
            os.replace(old, doomed)  # invisible first, then deleted: a kill mid-delete leaves nothing half-there
            shutil.rmtree(doomed, ignore_errors=True)

    def load(self, path: Path, g_engine, d_engine, ema: nn.Module, expect: TrainerState) -> tuple[TrainerState, dict]:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        if state.stage != expect.stage:
            raise CheckpointError(f"{path} is a {state.stage!r} checkpoint, not {expect.stage!r}; use another --out")
        regrouped = state.world_size != expect.world_size
        if regrouped and not (_reshardable(g_engine) and _reshardable(d_engine)):
            raise CheckpointError(
                f"{path} was written by {state.world_size} processes and this run has {expect.world_size}; "
                f"resume with {state.world_size} processes (ZeRO shards and data positions are per rank)"
            )
        if state.config_sha256 != expect.config_sha256:
            raise CheckpointError(
                f"{path} was written with a different configuration (digest {state.config_sha256[:12]} vs "
                f"{expect.config_sha256[:12]}); resume with the same params, or start a new --out"
            )
        for engine, tag in ((g_engine, "generator"), (d_engine, "discriminator")):
            if regrouped and engine.zero_optimization_stage() > 0:
                load_zero_regrouped(engine, path / tag)
            else:  # same world, or ZeRO-0 (the whole optimizer is in the model-states file)
                engine.load_checkpoint(str(path), tag=tag, load_lr_scheduler_states=False)
        ema.load_state_dict(safetensors.torch.load_file(str(path / EMA_FILE), device=str(_device_of(ema))))
        # Another world size: a rank the old run had keeps its RNG; a new one takes rank 0's. Every rank
        # takes rank 0's data position (see ``regroup_rank_state``).
        own = path / f"rank-{self.rank:05d}.pt"
        rank_state = torch.load(own if own.is_file() else path / "rank-00000.pt", weights_only=True)
        if regrouped:
            rank_state = regroup_rank_state(rank_state, torch.load(path / "rank-00000.pt", weights_only=True))
        return state, rank_state


def _reshardable(engine) -> bool:
    return hasattr(engine, "zero_optimization_stage") and hasattr(engine, "optimizer")


def regroup_rank_state(own: dict, rank0: dict) -> dict:
    """The data position for a run resumed with another process count: rank 0's, on every rank.

    The global batch is fixed in images and micro-batch = batch / (world x accumulation), so every rank
    takes the same number of micro-batches per iteration whatever the world size: a position counted in
    micro-batches (ShardStream's (epoch, taken), OnlineStream's draws, ClipPairStream's position) means
    "this many iterations into the data" on any rank of any world. OnlineStream's identities continue
    exactly (ids = (drawn x world + rank) x micro); the stored shards are re-partitioned over the new
    ranks, so the resumed epoch visits the new partition from the same step on (its first ``taken``
    micro-batches are skipped) and later epochs visit every identity once, as before.
    """
    return {**own, "data": rank0["data"]}


def load_zero_regrouped(engine, folder: Path) -> None:
    """Load a ZeRO-1/2 engine checkpoint written by another number of processes into ``engine``.

    DeepSpeed 0.19.8 refuses that (its only route, a universal checkpoint made by ``ds_to_universal``,
    fails on our 0-dim parameters: ``torch.cat`` of zero-dimensional slices). ZeRO-1/2 keeps, per
    parameter group, one flat fp32 vector (the group's parameters in order, zero padding at the end)
    cut into equal contiguous partitions, one per rank, with Adam's ``exp_avg`` / ``exp_avg_sq`` laid
    out the same way. So the old partitions are concatenated, the padding dropped, and this rank's
    partition of the new layout cut out of it: exact master weights and moments, in any world size.
    """
    zero = engine.optimizer
    model_states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    files = sorted(folder.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda f: int(f.name.split("_")[3]))
    if len(files) != model_states["dp_world_size"]:
        raise CheckpointError(f"{folder}: {len(files)} ZeRO shards for a world of {model_states['dp_world_size']}")
    shards = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    engine.load_checkpoint(str(folder.parent), tag=folder.name, load_module_only=True)  # the weights, any world
    shapes = model_states["param_shapes"]
    if len(shapes) != len(zero.single_partition_of_fp32_groups):
        raise CheckpointError(f"{folder}: {len(shapes)} parameter groups saved, this model has "
                              f"{len(zero.single_partition_of_fp32_groups)}")
    rank = torch.distributed.get_rank(group=zero.dp_process_group)
    for i, master in enumerate(zero.single_partition_of_fp32_groups):
        numel = sum(int(np.prod(s)) for s in shapes[i].values())
        size = int(zero.partition_size[i])

        def part(tensors: list[torch.Tensor]) -> torch.Tensor:
            flat = torch.cat([t.reshape(-1).to("cpu", torch.float32) for t in tensors])[:numel]
            padded = torch.zeros(size * _world(zero))  # this world's padding
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


def _world(zero) -> int:
    return torch.distributed.get_world_size(group=zero.dp_process_group)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.state_dict().values():
        return t.device
    return torch.device("cpu")
