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
re-cut for the new world (``deepspeed_compat.load_zero_regrouped``) and every rank takes rank 0's data position.

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
from components.io.run_config import config_difference, resume_refusal
from components.train.deepspeed_compat import ZeroLayoutError, can_regroup, load_zero_regrouped

PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"
COMPLETE = "COMPLETE"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "MANIFEST.json"


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
        if state.config_sha256 != expect.config_sha256:  # the digest detects; the saved config names the keys
            advice = "resume with the same params, or start a new --out"
            saved = path / CONFIG_FILE
            if saved.is_file() and self.config is not None:
                old = json.loads(saved.read_text())
                if config_difference(old, self.config):
                    raise CheckpointError(resume_refusal(path, old, self.config, advice))
            raise CheckpointError(f"resume refused: the run in {path} was written with other settings (no saved "
                                  f"{CONFIG_FILE} says which); {advice}")
        if state.data_version and expect.data_version and state.data_version != expect.data_version:
            raise CheckpointError(
                f"{path} was trained on data version {state.data_version} and this run's data is "
                f"{expect.data_version}; resume on the same data, or start a new --out (remove the folder to retrain)"
            )

    def load(self, path: Path, g_engine, d_engine, ema: nn.Module, expect: TrainerState) -> tuple[TrainerState, dict]:
        state = read_state(path)
        self.check_fits(path, state, expect)
        regrouped = state.world_size != expect.world_size
        if regrouped and not (can_regroup(g_engine) and can_regroup(d_engine)):
            raise CheckpointError(
                f"{path} was written by {state.world_size} processes and this run has {expect.world_size}; "
                f"resume with {state.world_size} processes (ZeRO shards and data positions are per rank)"
            )
        for engine, tag in ((g_engine, "generator"), (d_engine, "discriminator")):
            if regrouped and engine.zero_optimization_stage() > 0:
                try:
                    load_zero_regrouped(engine, path / tag)
                except ZeroLayoutError as err:
                    raise CheckpointError(str(err)) from err
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


def _device_of(module: nn.Module) -> torch.device:
    for t in module.state_dict().values():
        return t.device
    return torch.device("cpu")
