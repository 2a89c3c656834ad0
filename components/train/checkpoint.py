"""Preemption-safe training checkpoints: a folder per checkpoint, visible only once complete.

Layout under ``OUT/checkpoints/``::

    ckpt-000000016384/            images seen, zero-padded so names sort by time
      generator/  discriminator/  DeepSpeed engine states (model, optimizer, ZeRO shards per rank)
      ema.safetensors             EMA of the generator (what evaluation and the next stage read)
      rank-00000.pt ...           per rank: RNG states and data position
      trainer.json                images seen, iteration, MLflow run id, world size, config digest, data version
      config.json                 the configuration the digest covers (names the keys that differ on a refusal)
      MANIFEST.json               size and sha256 of every file above (resume verifies them)
      COMPLETE                    written last
    .tmp-ckpt-.../                being written (or left by a kill): never read, removed on start

Every rank writes its shards into the temporary folder; after a barrier rank 0 writes ``COMPLETE``,
fsyncs and renames the folder into place (atomic on one filesystem), so a kill at any moment leaves
either the previous checkpoints or the new one, never a half-written one under a visible name.
Multi-node runs need ``OUT`` on storage every node mounts (a ReadWriteMany volume).
A checkpoint resumes on another number of processes too: ZeRO-1/2 optimizer partitions are
re-cut for the new world (``load_zero_regrouped``) and every rank takes rank 0's data position.

A checkpoint that became unreadable after it was written (a truncated copy, a disk error, a bad
download) is found by ``problem`` before any engine is touched: resume skips it, says why, and
takes the newest good one (``components.train.resume``).
"""

from __future__ import annotations

import hashlib
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
CONFIG_FILE = "config.json"
MANIFEST_FILE = "MANIFEST.json"
MAX_DIFF_KEYS = 8  # keys named in a refusal; more are counted


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
    data_version: str | None = None  # the training data's version (DVC hash / pipeline digest) when it started


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(16 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Size and sha256 of every file in ``folder`` (relative posix paths), as ``MANIFEST.json``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST_FILE, COMPLETE))
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST_FILE).write_text(json.dumps(entries, indent=1, sort_keys=True))


def read_state(path: Path) -> TrainerState:
    data = json.loads((path / STATE_FILE).read_text())
    known = set(TrainerState.__dataclass_fields__)
    return TrainerState(**{k: v for k, v in data.items() if k in known})


def problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed, or None when every file is as written.

    Checks the COMPLETE marker, ``trainer.json`` and each file against ``MANIFEST.json`` (size first,
    then sha256). Checkpoints from before manifests existed get a structural check instead: every
    safetensors header and every per-rank ``.pt`` file must read.
    """
    if not (path / COMPLETE).is_file():
        return "incomplete (no COMPLETE marker)"
    try:
        read_state(path)
    except (OSError, ValueError, TypeError) as err:
        return f"{STATE_FILE} unreadable ({_short(err)})"
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        return _legacy_problem(path)
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        return f"{MANIFEST_FILE} unreadable ({_short(err)})"
    for name, entry in sorted(entries.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, {entry['size']} were written (truncated or overwritten)"
        try:
            if _sha256(file) != entry["sha256"]:
                return f"{name} does not match its sha256 (corrupted)"
        except OSError as err:
            return f"{name} unreadable ({_short(err)})"
    return None


def _legacy_problem(path: Path) -> str | None:
    from safetensors import safe_open

    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():
                    fh.get_slice(key)
        except Exception as err:  # safetensors raises its own SafetensorError and OSError
            return f"{file.relative_to(path)} unreadable ({_short(err)})"
    for file in sorted(path.glob("rank-*.pt")):
        try:
            torch.load(file, weights_only=True)
        except Exception as err:  # torch raises RuntimeError (PytorchStreamReader), EOFError, pickle errors
            return f"{file.name} unreadable ({_short(err)})"
    return None


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def config_difference(saved: dict, current: dict) -> str:
    """'a.b: X in the checkpoint, Y now; ...' for the flattened keys whose values differ."""
    from components.io.tracking import flatten_params

    old, new = flatten_params(saved), flatten_params(current)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    parts = [f"{k}: {old.get(k, '(absent)')} in the checkpoint, {new.get(k, '(absent)')} now"
             for k in keys[:MAX_DIFF_KEYS]]
    if len(keys) > MAX_DIFF_KEYS:
        parts.append(f"and {len(keys) - MAX_DIFF_KEYS} more")
    return "; ".join(parts)


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

    def __init__(self, root: str | Path, keep_last: int, rank: int, config: dict | None = None) -> None:
        self.root, self.keep_last, self.rank = Path(root), keep_last, rank
        self.config = config  # what the config digest covers, saved with every checkpoint
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
            if self.config is not None:
                (tmp / CONFIG_FILE).write_text(json.dumps(self.config, indent=1, sort_keys=True))
        _barrier()
        if self.rank == 0:
            write_manifest(tmp)
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
            self.discard(old)

    def discard(self, path: Path) -> None:
        """Remove a checkpoint folder: invisible first, then deleted (a kill mid-delete leaves nothing half-there)."""
        doomed = self.root / f"{DEL_PREFIX}{path.name}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def check_fits(self, path: Path, state: TrainerState, expect: TrainerState) -> None:
        """Refuse (CheckpointError) a checkpoint of another stage, configuration or training data."""
        if state.stage != expect.stage:
            raise CheckpointError(f"{path} is a {state.stage!r} checkpoint, not {expect.stage!r}; use another --out")
        if state.config_sha256 != expect.config_sha256:
            saved = path / CONFIG_FILE
            keys = ""
            if saved.is_file() and self.config is not None:
                keys = f" — {config_difference(json.loads(saved.read_text()), self.config)}"
            raise CheckpointError(
                f"{path} was written with a different configuration (digest {state.config_sha256[:12]} vs "
                f"{expect.config_sha256[:12]}{keys}); resume with the same params, or start a new --out"
            )
        if state.data_version and expect.data_version and state.data_version != expect.data_version:
            raise CheckpointError(
                f"{path} was trained on data version {state.data_version} and this run's data is "
                f"{expect.data_version}; resume on the same data, or start a new --out (remove the folder to retrain)"
            )

    def load(self, path: Path, g_engine, d_engine, ema: nn.Module, expect: TrainerState) -> tuple[TrainerState, dict]:
        state = read_state(path)
        self.check_fits(path, state, expect)
        regrouped = state.world_size != expect.world_size
        if regrouped and not (_reshardable(g_engine) and _reshardable(d_engine)):
            raise CheckpointError(
                f"{path} was written by {state.world_size} processes and this run has {expect.world_size}; "
                f"resume with {state.world_size} processes (ZeRO shards and data positions are per rank)"
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
