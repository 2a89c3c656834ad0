"""Per-input results on disk: the resume cache, and the final arrays assembled from it.

A *unit* is one input file (an image, or a clip with its frames). Its crops are written first,
then ``items/<unit>.npz`` (atomically): the npz is the commit record, so a crash leaves either a
complete unit or none. Re-running reuses a unit whose input sha256 and config key are unchanged.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.fit_flame.manifest import OK, ManifestRow
from components.io.atomic import atomic_write_bytes
from model.cameras import LABEL_DIM


@dataclass
class UnitResult:
    unit_id: str
    sha256: str
    config_key: str
    rows: list[ManifestRow]
    labels: np.ndarray  # (n_ok, 437) float32, in the order of the ok rows
    landmarks: np.ndarray  # (n_ok, 478, 2) float32, crop px
    motion: np.ndarray | None  # (n_ok, motion_dim) float32, None without the PD-FGC asset

    @classmethod
    def failed(cls, unit_id: str, sha256: str, config_key: str, rows: list[ManifestRow]) -> "UnitResult":
        return cls(unit_id, sha256, config_key, rows, np.zeros((0, LABEL_DIM), np.float32),
                   np.zeros((0, 478, 2), np.float32), None)  # fmt: skip

    @property
    def n_ok(self) -> int:
        return sum(r.status == OK for r in self.rows)


def save_unit(path: Path, unit: UnitResult) -> None:
    meta = {
        "unit_id": unit.unit_id,
        "sha256": unit.sha256,
        "config_key": unit.config_key,
        "rows": [asdict(r) for r in unit.rows],
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), "labels": unit.labels,
              "landmarks": unit.landmarks}  # fmt: skip
    if unit.motion is not None:
        arrays["motion"] = unit.motion
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_unit(path: Path) -> UnitResult | None:
    """The cached unit, or None when absent or unreadable (then it is simply recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            motion = npz["motion"] if "motion" in npz.files else None
            return UnitResult(
                meta["unit_id"],
                meta["sha256"],
                meta["config_key"],
                [ManifestRow(**r) for r in meta["rows"]],
                npz["labels"],
                npz["landmarks"],
                motion,
            )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def reusable(unit: UnitResult | None, sha256: str, config_key: str, out_dir: Path) -> bool:
    if unit is None or unit.sha256 != sha256 or unit.config_key != config_key:
        return False
    return all((out_dir / r.crop_path).is_file() for r in unit.rows if r.status == OK and r.crop_path)
