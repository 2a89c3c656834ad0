"""DVC params of the generated pipeline: a change in params.yaml re-runs exactly the stages that read it.

A scratch DVC project gets the generated dvc.yaml / params.yaml, placeholder deps and outs, and a lock
(`dvc commit`, real DVC); then one value of each section is changed in params.yaml at a time and
`dvc status --json` says which stages it marks changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.train import psi, psi3d
from pipelines.dag import STAGE_BY_NAME, resolve, select
from pipelines.dvc_gen import ensure_params_keys, missing_params_keys, tracked_params, write_dvc
from pipelines.platform_config import build_platform

MINE = ["fit_flame", "fit_flame_video", "synthesize", "train_psi3d", "train_psi"]
TRAIN = {"train_psi3d", "train_psi"}

# (dotted key, new value) -> the stages whose outputs it changes
CHANGES = [
    ("profile", "paper", set(MINE)),
    ("seed", 3, {"synthesize", *TRAIN}),
    ("fit_flame.frames_per_clip", 5, {"fit_flame", "fit_flame_video"}),
    ("networks.genhead.truncation_psi", 0.7, {"synthesize", "train_psi3d"}),
    ("networks.deformation.box_warp", 1.2, {"synthesize", *TRAIN}),
    ("networks.psi3d.neural_rendering_resolution", 32, TRAIN),
    ("networks.psi.neural_rendering_resolution", 32, {"train_psi"}),
    ("networks.pdfgc.width", 16, {"train_psi"}),
    ("networks.discriminator.c_dim", 25 + 1, TRAIN),
    ("cameras.yaw", [-0.5, 0.5], {"synthesize", *TRAIN}),
    ("camera_mix_fitted_prob", 0.25, {"synthesize"}),
    ("synthesize.views", 3, {"synthesize"}),
    ("psi3d.lr", 2e-4, {"train_psi3d"}),
    ("psi.lr", 2e-4, {"train_psi"}),
    ("losses.l1", 2.0, TRAIN),
    ("deepspeed.zero_stage", 1, TRAIN),
    ("checkpoints.every_images", 32, TRAIN),
    ("train.r1_every", 8, TRAIN),
    ("tracking.experiment", "elsewhere", set()),  # where runs are logged changes no output
    ("storage.prefix", "other", set()),
]


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=True)


def _set(data: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[leaf] = value


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvcparams")
    (root / "params.yaml").write_text("profile: tiny\nseed: 0\n")
    stages = resolve(select(MINE), build_platform("tiny"))
    write_dvc(root, stages)
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    for stage in doc["stages"].values():
        for path in [*stage["deps"], *(next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"])]:
            (root / path).mkdir(parents=True, exist_ok=True)
            (root / path / "placeholder.txt").write_text(path)
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "commit", "-f", "-q")  # lock every stage as it is now, without running any
    return root


def _changed(root: Path) -> set[str]:
    status = json.loads(_dvc(root, "status", "--json").stdout or "{}")
    return {name.split(":")[-1] for name in status}


@pytest.mark.slow  # 20 `dvc status` calls: ~40 s on 2 cores
def test_each_params_change_marks_exactly_the_stages_that_read_it(project):
    assert _changed(project) == set()
    original = (project / "params.yaml").read_text()
    seen = {}
    try:
        for key, value, _ in CHANGES:
            data = yaml.safe_load(original)
            _set(data, key, value)
            (project / "params.yaml").write_text(yaml.safe_dump(data))
            seen[key] = _changed(project)
            (project / "params.yaml").write_text(original)
    finally:
        (project / "params.yaml").write_text(original)
    assert seen == {key: expected for key, _, expected in CHANGES}


def test_training_outputs_persist_and_params_are_the_stages_config_keys(project):
    doc = yaml.safe_load((project / "dvc.yaml").read_text())
    assert doc["stages"]["train_psi3d"]["outs"] == [{"models/psi3d": {"persist": True}}]
    assert doc["stages"]["train_psi"]["outs"] == [{"models/psi": {"persist": True}}]
    assert doc["stages"]["synthesize"]["outs"] == ["data/synthesize"]  # not a resuming stage: DVC cleans it
    # one list: what the training stage's resume digest covers is what DVC re-runs it for
    assert set(tracked_params(STAGE_BY_NAME["train_psi3d"])) == set(psi3d.CONFIG_KEYS)
    assert set(tracked_params(STAGE_BY_NAME["train_psi"])) == set(psi.CONFIG_KEYS)


def test_sub_section_keys_are_added_inside_their_section_keeping_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# mine\nprofile: tiny\nnetworks:\n  psi3d:\n    motion_dim: 100\n# after\nseed: 1\n")
    added = ensure_params_keys(params, ["profile", "networks.psi3d", "networks.genhead", "psi3d", "seed"])
    assert added == ["networks.genhead", "psi3d"]
    data = yaml.safe_load(params.read_text())
    assert data["networks"] == {"psi3d": {"motion_dim": 100}, "genhead": {}} and data["psi3d"] == {}
    text = params.read_text()
    assert text.startswith("# mine\n") and "# after\nseed: 1\n" in text
    assert missing_params_keys(params, ["networks.genhead", "networks.psi3d", "psi3d"]) == []


def test_a_section_and_its_sub_sections_are_added_together(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nseed: 0\n")  # what `p4d demo` starts from
    ensure_params_keys(params, ["profile", "networks", "networks.genhead", "camera_mix_fitted_prob"])
    data = yaml.safe_load(params.read_text())
    assert data["networks"] == {"genhead": {}} and data["camera_mix_fitted_prob"] == 0.5
    assert missing_params_keys(params, ["networks", "networks.genhead", "camera_mix_fitted_prob"]) == []
