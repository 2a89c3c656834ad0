"""The held-out test clips, read from a fit_flame output (their own data node), and the leakage check.

A test clip is the set of manifest rows sharing a ``clip_id``. Its usable frames (status ok, a crop)
are kept in frame order, evenly thinned to ``frames_per_clip``; the first is the source, the others
drive. Frames fit_flame could not use and clips left with fewer than two usable frames become
failed items with the reason, so the stage can report them and decide on its failure ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.errors import P4DError
from components.fit_flame.manifest import MANIFEST_NAME, OK, ManifestRow, read_manifest


class EvaluateError(P4DError):
    """The evaluation cannot run (Ψ unloadable, test split missing or empty, leakage, too many failures)."""


class LeakageError(EvaluateError):
    """A test clip is also a training clip (same content hash)."""


@dataclass(frozen=True)
class HeldOutFrame:
    row_id: str  # manifest id of the frame
    frame_index: int
    crop_path: Path


@dataclass(frozen=True)
class HeldOutClip:
    clip_id: str
    sha256: str
    frames: tuple[HeldOutFrame, ...]  # usable frames in frame order; frames[0] is the source

    def load(self) -> list[np.ndarray]:
        """The aligned crops as (H, W, 3) uint8 arrays, in frame order."""
        out = []
        for frame in self.frames:
            try:
                with Image.open(frame.crop_path) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except OSError as err:
                raise EvaluateError(f"{frame.crop_path}: unreadable crop of clip {self.clip_id} ({err})") from None
        return out


@dataclass(frozen=True)
class InputFailure:
    """A test frame or clip that cannot be evaluated, with the reason."""

    clip_id: str
    frame_index: int | None  # None: the whole clip
    reason: str


@dataclass(frozen=True)
class HeldOutSet:
    root: Path
    clips: tuple[HeldOutClip, ...]
    failures: tuple[InputFailure, ...]
    n_frames: int  # every frame row of the manifest (usable or not)


def _manifest(root: Path, what: str) -> list[ManifestRow]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise EvaluateError(f"{root}: no {MANIFEST_NAME}; {what} must be a `p4d fit-flame --video` output folder")
    try:
        return read_manifest(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise EvaluateError(f"{path}: unreadable manifest ({type(err).__name__}: {err})") from None


def _evenly(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over the list, first and last kept."""
    if len(items) <= limit:
        return items
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def read_held_out(root: str | Path, frames_per_clip: int) -> HeldOutSet:
    """The test clips of a fit_flame output folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluateError(f"{root}: test split not found (expected the fit_flame output of the test clips)")
    rows = [r for r in _manifest(root, "--data") if r.clip_id is not None]
    if not rows:
        raise EvaluateError(f"{root / MANIFEST_NAME}: no video clip rows; the test split is a fit_flame --video output")
    by_clip: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_clip.setdefault(row.clip_id, []).append(row)
    clips, failures = [], []
    for clip_id in sorted(by_clip):
        ordered = sorted(by_clip[clip_id], key=lambda r: -1 if r.frame_index is None else r.frame_index)
        usable = []
        for r in ordered:
            if r.status == OK and r.crop_path and (root / r.crop_path).is_file():
                usable.append(HeldOutFrame(r.id, int(r.frame_index or 0), root / r.crop_path))
            else:
                reason = r.reason or ("crop file missing" if r.status == OK else "failed in fit_flame")
                failures.append(InputFailure(clip_id, r.frame_index, f"fit_flame: {reason}"))
        if len(usable) < 2:
            failures.append(InputFailure(clip_id, None, f"{len(usable)} usable frame(s); a test clip needs >= 2 "
                                                       "(one source, one driving)"))  # fmt: skip
            continue
        clips.append(HeldOutClip(clip_id, ordered[0].sha256, tuple(_evenly(usable, frames_per_clip))))
    return HeldOutSet(root, tuple(clips), tuple(failures), len(rows))


def check_leakage(test_root: str | Path, train_root: str | Path) -> None:
    """Fail when a test clip's content (manifest ``sha256``) is also among the training inputs."""
    test_root, train_root = Path(test_root), Path(train_root)
    train = {r.sha256 for r in _manifest(train_root, "--train-data") if r.sha256}
    leaked = sorted({(r.clip_id or r.source, r.sha256) for r in _manifest(test_root, "--data") if r.sha256 in train})
    if leaked:
        names = ", ".join(f"{clip} (sha256 {sha[:12]}…)" for clip, sha in leaked[:5])
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        raise LeakageError(
            f"{test_root / MANIFEST_NAME}: {len(leaked)} test clip(s) also in the training data {train_root}: "
            f"{names}{more}; remove them from the test split or from the training clips"
        )
