"""Test helper: a module's state dict against an official key -> shape list (model/official_keys/*.json)."""

from __future__ import annotations

import json

from torch import nn

from model.official_keys import OFFICIAL_KEYS_DIR


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` in state-dict order (works on the ``meta`` device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def official_shapes(name: str, subset: str | None = None) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` in official state-dict order from ``<name>.json`` (or one of its ``subsets``)."""
    data = json.loads((OFFICIAL_KEYS_DIR / f"{name}.json").read_text())
    keys = data["subsets"][subset] if subset else data["keys"]
    return {k: tuple(shape) for k, shape in keys.items()}
