"""pipelines/dag.py: one DAG description; dvc.yaml and the Kubeflow spec generated from it agree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import P4DConfig, build_config
from pipelines import dag
from pipelines.dvc_gen import dvc_yaml_text, render_dvc
from pipelines.kubeflow.pipeline import compile_pipeline
from pipelines.platform_config import build_platform
from tests.pipelines.spec_graph import SpecGraph

REPO = Path(__file__).resolve().parents[2]


def test_description_is_consistent_and_ordered():
    dag.validate()
    order = [s.name for s in dag.topological_order(dag.STAGES)]
    for up, down in dag.edges(dag.STAGES):
        assert order.index(up) < order.index(down)
    assert ("synthesize", "train_psi3d") in dag.edges(dag.STAGES)
    assert ("train_psi3d", "train_psi") in dag.edges(dag.STAGES)
    assert ("fit_flame_video", "train_psi") in dag.edges(dag.STAGES)


def test_stage_params_are_config_keys():
    from pipelines.dvc_gen import config_field

    for s in dag.STAGES:
        unknown = set()
        for key in s.params:  # a section ("evaluate") or a dotted key into one ("networks.psi")
            try:
                config_field(key)
            except KeyError:
                unknown.add(key)
        assert not unknown, f"{s.name} tracks {unknown}, not keys of P4DConfig"


def test_bad_descriptions_are_rejected():
    good = dag.STAGE_BY_NAME["fit_flame"]
    typo = dag.Stage(**{**good.__dict__, "args": (*good.args, "--extra", "{labels_image}")})
    with pytest.raises(dag.DagError, match="labels_image"):
        dag.validate([typo])
    twice = dag.Stage(**{**good.__dict__, "name": "fit_again"})
    with pytest.raises(dag.DagError, match="written by fit_flame and fit_again"):
        dag.validate([good, twice])


def test_every_stage_is_selected_and_a_missing_command_is_named():
    # no stage drops out: select() is the whole DAG in order, and every stage's command is registered
    assert [s.name for s in dag.select()] == [s.name for s in dag.topological_order(dag.STAGES)]
    assert {s.command for s in dag.STAGES} <= dag.registered_commands()
    with pytest.raises(dag.DagError, match=r"fit_flame \(`p4d fit-flame`\), fit_flame_video .*fit_flame_test"):
        dag.select(commands=[c for c in dag.registered_commands() if c != ("fit-flame",)])
    with pytest.raises(dag.DagError, match=r"evaluate \(`p4d evaluate`\)"):
        dag.select(["fit_flame_video", "fit_flame_test", "fit_flame", "synthesize", "train_psi3d", "train_psi",
                    "evaluate"], commands=[s.command for s in dag.STAGES if s.name != "evaluate"])


def test_render_fills_every_placeholder():
    s = dag.STAGE_BY_NAME["synthesize"]
    values = {"labels_images": "L", "assets": "A", "multiview": "M", "params": "P", "device": "cpu",
              "seed": "3", "identities": "7"}
    assert s.render(values) == ["synthesize", "--labels", "L", "--assets", "A", "--out", "M", "--device", "cpu",
                                "--params", "P"]
    assert s.render(values, per_shard=True)[-4:] == ["--identities", "7", "--seed", "3"]
    with pytest.raises(KeyError, match="multiview"):
        s.render({k: v for k, v in values.items() if k != "multiview"})


def _dvc_graph(dvc_yaml: str, tmp: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Stages and edges as DVC itself sees them (`dvc dag --dot` in a scratch project)."""
    (tmp / "dvc.yaml").write_text(dvc_yaml)
    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp, check=True)
    dot = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=tmp, check=True,
                         capture_output=True, text=True).stdout
    edges = set(re.findall(r'"([\w@]+)" -> "([\w@]+)"', dot))
    return set(yaml.safe_load(dvc_yaml)["stages"]), edges


def test_dvc_and_kubeflow_have_the_same_stages_and_edges(tmp_path):
    stages = dag.select()  # every stage of the DAG (a missing command is an error, not a smaller DAG)
    names = [s.name for s in stages]
    dvc_yaml = dvc_yaml_text(render_dvc(dag.resolve(stages, build_platform("tiny"))))
    dvc_stages, dvc_edges = _dvc_graph(dvc_yaml, tmp_path)
    spec = compile_pipeline(build_config("paper"), tmp_path / "p.yaml", stages)
    kfp_stages, kfp_edges = SpecGraph.load(spec).stage_edges(names)
    assert dvc_stages == kfp_stages == set(names)
    assert dvc_edges == kfp_edges == dag.edges(stages)


def test_committed_dvc_yaml_is_generated_from_the_dag(tmp_path):
    from components.config import load_params
    from pipelines.dvc_gen import missing_params_keys, params_keys
    cfg = load_params(REPO / "params.yaml")
    stages = dag.resolve(dag.select(), cfg.platform)
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml_text(render_dvc(stages)), "run `p4d pipeline dvc`"
    assert missing_params_keys(REPO / "params.yaml", params_keys(stages)) == []


def test_dvc_remotes_local_default_and_s3_without_credentials():
    from dvc.config import Config

    config = Config(dvc_dir=str(REPO / ".dvc"), validate=True).load_one("repo")
    assert config["core"]["remote"] == "local"
    assert config["remote"]["local"]["url"] == str(REPO / ".p4d/dvc-remote")  # relative in the file: any clone
    assert config["remote"]["s3"]["url"].startswith("s3://")
    for remote in config["remote"].values():
        assert not {"access_key_id", "secret_access_key", "session_token", "endpointurl"} & set(remote)
    assert "url = ../.p4d/dvc-remote" in (REPO / ".dvc/config").read_text()  # relative: works in any clone
    assert "/config.local" in (REPO / ".dvc/.gitignore").read_text().split()
    assert "/.p4d/" in (REPO / ".gitignore").read_text().split()
