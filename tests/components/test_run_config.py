"""The run folder's ``config.yaml`` and the message of a refused resume (components/io/run_config.py)."""

from __future__ import annotations

import pytest

from components.config import build_config, load_params
from components.io.run_config import (
    MAX_NAMED_KEYS,
    RUN_CONFIG_FILE,
    config_difference,
    resume_refusal,
    write_run_config,
)


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_config_yaml_loads_back_into_the_same_config(tmp_path, profile):
    cfg = build_config(profile, {"psi": {"batch": 4}, "seed": 7})
    path = write_run_config(tmp_path / "run", cfg)
    assert path == tmp_path / "run" / RUN_CONFIG_FILE
    assert load_params(path) == cfg
    assert [p.name for p in (tmp_path / "run").iterdir()] == [RUN_CONFIG_FILE]  # no temp file left beside it


def test_a_rewrite_replaces_the_whole_file(tmp_path):
    write_run_config(tmp_path, build_config("paper"))
    write_run_config(tmp_path, build_config("tiny", {"seed": 3}))
    assert load_params(tmp_path / RUN_CONFIG_FILE) == build_config("tiny", {"seed": 3})


def test_difference_names_changed_added_and_removed_keys_only():
    saved = {"psi": {"batch": 32, "lr": 1e-4}, "old": 1, "tags": [1, 2], "profile": "tiny"}
    current = {"psi": {"batch": 16, "lr": 1e-4}, "seed": 1, "tags": [1, 3], "profile": "tiny"}
    assert config_difference(saved, current) == ["old", "psi.batch", "seed", "tags"]
    assert config_difference(saved, saved) == []
    # two real configs: only what was overridden
    assert config_difference(build_config("tiny").model_dump(mode="json"),
                             build_config("tiny", {"psi": {"lr": 3e-4}}).model_dump(mode="json")) == ["psi.lr"]


def test_refusal_names_each_key_with_both_values_and_counts_the_rest():
    msg = resume_refusal("runs/psi", {"psi": {"batch": 32}, "old": "x"}, {"psi": {"batch": 16}, "seed": 1},
                         "resume with the same params")
    assert msg == ("resume refused: these settings differ from the run in runs/psi: old (x -> absent), "
                   "psi.batch (32 -> 16), seed (absent -> 1); resume with the same params")
    many = resume_refusal("d", {f"k{i:02d}": i for i in range(MAX_NAMED_KEYS + 3)}, {}, "start a new --out")
    assert "k07 (7 -> absent), and 3 more; start a new --out" in many and "k08" not in many
    long = resume_refusal("d", {"sha": "a" * 64}, {"sha": "b" * 64}, "")
    assert "sha (aaaaaaaaaaaaaaaaaaaaa... -> bbbbbbbbbbbbbbbbbbbbb...)" in long
    assert "\n" not in msg + many + long  # one line
