"""Networks of the training stages: what is trained, what is frozen, and where the weights start.

- Ψ_3d starts from scratch except its renderer (MLP decoder + super-resolution), copied from GenHead
  (the official run resumes from the GenHead pickle with ``require_all=False``: these are the keys
  they share) and held frozen for the first images (paper).
- Ψ starts from a Ψ_3d run's EMA except the motion cross-attention layers (random, paper); its
  discriminator continues the Ψ_3d run's when one was exported (official resume loads D too).
- Frozen helpers (LPIPS, ArcFace, PD-FGC, the Ψ_3d teacher, GenHead) are in eval mode without grads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from components.errors import P4DError
from model.networks.psi import is_motion_parameter

MODEL_DIR = "model"
RENDERER_PREFIXES = ("decoder.", "superresolution.")


class WeightsError(P4DError):
    """Starting weights are missing or do not fit the configured networks."""


def frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def load_frozen(name: str, asset_dir: str | Path, cfg, device: torch.device) -> nn.Module:
    from components.assets.networks import load_network

    return frozen(load_network(name, asset_dir, cfg, str(device)))


def is_renderer_parameter(name: str) -> bool:
    """The renderer's learnable parts the paper freezes early: MLP radiance decoder and super-resolution."""
    return name.startswith(RENDERER_PREFIXES)


def is_optimized(name: str) -> bool:
    """Official optimizer groups skip every parameter named '*bn*' (the encoders' BatchNorm affines)."""
    return "bn" not in name


def copy_matching(target: nn.Module, source: dict[str, torch.Tensor], keep) -> list[str]:
    """Copy ``source`` tensors whose key passes ``keep`` into ``target``; shapes must agree. Returns the keys."""
    own = target.state_dict()
    copied = []
    for key, value in source.items():
        if key in own and keep(key):
            if own[key].shape != value.shape:
                raise WeightsError(f"{key}: starting weights have shape {tuple(value.shape)}, "
                                   f"the configured network {tuple(own[key].shape)}")
            own[key] = value.to(own[key].dtype)
            copied.append(key)
    target.load_state_dict(own)
    return copied


def init_renderer_from_genhead(psi: nn.Module, genhead_state: dict[str, torch.Tensor]) -> int:
    copied = copy_matching(psi, genhead_state, is_renderer_parameter)
    if not copied:
        raise WeightsError("GenHead weights share no decoder / superresolution keys with Ψ_3d")
    return len(copied)


def init_psi_from_psi3d(psi: nn.Module, psi3d_state: dict[str, torch.Tensor]) -> int:
    """Everything but the motion cross-attention layers (which keep their random init)."""
    missing = [k for k in psi.state_dict() if k not in psi3d_state and not is_motion_parameter(k)]
    if missing:
        raise WeightsError(f"Ψ_3d weights lack {len(missing)} keys Ψ needs (first: {missing[:3]})")
    return len(copy_matching(psi, psi3d_state, lambda k: not is_motion_parameter(k)))


def find_psi3d_weights(path: str | Path) -> Path:
    """A Ψ_3d weights file from: a file, a train_psi3d output folder, or one of its checkpoint folders."""
    from components.train.checkpoint import EMA_FILE, complete_checkpoints

    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / MODEL_DIR / "psi3d.safetensors", path / EMA_FILE):
        if candidate.is_file():
            return candidate
    done = complete_checkpoints(path / "checkpoints")
    if done:
        return done[-1] / EMA_FILE
    raise WeightsError(f"{path}: no Ψ_3d weights (expected a weights file, a `p4d train psi3d` output folder "
                       f"with {MODEL_DIR}/psi3d.safetensors, or a checkpoint folder)")


def load_state(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    from components.import_official import load_state_dict_file
    from components.import_official.errors import OfficialImportError

    try:
        return load_state_dict_file(path, expected=expected)
    except OfficialImportError as err:
        raise WeightsError(str(err)) from None
