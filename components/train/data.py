"""Training data per rank as resumable streams of micro-batches.

- Ψ_3d: identities with K GenHead views, from the stored shards (``components.synthesize.ShardDataset``)
  and/or drawn online (``components.synthesize.OnlineSynthesizer``). View 0 is the source, view K-1
  the target (official training_loop_recon_v1.py: app / mot / recon = views 0 / 1 / 2).
- Ψ: (source, driving) frame pairs of one clip from the fit_flame output of videos.

Every stream has a small ``state_dict`` (its data position) that checkpoints store per rank; a
resumed stream yields exactly the micro-batches the interrupted one would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.errors import P4DError
from model.cameras import LABEL_DIM
from model.face_align import to_network_image


class TrainingDataError(P4DError):
    """The training data is missing, too small or malformed; the message names the file and the fix."""


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Psi3dBatch:
    """B (source view, target view) pairs of synthesized identities; images in [-1, 1]."""

    source_image: torch.Tensor  # (B, 3, S, S)
    target_image: torch.Tensor  # (B, 3, S, S)
    target_seg: torch.Tensor  # (B, 1, r, r) GenHead foreground in [-1, 1]
    target_background: torch.Tensor  # (B, 3, r, r) GenHead background rgb
    target_depth: torch.Tensor  # (B, 1, r, r)
    target_label: torch.Tensor  # (B, 437) rendering camera + FLAME conditions
    target_triplane: torch.Tensor | None  # (B, N, 3 + C) points + face-plane features, or None

    def to(self, device: torch.device | str) -> "Psi3dBatch":
        return Psi3dBatch(*(None if (t := getattr(self, f.name)) is None else t.to(device) for f in fields(self)))

    @property
    def size(self) -> int:
        return self.source_image.shape[0]


def psi3d_batch(item: dict) -> Psi3dBatch:
    """A reader / online-sampler batch (keys of components.synthesize.reader, each (n, K, ...)) -> pairs."""
    k = item["image"].shape[1]
    if k < 2:
        raise TrainingDataError(f"the synthesized data has {k} view per identity; Ψ_3d needs >= 2 (source + target)")
    src, tgt = 0, k - 1
    triplane = item.get("triplane")
    return Psi3dBatch(
        source_image=item["image"][:, src],
        target_image=item["image"][:, tgt],
        target_seg=item["seg"][:, tgt],
        target_background=item["bg"][:, tgt],
        target_depth=item["depth"][:, tgt],
        target_label=item["label"][:, tgt],
        target_triplane=None if triplane is None else triplane[:, tgt],
    )


class ShardStream:
    """Micro-batches of stored identities for one rank; epochs restart with a new shuffle.

    Position = (epoch, micro-batches taken in it); restoring it re-reads and skips that many, which
    reproduces the order because the reader's shuffle depends only on (seed, epoch, rank, worker).
    """

    def __init__(self, uri: str, micro_batch: int, rank: int, world_size: int, seed: int, workers: int = 0,
                 endpoint_url_env: str = "AWS_ENDPOINT_URL") -> None:
        from components.synthesize import ShardDataset

        self.dataset = ShardDataset(uri, shuffle=True, seed=seed, rank=rank, world_size=world_size,
                                    endpoint_url_env=endpoint_url_env)
        if len(self.dataset.shards) < world_size:
            raise TrainingDataError(
                f"{uri}: {len(self.dataset.shards)} shards for {world_size} ranks; every rank needs at least one "
                "shard (synthesize more identities or a smaller shard_size)"
            )
        self.micro_batch, self.workers = micro_batch, workers
        self.epoch, self.taken = 0, 0
        self._iter: Iterator | None = None

    def _loader(self) -> Iterator:
        from torch.utils.data import DataLoader

        self.dataset.set_epoch(self.epoch)
        return iter(DataLoader(self.dataset, batch_size=self.micro_batch, num_workers=self.workers, drop_last=True))

    def __next__(self) -> Psi3dBatch:
        for _ in range(2):
            if self._iter is None:
                self._iter = self._loader()
            try:
                item = next(self._iter)
            except StopIteration:
                self.epoch, self.taken, self._iter = self.epoch + 1, 0, None
                continue
            self.taken += 1
            return psi3d_batch(item)
        raise TrainingDataError(
            f"{self.dataset.uri}: this rank's shards hold fewer than one micro-batch ({self.micro_batch} identities)"
        )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._iter = int(state["epoch"]), None
        self.taken = 0
        if state["taken"]:
            self._iter = self._loader()
            for _ in range(int(state["taken"])):
                next(self._iter)
            self.taken = int(state["taken"])


class OnlineStream:
    """Fresh identities from the GenHead sampler; the position is the number of micro-batches drawn."""

    def __init__(self, synthesizer, micro_batch: int, rank: int, world_size: int, first_identity: int = 1 << 40):
        # Identities far above any stored dataset's indices, so online and stored identities never repeat.
        self.synthesizer, self.micro_batch = synthesizer, micro_batch
        self.rank, self.world_size, self.first = rank, world_size, first_identity
        self.drawn = 0

    def __next__(self) -> Psi3dBatch:
        start = self.first + (self.drawn * self.world_size + self.rank) * self.micro_batch
        self.drawn += 1
        batch = self.synthesizer.draw(range(start, start + self.micro_batch))
        return psi3d_batch({k: v.cpu() for k, v in batch.items()})

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])


class MixedStream:
    """Alternates stored and online micro-batches (even positions stored, odd online)."""

    def __init__(self, stored: ShardStream, online: OnlineStream) -> None:
        self.stored, self.online, self.position = stored, online, 0

    def __next__(self) -> Psi3dBatch:
        source = self.stored if self.position % 2 == 0 else self.online
        self.position += 1
        return next(source)

    def state_dict(self) -> dict:
        return {"position": self.position, "stored": self.stored.state_dict(), "online": self.online.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.stored.load_state_dict(state["stored"])
        self.online.load_state_dict(state["online"])


# ----------------------------------------------------------------------------------------------- Ψ: clip pairs
@dataclass
class PsiBatch:
    """B (source, driving) frame pairs of one clip each; images in [-1, 1]."""

    source_image: torch.Tensor  # (B, 3, S, S)
    source_motion: torch.Tensor  # (B, motion_dim) PD-FGC motion of the source frame
    source_label: torch.Tensor  # (B, 437)
    driving_image: torch.Tensor  # (B, 3, S, S)
    driving_motion: torch.Tensor  # (B, motion_dim)
    driving_label: torch.Tensor  # (B, 437)

    def to(self, device: torch.device | str) -> "PsiBatch":
        return PsiBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def size(self) -> int:
        return self.source_image.shape[0]


@dataclass(frozen=True)
class ClipFrames:
    clip_id: str
    rows: tuple[int, ...]  # rows of labels.npy / motion.npy, in frame order
    crops: tuple[str, ...]  # crop paths relative to the fit_flame output folder


def read_clips(root: Path) -> list[ClipFrames]:
    """Clips with at least two usable frames in a fit_flame output folder (manifest.parquet)."""
    from components.fit_flame.manifest import MANIFEST_NAME, OK, read_manifest

    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise TrainingDataError(f"{root}: no {MANIFEST_NAME}; run `p4d fit-flame --video` on the clips first")
    by_clip: dict[str, list] = {}
    for row in read_manifest(manifest):
        if row.status == OK and row.clip_id is not None and row.label_row >= 0 and row.crop_path:
            by_clip.setdefault(row.clip_id, []).append(row)
    clips = []
    for clip_id in sorted(by_clip):
        rows = sorted(by_clip[clip_id], key=lambda r: (r.frame_index if r.frame_index is not None else -1))
        if len(rows) >= 2:
            clips.append(ClipFrames(clip_id, tuple(r.label_row for r in rows), tuple(r.crop_path for r in rows)))
    if not clips:
        raise TrainingDataError(
            f"{root}: no clip has two usable frames (manifest rows with status ok and a clip_id); "
            "Ψ trains on frame pairs of video clips"
        )
    return clips


def _load_array(path: Path, width: int | None, what: str) -> np.ndarray:
    if not path.is_file():
        hint = " (fit_flame writes it only when the PD-FGC asset is supplied)" if what == "motion" else ""
        raise TrainingDataError(f"{path}: missing {what} array{hint}")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or (width is not None and array.shape[1] != width):
        raise TrainingDataError(f"{path}: {what} must be (N, {width or 'D'}), got {array.shape}")
    if not np.isfinite(array).all():
        raise TrainingDataError(f"{path}: {what} holds non-finite values")
    return array.astype(np.float32)


class ClipPairStream:
    """Per micro-batch, each sample draws a clip and two distinct frames (source, driving) from it.

    The draw depends only on (seed, rank, position), so the position is the whole data state.
    """

    def __init__(self, root: str | Path, micro_batch: int, rank: int, world_size: int, seed: int,
                 image_resolution: int, motion_dim: int) -> None:
        self.root = Path(root)
        self.clips = read_clips(self.root)
        self.labels = _load_array(self.root / "labels.npy", LABEL_DIM, "labels")
        self.motion = _load_array(self.root / "motion.npy", motion_dim, "motion")
        top = max(max(c.rows) for c in self.clips)
        if top >= min(len(self.labels), len(self.motion)):
            raise TrainingDataError(f"{self.root}: manifest row {top} is past labels.npy / motion.npy "
                                    f"({len(self.labels)} / {len(self.motion)} rows)")
        self.micro_batch, self.rank, self.world_size, self.seed = micro_batch, rank, world_size, seed
        self.resolution = image_resolution
        self.position = 0

    def _image(self, rel: str) -> torch.Tensor:
        path = self.root / rel
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise TrainingDataError(f"{path}: unreadable crop ({err})") from None
        return to_network_image(torch.from_numpy(array.copy())[None], self.resolution)[0]  # inference's resize too

    def __next__(self) -> PsiBatch:
        g = np.random.default_rng(_seed(self.seed, self.rank, self.world_size, self.position))
        self.position += 1
        picks = []
        for _ in range(self.micro_batch):
            clip = self.clips[g.integers(len(self.clips))]
            a, b = g.choice(len(clip.rows), size=2, replace=False)
            picks.append((clip, int(a), int(b)))

        def stack(fn) -> torch.Tensor:
            return torch.stack([fn(p) for p in picks])

        return PsiBatch(
            source_image=stack(lambda p: self._image(p[0].crops[p[1]])),
            source_motion=stack(lambda p: torch.from_numpy(self.motion[p[0].rows[p[1]]])),
            source_label=stack(lambda p: torch.from_numpy(self.labels[p[0].rows[p[1]]])),
            driving_image=stack(lambda p: self._image(p[0].crops[p[2]])),
            driving_motion=stack(lambda p: torch.from_numpy(self.motion[p[0].rows[p[2]]])),
            driving_label=stack(lambda p: torch.from_numpy(self.labels[p[0].rows[p[2]]])),
        )

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def data_version(path: str | Path) -> str:
    """The dataset's version for lineage: DVC's md5 of it under ``dvc repro`` (from ``dvc.lock``), else a
    content digest of its index file. The pipeline's own version (env), when given, wins over both
    (``components.io.tracking.resolve_data_version``)."""
    from components.io.tracking import dvc_data_version

    dvc = dvc_data_version(path)
    if dvc:
        return dvc
    path = Path(path)
    for name in ("index.json", "manifest.parquet", "labels.npy"):
        candidate = path / name if path.is_dir() else path
        if candidate.is_file():
            return "md5:" + hashlib.md5(candidate.read_bytes()).hexdigest()  # lineage digest, not security
    return "unknown"

