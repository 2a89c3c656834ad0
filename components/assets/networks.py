"""Build our networks from the typed config and load user-supplied weights into them safely.

One table says, for each network asset, which module class and which config section builds it and
which official class its released weights came from. ``p4d assets synth`` writes weights through
it, ``p4d assets check`` compares shapes through it, and the stages load weights through it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from components.config import P4DConfig, build_config


@dataclass(frozen=True)
class NetworkSpec:
    module: str  # "package.module:Class" of OUR implementation
    config_field: str  # field of P4DConfig.networks holding its config
    official_class: str | None = None  # class recorded in official pickles (None: plain state dict)


NETWORKS: dict[str, NetworkSpec] = {
    "genhead": NetworkSpec(
        "model.networks.genhead:GenHead", "genhead", "training.generator.triplane.PartTriPlaneGeneratorDeform"
    ),
    "psi3d": NetworkSpec(
        "model.networks.psi:Psi", "psi3d", "training.reconstructor.triplane_reconstruct.TriPlaneReconstructorNeutralize"
    ),
    "psi": NetworkSpec(
        "model.networks.psi:Psi", "psi", "training.reconstructor.triplane_reconstruct.TriPlaneReconstructorNeutralize"
    ),
    "discriminator": NetworkSpec(
        "model.networks.discriminator:DualDiscriminator",
        "discriminator",
        "training.discriminator.dual_discriminator.DualDiscriminatorDeform",
    ),
    "pdfgc_motion_model": NetworkSpec("model.networks.pdfgc:PDFGCMotionEncoder", "pdfgc"),
    "arcface_r18": NetworkSpec("model.networks.arcface:ArcFaceIResNet", "arcface"),
    "lpips_vgg": NetworkSpec("model.networks.lpips:LPIPS", "lpips"),
}


def _spec(name: str) -> NetworkSpec:
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]


def _config_of(cfg: P4DConfig | str):
    return build_config(cfg) if isinstance(cfg, str) else cfg


def build_network(name: str, cfg: P4DConfig | str, device: torch.device | str = "cpu") -> nn.Module:
    """Our module for ``name`` with the sizes of ``cfg`` (a P4DConfig or a profile name)."""
    spec = _spec(name)
    module_path, cls_name = spec.module.split(":")
    cls = getattr(importlib.import_module(module_path), cls_name)
    net_cfg = getattr(_config_of(cfg).networks, spec.config_field)
    with torch.device(device):
        return cls(net_cfg)


def expected_shapes(name: str, cfg: P4DConfig | str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of our module at ``cfg``'s sizes (built on the meta device: instant)."""
    return {k: tuple(v.shape) for k, v in build_network(name, cfg, "meta").state_dict().items()}


def official_record(name: str, cfg: P4DConfig | str, state: dict[str, torch.Tensor]):
    """What an official-style pickle stores for ``name``: class name, init kwargs and tensors."""
    from components.import_official import OfficialRecord

    spec = _spec(name)
    net_cfg = getattr(_config_of(cfg).networks, spec.config_field)
    return OfficialRecord(
        class_name=spec.official_class or name,
        init_kwargs={"p4d_config": net_cfg.model_dump(mode="json")},
        state_dict=state,
    )


def load_network(name: str, asset_dir: str | Path, cfg: P4DConfig | str, device: str = "cpu") -> nn.Module:
    """Build ``name`` and load its asset's weights (official pickle or state dict), strictly, without running code."""
    from components.assets.manifest import ASSETS
    from components.import_official import load_state_dict_file

    asset = next(a for a in ASSETS if a.network == name or (a.name == name and a.network))
    module = build_network(name, cfg, "cpu")
    state = load_state_dict_file(Path(asset_dir) / asset.path, expected=expected_shapes(name, cfg))
    module.load_state_dict(state, strict=True)
    return module.to(device)
