"""GenHead conditions drawn from fitted labels, as the official online sampler draws them.

Official training_loop_recon_v1.py ``fetch_random_params`` + loss_recon_v1.py ``gen_data_by_G_syn``
with ``static=True`` (Ψ_3d):
- identity: one FLAME shape row and one latent z ~ N(0, I) shared by the K views;
- cameras: K fitted camera rows drawn independently of the shape row; each view then renders from
  the seed's camera distribution or, with probability ``camera_mix_fitted_prob`` (official 0.5), from
  its fitted camera;
- motion: expression + jaw from one row, eye pose from another row, the same for all K views;
  neck pose zeroed; the jaw opening (jaw pose x) is replaced by U[0, 0.2] with probability 0.5;
- mapping condition: the identity's first fitted camera + the shape (see
  ``SynthesizeConfig.cond_frontal_prob`` for the frontal alternative).
With the neck pose zero, the official ``decompose_camera_pose`` returns the camera unchanged, so the
rendering camera is the drawn one.

Every identity draws from its own generator seeded by (seed, identity index): identity i is the same
whatever the batch, shard or worker that renders it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from components.errors import P4DError
from components.config.synthesize import SynthesizeConfig
from model.cameras import LABEL_DIM, CameraDistribution, LabelLayout, sample_cameras

LABELS_FILE = "labels.npy"
_SALT_IDENTITY = 0
MAX_REPORTED_ROWS = 50


class LabelError(P4DError, ValueError):
    """The fitted labels cannot be used (unreadable, or too many bad rows)."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (numpy SeedSequence: well mixed, order-sensitive)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def identity_generator(seed: int, identity: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, _SALT_IDENTITY, identity))


def _row_problem(row: np.ndarray) -> str | None:
    """Why a 437-float label row is unusable, or None."""
    bad = [name.lower() for name, sl in LabelLayout.fields().items() if not np.all(np.isfinite(row[sl]))]
    if bad:
        return f"non-finite values in {', '.join(bad)}"
    cam2world = row[LabelLayout.CAM2WORLD].reshape(4, 4).astype(np.float64)
    rot = cam2world[:3, :3]
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) < 0:
        return "cam2world rotation is not a rotation matrix"
    if np.abs(cam2world[3] - [0, 0, 0, 1]).max() > 1e-6:
        return "cam2world last row is not (0, 0, 0, 1)"
    intrinsics = row[LabelLayout.INTRINSICS].reshape(3, 3)
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        return "intrinsics focal length is not positive"
    return None


@dataclass
class LabelPool:
    """The usable fitted label rows (M, 437) and an account of the rows that were skipped."""

    labels: torch.Tensor  # (M, 437) float32
    sources: list[str]  # per usable row: "<input number>:<row>" (path-independent, so shards do not
    total_rows: int  #   depend on how the labels path was spelled)
    files: list[str] = field(default_factory=list)  # the inputs, in order
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)  # "file:row: reason"

    @property
    def n(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def from_arrays(cls, arrays: Sequence[tuple[str, np.ndarray]]) -> "LabelPool":
        """Validate (name, array) pairs: (N, 437), or (437,) for one row; anything else skips its rows."""
        rows, sources, skipped, examples, total = [], [], Counter(), [], 0

        def skip(name: str, index: int | str, reason: str, count: int = 1) -> None:
            skipped[reason] += count
            if len(examples) < MAX_REPORTED_ROWS:
                examples.append(f"{name}:{index}: {reason}")

        for k, (name, array) in enumerate(arrays):
            array = np.asarray(array)
            if array.ndim == 1:
                array = array[None]
            if array.ndim != 2:
                raise LabelError(f"{name}: labels must be a (N, {LABEL_DIM}) array, got shape {array.shape}")
            if not np.issubdtype(array.dtype, np.number):
                raise LabelError(f"{name}: labels must be numeric, got dtype {array.dtype}")
            total += array.shape[0]
            if array.shape[1] != LABEL_DIM:
                skip(name, "*", f"wrong width ({array.shape[1]} floats, expected {LABEL_DIM})", array.shape[0])
                continue
            for i, row in enumerate(array):
                problem = _row_problem(row)
                if problem:
                    skip(name, i, problem)
                else:
                    rows.append(row.astype(np.float32))
                    sources.append(f"{k}:{i}")
        labels = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, LABEL_DIM)
        return cls(labels, sources, total, [name for name, _ in arrays], skipped, examples)

    def check(self, max_failure_ratio: float) -> None:
        """Fail if nothing is usable or too much was skipped; the message lists the reasons."""
        bad = sum(self.skipped.values())
        reasons = "; ".join(f"{n} x {why}" for why, n in self.skipped.most_common())
        if self.n == 0:
            raise LabelError(f"no usable label rows out of {self.total_rows} ({reasons or 'empty input'}); "
                             "run `p4d fit-flame` first or point --labels at its output")
        if bad > max_failure_ratio * self.total_rows:
            raise LabelError(f"{bad} of {self.total_rows} label rows are unusable ({reasons}), above "
                             f"max_failure_ratio {max_failure_ratio}; fix the labels or raise synthesize.max_failure_ratio")

    def summary(self) -> dict:
        return {"files": list(self.files), "total_rows": self.total_rows, "used_rows": self.n,
                "skipped": dict(self.skipped.most_common()),
                "skipped_examples": list(self.skipped_examples)}


