"""The Animator: THE inference engine of a trained Ψ. `p4d animate`, `evaluate`, the MLflow model and the
Triton model are thin wrappers around it; alignment, motion extraction, FLAME fitting and rendering live
here (or in the fit_flame / model code this calls), nowhere else.

    source photo --prepare_source--> Source (aligned crop, FLAME fit, PD-FGC motion, Ψ source encoding: cached)
    driving frames --driving_motion--> Motion (per frame: aligned crop, PD-FGC motion, FLAME fit; smoothed)
    render(Source, Motion, camera, neck) --> uint8 frames (N, S, S, 3)

Per frame Ψ runs the motion half of the canonical encoder, the triplane decoder, the renderer and
super-resolution; only the appearance encoders are per source (official triplane_reconstruct.py), so a
Source is computed once per person. The identity (FLAME shape) is the source's; expression and pose come
from the driving frame (official: the source's shape with the driving's motion), the neck rotation drives
the 24³ rotation field.

Inference renders with fixed ray samples (no stratified jitter): frames are deterministic and do not depend
on how they are batched, which is what a served model needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from components.config.animate import AnimateConfig
from components.animate.model_files import ModelLoadError, PsiWeights, check_state, resolve_weights, write_package
from components.animate.smoothing import one_euro, smooth_labels
from components.errors import P4DError
from components.config.fit_flame import FitFlameConfig
from components.fit_flame.manifest import ItemFailure
from components.device import pick_device
from model.face_align import to_network_image as network_image
from model.cameras import (
    LABEL_DIM,
    CameraDistribution,
    LabelLayout,
    camera_label,
    intrinsics_normalized,
    pitch_yaw_roll_cam2world,
)
from model.deformation import DeformationConfig, decompose_camera_pose
from model.networks.psi import Psi, PsiConfig, SourceFeatures

log = logging.getLogger(__name__)
CameraMode = Literal["driving", "source", "orbit", "fixed"]
NeckMode = Literal["driving", "source", "none"]
CAMERA_MODES = ("driving", "source", "orbit", "fixed")
NECK_MODES = ("driving", "source", "none")


class AnimateError(P4DError):
    """Inputs the engine cannot animate (bad image, bad motion vector, wrong option); says what and why."""


class NoFaceError(AnimateError):
    """No usable face in the source image (or in any driving frame)."""


@dataclass
class Source:
    """Everything of one source portrait that does not depend on the driving frame (cache it)."""

    features: SourceFeatures  # Ψ's encoding, batch 1, on the engine's device
    crop: np.ndarray  # (S, S, 3) uint8 aligned crop at Ψ's image size
    label: np.ndarray  # (437,) float32 FLAME + camera fit of the crop
    motion: np.ndarray  # (motion_dim,) float32 PD-FGC motion of the source itself
    notes: list[str] = field(default_factory=list)


@dataclass
class Motion:
    """Per driving frame: what Ψ is driven by. Frames without a face hold the last good values."""

    motion: np.ndarray  # (N, motion_dim) float32
    labels: np.ndarray  # (N, 437) float32: camera + FLAME (expression, jaw, eyes, neck) of each frame
    crops: np.ndarray  # (N, S, S, 3) uint8 aligned crops (held over for frames without a face)
    landmarks: np.ndarray  # (N, 478, 2) MediaPipe points in pixels of the INPUT frame; NaN where no face
    valid: np.ndarray  # (N,) bool: a face was found and fitted in this frame
    reasons: list[str | None]  # why a frame is not valid

    def __len__(self) -> int:
        return len(self.motion)


def resolve_device(device: str) -> torch.device:
    device = pick_device(device)  # `auto` means the same in every command (components/device.py)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AnimateError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise AnimateError(f"--device {device}: expected cpu, cuda[:N] or auto")
    return torch.device(device)


def to_network_image(crops: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) in [-1, 1] on ``device``: the resize the Ψ training data uses."""
    return network_image(torch.from_numpy(np.array(crops, dtype=np.uint8, copy=True)).to(device), size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] -> (N, S, S, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The FLAME fit on one CPU thread. With two threads, the same landmarks fitted twice gave parameters up to
    1.3e-2 apart (L-BFGS amplifies reduction round-off); with one, identical. A smaller difference remains after
    some batch-1 network calls in the same process (up to ~4e-3; cause not found, see README). The fit is a small
    problem; the fit_flame stage runs it one thread per worker process too."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _settings_for(psi_cfg: PsiConfig, weights: PsiWeights, config) -> dict:
    """Inference settings that are not part of the network: from the package, else from the run's typed config."""
    if weights.package is not None:
        p = weights.package
        return {
            "fit_flame": FitFlameConfig.model_validate(p["fit_flame"]),
            "deformation": DeformationConfig.model_validate(p["deformation"]),
            "cameras": CameraDistribution.model_validate(p["cameras"]),
            "neural_rendering_resolution": int(p["neural_rendering_resolution"]),
            "profile": p.get("profile", "unknown"),
        }
    if config is None:
        from components.config import PROFILES, build_config

        matches = [build_config(p) for p in PROFILES if build_config(p).networks.psi == psi_cfg]
        if not matches:
            raise ModelLoadError(f"{weights.source}: the Ψ sizes match no profile's networks.psi; pass the run's "
                                 "--params so the fitting and deformation settings are the ones it was trained with")
        config = matches[0]
    if config.networks.psi != psi_cfg:
        raise ModelLoadError(f"{weights.source}: its Ψ network differs from networks.psi of the given config "
                             f"(profile {config.profile}); pass the --params the model was trained with")
    return {
        "fit_flame": config.fit_flame,
        "deformation": config.networks.deformation,
        "cameras": config.cameras,
        # Ψ trains at psi.neural_resolution (paper: 128 throughout); render at the resolution it was trained at
        "neural_rendering_resolution": config.psi.neural_resolution,
        "profile": config.profile,
    }


class Animator:
    """Source → cached encoding; driving frames → motion + pose; render. See the module docstring."""

    def __init__(self, psi: Psi, weights: PsiWeights, settings: dict, asset_dir: Path, device: torch.device,
                 dtype: torch.dtype, options: AnimateConfig) -> None:
        from components.fit_flame.assets import load_assets
        from components.fit_flame.fitting import FlameFitter
        from components.train.conditions import FlameConditioner

        self.psi, self.weights, self.device, self.dtype = psi, weights, device, dtype
        self.fit_cfg: FitFlameConfig = settings["fit_flame"]
        self.deformation: DeformationConfig = settings["deformation"]
        self.cameras: CameraDistribution = settings["cameras"]
        self.neural_rendering_resolution: int = settings["neural_rendering_resolution"]
        self.profile: str = settings["profile"]
        self.asset_dir, self.options = asset_dir, options
        fit_assets = load_assets(asset_dir)
        if fit_assets.motion_encoder is None:
            raise ModelLoadError(f"{asset_dir}: no PD-FGC motion encoder (weights/motion_model.pth); Ψ is driven by "
                                 "its motion embedding")
        if fit_assets.motion_encoder.cfg.motion_dim != psi.cfg.motion_dim:
            raise ModelLoadError(f"{asset_dir}: PD-FGC gives {fit_assets.motion_encoder.cfg.motion_dim}-d motion, "
                                 f"the Ψ of {weights.source} takes {psi.cfg.motion_dim}-d")
        self.synthetic_assets = fit_assets.synthetic
        self.embedding = fit_assets.embedding
        self.motion_encoder = fit_assets.motion_encoder.to(device)
        self.fitter = FlameFitter(fit_assets.flame_arrays, fit_assets.embedding, self.fit_cfg).to(device)
        self.conditioner = FlameConditioner.from_assets(asset_dir, self.deformation, psi.cfg.img_resolution,
                                                        str(device))
        self._landmarker = None

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str | Path, assets: str | Path | None = None, device: str = "cpu",
             dtype: torch.dtype | None = None, config=None, options: AnimateConfig | None = None) -> "Animator":
        """Load any accepted model form (components.animate.model_files). ``assets``: the asset folder
        (FLAME, embeddings, PD-FGC); not needed for a package, which carries its own. ``config``: the run's
        P4DConfig for the non-network settings when the model is not a package. ``dtype``: None = bf16 autocast
        on CUDA, fp32 on CPU."""
        dev = resolve_device(device)
        weights = resolve_weights(model)
        if weights.assets is not None and assets is None:
            assets = weights.assets
        if assets is None:
            raise ModelLoadError(f"{model}: not a model package, so the asset folder is needed (--assets DIR)")
        assets = Path(assets)
        if not assets.is_dir():
            raise ModelLoadError(f"--assets {assets}: no such folder")
        # Fixed ray samples at inference (see the module docstring); the weights are unaffected.
        cfg = weights.config.model_copy(update={"rendering": weights.config.rendering.model_copy(
            update={"perturb": False})})
        with torch.device("meta"):
            own = Psi(cfg).state_dict()
        state = check_state(weights, own)
        settings = _settings_for(weights.config, weights, config)
        psi = Psi(cfg)
        psi.load_state_dict(state, strict=True)
        psi = psi.to(dev).eval().requires_grad_(False)
        if dtype is None:
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        if options is None:
            options = config.animate if config is not None and hasattr(config, "animate") else AnimateConfig()
        if options.compile and dev.type == "cuda":
            psi.compile_per_frame()
        psi.fused_field = options.fused_field and dev.type == "cuda"
        return cls(psi, weights, settings, assets, dev, dtype, options)

    def save_package(self, out: str | Path) -> Path:
        """A self-contained folder (weights + network config + settings + the assets used) for MLflow / Triton."""
        info = {
            "source": self.weights.source,
            "profile": self.profile,
            "fit_flame": self.fit_cfg.model_dump(mode="json"),
            "deformation": self.deformation.model_dump(mode="json"),
            "cameras": self.cameras.model_dump(mode="json"),
            "neural_rendering_resolution": self.neural_rendering_resolution,
            "image_size": self.image_size,
            "motion_dim": self.motion_dim,
            "synthetic_assets": self.synthetic_assets,
        }
        return write_package(out, self.psi.state_dict(), self.weights.config, info, self.asset_dir)

    @property
    def image_size(self) -> int:
        return self.psi.cfg.img_resolution

    @property
    def motion_dim(self) -> int:
        return self.psi.cfg.motion_dim

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return torch.autocast("cpu", enabled=False)

    # ------------------------------------------------------------------------------------- per image
    @property
    def landmarker(self):
        if self._landmarker is None:
            from components.landmarks import FaceLandmarker

            c = self.fit_cfg
            self._landmarker = FaceLandmarker(c.detect_max_side, c.min_detection_confidence, c.mesh_input_px)
        return self._landmarker

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    @staticmethod
    def _check_image(image: np.ndarray, what: str) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AnimateError(f"{what}: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        if min(image.shape[:2]) < 16:
            raise AnimateError(f"{what}: image of {image.shape[1]}x{image.shape[0]} px is too small for a face")
        return np.ascontiguousarray(image)

    @torch.no_grad()
    def _fit(self, landmarks: np.ndarray, shared_shape: bool) -> tuple[np.ndarray, np.ndarray]:
        """FLAME + camera fit of (B, 478, 2) crop landmarks -> ((B, 437) labels, (B,) mean error px at 512)."""
        idx = self.embedding.landmark_indices.numpy()
        labels, errors = [], []
        step = self.options.fit_batch
        with _one_cpu_thread(self.device):
            for i in range(0, len(landmarks), step):
                chunk = torch.from_numpy(np.ascontiguousarray(landmarks[i:i + step][:, idx])).float().to(self.device)
                groups = torch.zeros(len(chunk), dtype=torch.long, device=self.device) if shared_shape else None
                fit = self.fitter(chunk, self.fit_cfg.crop_size, groups)
                labels.append(fit.labels.float().cpu().numpy())
                errors.append(fit.reprojection_px.float().cpu().numpy())
        return np.concatenate(labels).astype(np.float32), np.concatenate(errors)

    @torch.no_grad()
    def _motion(self, crops: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        from components.fit_flame.motion import encode_motion, motion_crop

        size = self.motion_encoder.cfg.input_size
        warped = np.stack([motion_crop(c, lm, size) for c, lm in zip(crops, landmarks)])
        return np.concatenate([encode_motion(self.motion_encoder, warped[i:i + 64], str(self.device))
                               for i in range(0, len(warped), 64)]).astype(np.float32)

    def _network_crops(self, crops: np.ndarray) -> np.ndarray:
        """Aligned crops (crop_size) at Ψ's image size, uint8 (what the outputs are compared with)."""
        if crops.shape[1] == self.image_size:
            return crops
        return to_uint8(to_network_image(crops, self.image_size, torch.device("cpu")))

    @torch.no_grad()
    def prepare_source(self, image: np.ndarray) -> Source:
        """Align (the fit_flame alignment), fit FLAME, extract PD-FGC motion, encode with Ψ. Raises NoFaceError."""
        from components.fit_flame.prepare import align_image

        image = self._check_image(image, "source image")
        try:
            face = align_image(image, self.landmarker, self.fit_cfg)
        except ItemFailure as failure:
            raise NoFaceError(f"source image: {failure}") from None
        for note in face.notes:
            log.warning("source image: %s", note)
        label, error = self._fit(face.landmarks[None], shared_shape=False)
        if not np.isfinite(label).all():
            raise NoFaceError("source image: the FLAME fit diverged (non-finite parameters)")
        motion = self._motion(face.crop[None], face.landmarks[None])
        with self._autocast():  # from the full crop, resized as the training data is (not via uint8)
            features = self.psi.encode_source(to_network_image(face.crop[None], self.image_size, self.device),
                                              torch.from_numpy(motion).to(self.device))
        crop = self._network_crops(face.crop[None])[0]
        notes = face.notes + ([f"FLAME fit error {error[0]:.1f} px"] if error[0] > self.fit_cfg.max_reprojection_px
                              else [])
        return Source(features, crop, label[0], motion[0], notes)

    @torch.no_grad()
    def driving_motion(self, frames: Sequence[np.ndarray], smooth: bool = True) -> Motion:
        """Per-frame alignment, PD-FGC motion and FLAME fit (one shape per call); one-euro smoothed when ``smooth``.

        Frames without a usable face hold the last good frame's values (the first good one's before it);
        raises NoFaceError when no frame has a face.
        """
        from components.fit_flame.prepare import align_clip

        if len(frames) == 0:
            raise AnimateError("driving: no frames")
        frames = [self._check_image(f, f"driving frame {i}") for i, f in enumerate(frames)]
        cfg = self.fit_cfg.model_copy(update={"smooth_video": smooth})
        aligned = align_clip(frames, self.landmarker, cfg)
        n = len(frames)
        reasons: list[str | None] = [str(a) if isinstance(a, ItemFailure) else None for a in aligned]
        good = [i for i, a in enumerate(aligned) if not isinstance(a, ItemFailure)]
        landmarks_image = np.full((n, 478, 2), np.nan, np.float32)
        if good:
            crops = np.stack([aligned[i].crop for i in good])
            crop_landmarks = np.stack([aligned[i].landmarks for i in good])
            labels, errors = self._fit(crop_landmarks, shared_shape=True)
            for k, i in enumerate(good):
                if not np.isfinite(labels[k]).all():
                    reasons[i] = "FLAME fit diverged (non-finite parameters)"
                elif errors[k] > self.fit_cfg.max_reprojection_px:
                    reasons[i] = (f"FLAME fit too far from the landmarks: {errors[k]:.1f} px > "
                                  f"max_reprojection_px {self.fit_cfg.max_reprojection_px:g}")
                else:
                    landmarks_image[i] = aligned[i].transform.invert(aligned[i].landmarks)
            keep = [k for k, i in enumerate(good) if reasons[i] is None]
            good = [good[k] for k in keep]
        if not good:
            first = next((r for r in reasons if r), "no face")
            raise NoFaceError(f"driving: no usable face in any of the {n} frames (first: {first})")
        motion = self._motion(crops[keep], crop_landmarks[keep])
        net_crops = self._network_crops(crops[keep])
        labels = labels[keep]
        # hold: frame i takes the newest good frame at or before it (the first good one before that)
        slot = np.searchsorted(np.asarray(good), np.arange(n), side="right") - 1
        slot = np.clip(slot, 0, None)
        motion, labels, net_crops = motion[slot], labels[slot], net_crops[slot]
        if smooth and n > 1:
            motion = one_euro(motion, self.options.smooth_motion)
            labels = smooth_labels(labels, self.options.smooth_pose)
        valid = np.array([r is None for r in reasons])
        return Motion(motion, labels, net_crops, landmarks_image, valid, reasons)

    def motion_from_vectors(self, motion: np.ndarray, cameras: np.ndarray | None = None,
                            source: Source | None = None) -> Motion:
        """Motion given directly as (N, motion_dim) PD-FGC vectors, optionally with (N, 25) camera labels
        (default: the source's camera, or a frontal camera). No neck rotation: there is no FLAME fit."""
        motion = np.asarray(motion)
        if motion.ndim == 1:
            motion = motion[None]
        if motion.ndim != 2 or motion.shape[1] != self.motion_dim:
            raise AnimateError(f"motion: expected shape (N, {self.motion_dim}), got {motion.shape}")
        if not np.isfinite(motion).all():
            raise AnimateError("motion: contains NaN or infinite values")
        n = len(motion)
        labels = np.zeros((n, LABEL_DIM), np.float32)
        if cameras is None:
            cam = source.label[LabelLayout.CAMERA] if source is not None else self.fixed_camera(0.0, 0.0)
            labels[:, LabelLayout.CAMERA] = cam
        else:
            cameras = np.asarray(cameras, dtype=np.float32).reshape(n, -1)
            if cameras.shape[1] != 25:
                raise AnimateError(f"camera: expected shape (N, 25), got {cameras.shape}")
            if not np.isfinite(cameras).all():
                raise AnimateError("camera: contains NaN or infinite values")
            labels[:, LabelLayout.CAMERA] = cameras
        if source is not None:
            labels[:, LabelLayout.EXPRESSION] = source.label[LabelLayout.EXPRESSION]
            labels[:, LabelLayout.JAW_POSE] = source.label[LabelLayout.JAW_POSE]
            labels[:, LabelLayout.EYE_POSE] = source.label[LabelLayout.EYE_POSE]
        crops = np.zeros((n, self.image_size, self.image_size, 3), np.uint8)
        return Motion(motion.astype(np.float32), labels, crops, np.full((n, 478, 2), np.nan, np.float32),
                      np.ones(n, bool), [None] * n)

    # --------------------------------------------------------------------------------------- cameras
    def fixed_camera(self, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
        """(25,) camera label at the centre of the paper's radius / look-at ranges, at (yaw, pitch) radians."""
        d = self.cameras
        lookat = torch.tensor([[(lo + hi) / 2 * d.lookat_scale for lo, hi in zip(d.lookat_min, d.lookat_max)]])
        cam2world = pitch_yaw_roll_cam2world(torch.tensor([pitch]), torch.tensor([yaw]), torch.tensor([roll]),
                                             torch.tensor([sum(d.radius) / 2]), lookat)
        return camera_label(cam2world, intrinsics_normalized(d.fov_deg))[0].numpy().astype(np.float32)

    def orbit_cameras(self, n: int, pitch: float = 0.0) -> np.ndarray:
        """(n, 25): one yaw sweep across the paper's yaw range and back (a turntable), at ``pitch``."""
        lo, hi = self.cameras.yaw
        yaws = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * math.pi * np.arange(n) / max(n, 1))
        return np.stack([self.fixed_camera(float(y), pitch) for y in yaws])

    def _body_camera(self, labels: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """The label's camera with its neck rotation split off (what the renderer sees with the neck field on)."""
        p = {k: labels[:, s] for k, s in (("e", LabelLayout.EXPRESSION), ("n", LabelLayout.NECK_POSE),
                                          ("j", LabelLayout.JAW_POSE))}
        if not bool((p["n"] != 0).any()):
            return labels[:, LabelLayout.CAMERA]
        return decompose_camera_pose(self.conditioner.head, labels[:, LabelLayout.CAMERA], shape, p["e"], p["n"],
                                     p["j"])

    def frame_conditions(self, source: Source, motion: Motion, camera: CameraMode = "driving",
                         neck: NeckMode = "driving", yaw: float | None = None,
                         pitch: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((N, 437) labels with the chosen neck pose, (N, 25) render cameras) for ``render``."""
        if camera not in CAMERA_MODES:
            raise AnimateError(f"camera: got {camera!r}; expected one of {', '.join(CAMERA_MODES)}")
        if neck not in NECK_MODES:
            raise AnimateError(f"neck: got {neck!r}; expected one of {', '.join(NECK_MODES)}")
        n = len(motion)
        labels = motion.labels.copy()
        labels[:, LabelLayout.SHAPE] = source.label[LabelLayout.SHAPE]  # the source's identity
        own_pose = labels.copy()  # each frame's own neck: what its composed camera was fitted with
        src = np.repeat(source.label[None], n, 0)
        if neck == "source":
            labels[:, LabelLayout.NECK_POSE] = source.label[LabelLayout.NECK_POSE]
        elif neck == "none":
            labels[:, LabelLayout.NECK_POSE] = 0.0
        shape = torch.from_numpy(source.label[LabelLayout.SHAPE]).float().to(self.device).expand(n, -1)
        if camera in ("driving", "source"):
            base = own_pose if camera == "driving" else src
            t = torch.from_numpy(base).float().to(self.device)
            # without a neck field the composed camera carries the whole head pose
            cams = (t[:, LabelLayout.CAMERA] if neck == "none" else self._body_camera(t, shape)).cpu().numpy()
        elif camera == "orbit":
            cams = self.orbit_cameras(n, pitch or 0.0)
        else:
            if yaw is None and pitch is None:
                raise AnimateError("camera 'fixed' needs --yaw and/or --pitch (radians)")
            cams = np.repeat(self.fixed_camera(yaw or 0.0, pitch or 0.0)[None], n, 0)
        return labels, cams.astype(np.float32)

    # ---------------------------------------------------------------------------------------- render
    @staticmethod
    def _expand(source: SourceFeatures, b: int) -> SourceFeatures:
        def grow(t):
            return None if t is None else t.expand(b, *t.shape[1:])

        scale = source.motion_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.expand(b, *scale.shape[1:])
        return replace(source, neutral_tokens=grow(source.neutral_tokens), detail=grow(source.detail),
                       background=grow(source.background), planes=grow(source.planes), motion_scale=scale)

    @staticmethod
    def _stack(sources: Sequence[SourceFeatures], rows: Sequence[int]) -> SourceFeatures:
        """Batch-1 encodings of K sources -> one batch whose row i is ``sources[rows[i]]`` (a Triton batch holds
        requests of different people). Each source's tensors are copied once per row that uses it; no re-encoding."""
        first = sources[0]
        if any(s.batch_size != 1 or s.token_grid != first.token_grid for s in sources):
            raise AnimateError("render: sources to stack must be single encodings of one network "
                               f"(batch sizes {[s.batch_size for s in sources]}, grids "
                               f"{sorted({s.token_grid for s in sources})})")
        index = torch.as_tensor(list(rows), dtype=torch.long, device=first.neutral_tokens.device)

        def pick(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            if parts[0] is None:  # no background / no static planes: None for every source of one network
                return None
            return torch.cat(parts).index_select(0, index)

        scales = [s.motion_scale for s in sources]
        if not any(isinstance(s, torch.Tensor) for s in scales) and len(set(scales)) == 1:
            scale = scales[0]  # one float for all (Ψ's encode_source default): stays a float
        else:  # per-row (B, 1, 1) factors, as Psi._per_sample shapes them
            dtype = next((s.dtype for s in scales if isinstance(s, torch.Tensor)), torch.float32)
            scale = pick([torch.as_tensor(s, dtype=dtype, device=index.device).reshape(1, 1, 1) for s in scales])
        return replace(first, neutral_tokens=pick([s.neutral_tokens for s in sources]),
                       detail=pick([s.detail for s in sources]), background=pick([s.background for s in sources]),
                       planes=pick([s.planes for s in sources]), motion_scale=scale)

    def _row_features(self, source: Source | Sequence[Source], b: int) -> SourceFeatures:
        """The encoding of every one of ``b`` rows: one Source for all rows, or one Source per row."""
        if isinstance(source, Source):
            return self._expand(source.features, b)
        if len(source) != b:
            raise AnimateError(f"render: {len(source)} sources for {b} rows; give one source per row")
        distinct: dict[int, Source] = {}  # by identity: rows of one Source object share its encoding
        for s in source:
            distinct.setdefault(id(s), s)
        if len(distinct) == 1:  # one person: the batch-1 encoding broadcast, as for a single Source
            return self._expand(source[0].features, b)
        slot = {key: i for i, key in enumerate(distinct)}
        return self._stack([s.features for s in distinct.values()], [slot[id(s)] for s in source])

    @torch.no_grad()
    def render(self, source: Source, motion: Motion, camera: CameraMode = "driving", neck: NeckMode = "driving",
               yaw: float | None = None, pitch: float | None = None, batch: int | None = None,
               progress=None) -> np.ndarray:
        """(N, S, S, 3) uint8 frames of the source driven by ``motion`` (see ``frame_conditions`` for the modes).

        ``progress``: called with the number of frames done after each batch (progress bars)."""
        labels, cams = self.frame_conditions(source, motion, camera, neck, yaw, pitch)
        batch = batch or self.options.batch
        out = []
        for i in range(0, len(motion), batch):
            out.append(self.render_conditions(source, motion.motion[i:i + batch], labels[i:i + batch],
                                              cams[i:i + batch]))
            if progress is not None:
                progress(len(out[-1]))
        return np.concatenate(out)

    @torch.no_grad()
    def render_conditions(self, source: Source | Sequence[Source], motion: np.ndarray, labels: np.ndarray,
                          cameras: np.ndarray) -> np.ndarray:
        """One network call: (b, motion_dim) motion, (b, 437) labels (neck pose drives the rotation field),
        (b, 25) render cameras -> (b, S, S, 3) uint8. ``source``: one Source for every row, or a sequence of b
        Sources (one per row; rows of the same Source object share its encoding) to render several people at once.
        The labels carry each row's identity (FLAME shape); ``frame_conditions`` of the row's own source sets it."""
        b = len(motion)
        dev = self.device
        features = self._row_features(source, b)
        label_t = torch.from_numpy(labels).float().to(dev)
        cond = self.conditioner(label_t, camera=torch.from_numpy(cameras).float().to(dev), images=False)
        with self._autocast():
            result = self.psi.render_frame(features, torch.from_numpy(motion).float().to(dev),
                                           cond.c_render, self.neural_rendering_resolution, cond.deform_fn)
        return to_uint8(result["image"])
