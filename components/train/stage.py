"""What both training stages do before and around the loop: asset checks, process group, sample tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from components.assets.check import AssetError, require_assets
from components.assets.policy import refuse_synthetic_outside_tiny
from components.train.engine import DistInfo, init_distributed

SAMPLE_CAMERA_SEED = 20240101  # the grid's novel views are the same cameras at every interval


def prepare(cfg, assets: str | Path, required: list[str], device: str) -> DistInfo:
    """Fail before any work when an asset is missing or synthetic outside the tiny profile; join the group."""
    asset_dir = Path(assets)
    if not asset_dir.is_dir():
        raise AssetError(f"asset directory {asset_dir} does not exist; see `p4d assets check --help`")
    refuse_synthetic_outside_tiny(asset_dir, cfg.profile)
    require_assets(asset_dir, required)
    return init_distributed(device)


def sample_cameras_c(distribution, n: int, device: torch.device) -> list[torch.Tensor]:
    """``n`` fixed (1, 25) camera labels from the seed's distribution (sample-grid novel views)."""
    from model.cameras import sample_cameras

    c = sample_cameras(distribution, n, torch.Generator().manual_seed(SAMPLE_CAMERA_SEED))["c"]
    return [c[i : i + 1].to(device) for i in range(n)]


def tiles(images: torch.Tensor, size: int | None = None) -> list[np.ndarray]:
    """(B, 3, H, W) in [-1, 1] -> B uint8 (size, size, 3) tiles (default size: the batch's own)."""
    images = images.detach().float()
    size = size or images.shape[-1]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(pixels)
