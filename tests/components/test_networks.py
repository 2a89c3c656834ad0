"""The typed config's paper sizes give state dicts equal to the official ones, key for key."""

import json

import pytest

from components.assets.networks import NETWORKS, expected_shapes
from model.official_keys import OFFICIAL_KEYS_DIR


def official(name: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Official key -> shape, and the keys that are derived data rather than trained weights.

    Official generators also pickle their FLAME deformer's buffers (`deformer.*`: FLAME 2020 arrays, region
    masks, the simplified proxy mesh) and a `dataset_label_std` the training loop adds. Those come from the
    user's FLAME files / the dataset, not training: our networks take the deformer as an input built from
    the FLAME assets, and the importer sets them aside (`derived_buffers` in the key lists).
    """
    data = json.loads((OFFICIAL_KEYS_DIR / f"{name}.json").read_text())
    keys = {k: tuple(d if d is not None else -1 for d in v) for k, v in data["keys"].items()}
    return keys, set(data.get("derived_buffers") or [])


@pytest.mark.parametrize("name", ["genhead", "psi3d", "psi", "discriminator", "pdfgc_motion_model", "arcface_r18"])
def test_paper_state_dict_equals_official_keys_and_shapes(name):
    ours = expected_shapes(name, "paper")
    theirs, derived = official(name)
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))[:5]
    assert set(theirs) - set(ours) <= derived, sorted(set(theirs) - set(ours) - derived)[:5]
    mismatched = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not mismatched


def test_lpips_covers_official_keys_up_to_the_aliased_lins():
    ours = expected_shapes("lpips_vgg", "paper")
    theirs, _ = official("lpips_vgg")
    # The official module registers its linear heads twice (lin0-4 and lins.0-4); we keep one copy.
    assert {k for k in theirs if not k.startswith("lins.")} == set(ours)


def test_tiny_profile_builds_every_network_small():
    for name in NETWORKS:
        tiny = sum(int(__import__("math").prod(s)) for s in expected_shapes(name, "tiny").values())
        paper = sum(int(__import__("math").prod(s)) for s in expected_shapes(name, "paper").values())
        assert tiny < paper / 10, name
