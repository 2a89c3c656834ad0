"""The named profiles: what ``paper`` and ``tiny`` set on top of the section defaults.

- ``paper``: the numbers of the Portrait4D-v2 paper verbatim and the official network sizes (8x A100-80GB);
  these are the sections' own defaults.
- ``tiny``: the same structure scaled down so that the embedded default runs on 2 CPU cores in minutes.
  Every size and image count shrinks; no switch is dropped. This module is the one home of those values:
  a section class has no ``tiny()`` of its own, so nothing can build a "tiny" section that the profile
  does not.
"""

from __future__ import annotations

from typing import Any, Literal

from components.config.evaluate import METRIC_NAMES, GateRule
from components.config.platform import PlatformConfig
from model.deformation import DeformationConfig
from model.networks.arcface import ArcFaceConfig
from model.networks.discriminator import DiscriminatorConfig
from model.networks.genhead import GenHeadConfig
from model.networks.lpips import LPIPSConfig
from model.networks.pdfgc import PDFGCConfig
from model.networks.psi.config import PsiConfig

PROFILES = ("tiny", "paper")
Profile = Literal["tiny", "paper"]


def _paper() -> dict[str, Any]:
    return {"profile": "paper"}


def _tiny_networks() -> dict[str, Any]:
    """The model library's tiny sizes (``model/`` owns them: it cannot import the config)."""
    motion_dim = PDFGCConfig.tiny().motion_dim  # Ψ consumes PD-FGC's embedding: the tiny Ψ takes its width
    return {
        "genhead": GenHeadConfig.tiny().model_dump(),
        "psi3d": PsiConfig.tiny(static=True, motion_dim=motion_dim).model_dump(),
        # Ψ renders at the resolution it trains at (``psi.neural_resolution`` below; P4DConfig checks they agree)
        "psi": PsiConfig.tiny(motion_dim=motion_dim, neural_rendering_resolution=32).model_dump(),
        "discriminator": DiscriminatorConfig.tiny().model_copy(update={"img_resolution": 64}).model_dump(),
        "pdfgc": PDFGCConfig.tiny().model_dump(),
        "arcface": ArcFaceConfig.tiny().model_dump(),
        "lpips": LPIPSConfig.tiny().model_dump(),
        "deformation": DeformationConfig.tiny().model_dump(),
    }


def _tiny_gate() -> dict[str, dict[str, Any]]:
    """The tiny profile trains random-width networks for a few dozen images: its renders are not faces.
    Only bounds every finite result meets (PSNR of any two 8-bit images is >= 0 dB, SSIM >= -1), and only on
    the pixel metrics, which are always computed: identity metrics need a face in the render, which a tiny Ψ
    does not draw, and a gated metric that is missing fails the gate. So the demo exercises the gate without
    pretending to quality."""
    floors = {"eval/self/psnr": 0.0, "eval/self/ssim": -1.0}
    return {name: GateRule(threshold=floors.get(name)).model_dump() for name in METRIC_NAMES}


def _tiny_platform() -> dict[str, Any]:
    """CPU only, small requests, small synthetic data: the same pipeline compiles for a kind/minikube cluster."""
    cpu_stage = {"cpu": "2", "memory": "4Gi", "gpus": 0, "shm": "1Gi", "retries": 1}
    return {
        "endpoints": {"s3_endpoint_url": "http://minio.p4d.svc.cluster.local:9000"},
        "shard_parallelism": 2,
        "stages": {name: dict(cpu_stage) for name in PlatformConfig().stages},
    }


def _tiny() -> dict[str, Any]:
    """Same structure, scaled for 2 CPU cores: every size and image count shrinks, no switch is dropped."""
    return {
        "profile": "tiny",
        "networks": _tiny_networks(),
        # CPU-friendly: few frames, short optimisation, small working sizes
        "fit_flame": {
            "frames_per_clip": 4,
            "detect_max_side": 512,
            "min_face_px": 48.0,
            "mesh_input_px": 256,
            "crop_size": 128,
            "iterations_camera": 30,
            "iterations_full": 300,
        },
        # a handful of identities at GenHeadConfig.tiny() sizes (16² renders, 64² images)
        "synthesize": {
            "identities": 6,
            "views": 2,
            "shard_size": 2,
            "batch": 4,
            "neural_rendering_resolution": 16,
            "triplane_points": 64,
        },
        # every interval shrunk to the tiny image counts below (48 / 32 images per stage)
        "train": {
            "identity_start_images": 8,
            "density_reg_points": 64,
            "density_reg_every": 4,
            "r1_every": 4,
            "cross_view_every": 2,
            "log_every_images": 2,
            "sample_every_images": 16,
            "sample_grid_rows": 2,
            "novel_views": 2,
            "data_workers": 0,
        },
        "psi3d": {
            "batch": 2,
            "total_images": 48,
            "adversarial_start_images": 16,
            "renderer_frozen_until_images": 16,
            "depth_and_triplane_loss_until_images": 16,
            "neural_resolution_initial": 16,
            "neural_resolution_final": 32,
            "resolution_ramp_start_images": 16,
            "resolution_ramp_images": 16,
        },
        "psi": {
            "batch": 2,
            "total_images": 32,
            "neural_resolution": 32,
            "training_clips": 2,
            "frames_per_clip": 4,
        },
        "deepspeed": {"zero_stage": 0, "bf16": False},
        "platform": _tiny_platform(),
        "checkpoints": {"every_images": 16, "keep_last": 2, "ema_half_life_images": 8},
        # the embedded default: synthetic assets, random-ish weights; approve on a passing gate so it deploys
        "register": {
            "auto_approve": True,
            "require_real_assets_for_champion": False,
            "connect_attempts": 2,
            "connect_backoff_s": 0.5,
        },
        "evaluate": {
            "frames_per_clip": 4,
            "novel_yaws": (-0.4, 0.4),
            "bootstrap_samples": 200,
            "sample_items": 3,
            "turntable_frames": 8,
            "video_fps": 8,
            "render_batch": 4,
            "gate": _tiny_gate(),
        },
        # CPU instances, a short session timeout; the local stage smoke-tests a real server. The idle timeout
        # counts from a session's last request's ARRIVAL: on a busy 2-core box one source encoding can take
        # tens of seconds, so it must be well above that
        "deploy": {
            "instance_kind": "cpu",
            "max_batch_size": 4,
            "session_idle_timeout_s": 120.0,
            "ready_timeout_s": 180.0,
            "local_smoke": True,
        },
    }


PROFILE_DEFAULTS = {"paper": _paper, "tiny": _tiny}
