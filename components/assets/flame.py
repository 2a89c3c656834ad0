"""The FLAME head every stage uses: FLAME 2020 + part sets + proxy mesh, from the asset directory.

The official part sets (``FLAME_masks.pkl`` + ``flame_addition_info_new_smallface.npy``) and the
official simplified proxy mesh (``simplify_baricentric2.npy``) are used when present; otherwise both
are derived from the FLAME mesh (``synthetic_flame_parts`` / ``build_proxy_mesh``), which is exact for
the synthetic bundle and an approximation for real FLAME (``FlameHeadSource.derived`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from components.assets.manifest import spec
from model.deformation import (
    DeformationConfig,
    FlameHead,
    FlameParts,
    ProxyMesh,
    build_proxy_mesh,
    part_labels,
    synthetic_flame_parts,
)
from model.flame import FlameLayer, load_flame_pickle, load_pickled_npy


@dataclass(frozen=True)
class FlameHeadSource:
    head: FlameHead
    derived: tuple[str, ...]  # which of parts / proxy mesh were derived rather than read


def flame_head_from_arrays(
    arrays: Mapping[str, Any],
    config: DeformationConfig,
    parts: FlameParts | None = None,
    proxy: ProxyMesh | None = None,
) -> FlameHead:
    """FlameHead from FLAME arrays; missing part sets / proxy mesh are derived from the mesh."""
    parts = parts or synthetic_flame_parts(arrays)
    proxy = proxy or build_proxy_mesh(arrays["v_template"], arrays["f"], part_labels=part_labels(parts))
    return FlameHead(FlameLayer(arrays), proxy, parts, None, config)


def official_parts_and_proxy(asset_dir: Path, n_vertices: int) -> tuple[FlameParts | None, ProxyMesh | None]:
    masks_path = asset_dir / spec("flame_masks").path
    info_path = asset_dir / spec("flame_parts_info").path
    proxy_path = asset_dir / spec("flame_proxy_mesh").path
    parts = None
    if masks_path.exists() and info_path.exists():
        parts = FlameParts.from_official(load_flame_pickle(masks_path), load_pickled_npy(info_path))
    proxy = ProxyMesh.from_official(load_pickled_npy(proxy_path), n_vertices) if proxy_path.exists() else None
    return parts, proxy


def load_flame_head(asset_dir: str | Path, config: DeformationConfig) -> FlameHeadSource:
    asset_dir = Path(asset_dir)
    arrays = load_flame_pickle(asset_dir / spec("flame_model").path)
    parts, proxy = official_parts_and_proxy(asset_dir, arrays["v_template"].shape[0])
    derived = tuple(name for name, value in (("parts", parts), ("proxy_mesh", proxy)) if value is None)
    return FlameHeadSource(flame_head_from_arrays(arrays, config, parts, proxy), derived)