def load_label_pool(paths: Sequence[str | Path]) -> LabelPool:
    """Read ``labels.npy`` from each path (a file, or a fit_flame output folder holding one)."""
    arrays = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / LABELS_FILE
        if not path.is_file():
            raise LabelError(f"{path}: no such labels file; pass the fit_flame output folder (with {LABELS_FILE})")
        try:
            arrays.append((str(path), np.load(path, allow_pickle=False)))
        except (ValueError, OSError) as err:
            raise LabelError(f"{path}: not a numeric .npy array ({str(err).splitlines()[0]})") from None
    return LabelPool.from_arrays(arrays)


@dataclass(frozen=True)
class IdentityConditions:
    """Everything GenHead needs for the K views of one identity (CPU tensors)."""

    identity: int
    z: torch.Tensor  # (z_dim,)
    shape: torch.Tensor  # (300,)
    expression: torch.Tensor  # (100,)
    jaw_pose: torch.Tensor  # (3,) after the jaw augmentation
    eye_pose: torch.Tensor  # (6,)
    c_cond: torch.Tensor  # (25,) mapping-network camera
    c: torch.Tensor  # (K, 25) rendering cameras
    camera_fitted: torch.Tensor  # (K,) bool: fitted camera (True) or sampled from the seed's distribution
    camera_draws: dict[str, torch.Tensor]  # seed-distribution draws (K,): pitch, yaw, roll, radius; lookat (K, 3)
    sources: dict  # label rows used: shape, cameras, motion, eyes

    @property
    def views(self) -> int:
        return self.c.shape[0]

    def camera_meta(self, view: int) -> dict:
        """Where view ``view``'s camera came from (JSON-ready)."""
        if bool(self.camera_fitted[view]):
            return {"source": "fitted", "row": self.sources["cameras"][view]}
        d = self.camera_draws
        return {"source": "sampled", "pitch": float(d["pitch"][view]), "yaw": float(d["yaw"][view]),
                "roll": float(d["roll"][view]), "radius": float(d["radius"][view]),
                "lookat": [float(x) for x in d["lookat"][view]]}

    def labels(self) -> torch.Tensor:
        """(K, 437) the per-view label: rendering camera + the FLAME parameters GenHead was given."""
        k = self.views
        out = torch.zeros(k, LABEL_DIM)
        out[:, LabelLayout.CAMERA] = self.c
        out[:, LabelLayout.SHAPE] = self.shape
        out[:, LabelLayout.EXPRESSION] = self.expression
        out[:, LabelLayout.JAW_POSE] = self.jaw_pose
        out[:, LabelLayout.EYE_POSE] = self.eye_pose
        return out  # neck pose stays 0


def _frontal_camera(intrinsics: torch.Tensor, radius: float) -> torch.Tensor:
    """Identity rotation at +radius on z (official c_cond_syn: eye(4) with [2, 3] += 4)."""
    cam2world = torch.eye(4)
    cam2world[2, 3] += radius
    return torch.cat([cam2world.reshape(16), intrinsics.reshape(9)])


def draw_identity(
    pool: LabelPool,
    identity: int,
    cfg: SynthesizeConfig,
    cameras: CameraDistribution,
    fitted_prob: float,
    z_dim: int,
) -> IdentityConditions:
    """Conditions of identity ``identity``; depends only on (pool, cfg.seed, identity, the settings)."""
    g = identity_generator(cfg.seed, identity)
    k, labels = cfg.views, pool.labels
    # Fixed draw order: changing one setting never reshuffles the others' draws.
    shape_row = int(torch.randint(pool.n, (1,), generator=g))
    camera_rows = torch.randint(pool.n, (k,), generator=g)
    motion_row = int(torch.randint(pool.n, (1,), generator=g))
    eye_row = int(torch.randint(pool.n, (1,), generator=g))
    jaw_u, jaw_value, cond_u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
    z = torch.randn(z_dim, generator=g)
    draws = sample_cameras(cameras, k, g)
    sampled = draws["c"]  # (K, 25)
    fitted_u = torch.rand(k, generator=g, dtype=torch.float64)

    fitted_c = labels[camera_rows][:, LabelLayout.CAMERA]
    camera_fitted = fitted_u < fitted_prob
    c = torch.where(camera_fitted[:, None], fitted_c, sampled)

    jaw = labels[motion_row, LabelLayout.JAW_POSE].clone()
    if jaw_u >= 1 - cfg.jaw_augment_prob:  # official: keep the fitted jaw with probability 1 - p
        jaw[0] = jaw_value * cfg.jaw_augment_max

    c_cond = fitted_c[0].clone()
    frontal = cond_u < cfg.cond_frontal_prob
    if frontal:
        c_cond = _frontal_camera(fitted_c[0, LabelLayout.INTRINSICS], cfg.cond_frontal_radius)

    return IdentityConditions(
        identity=identity,
        z=z,
        shape=labels[shape_row, LabelLayout.SHAPE].clone(),
        expression=labels[motion_row, LabelLayout.EXPRESSION].clone(),
        jaw_pose=jaw,
        eye_pose=labels[eye_row, LabelLayout.EYE_POSE].clone(),
        c_cond=c_cond,
        c=c,
        camera_fitted=camera_fitted,
        camera_draws={name: draws[name] for name in ("pitch", "yaw", "roll", "radius")}
        | {"lookat": draws["lookat"] * cameras.lookat_scale},
        sources={
            "shape": pool.sources[shape_row],
            "cameras": [pool.sources[i] for i in camera_rows.tolist()],
            "motion": pool.sources[motion_row],
            "eyes": pool.sources[eye_row],
            "jaw_augmented": bool(jaw_u >= 1 - cfg.jaw_augment_prob),
            "cond_frontal": bool(frontal),
        },
    )
