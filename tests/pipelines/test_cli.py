"""The `p4d` command as a user meets it: one default per option across commands, in-pod commands unlisted,
a missing command module is an error (never a command or DAG stage that silently disappears)."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from components.device import pick_device
from pipelines import cli, dag
from pipelines.pipeline_cli import IN_POD_COMMANDS


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every command and sub-command."""
    yield path, parser
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def _commands_with(flag: str) -> list[tuple[str, ...]]:
    return [path for path, p in _parsers(cli.build_parser()) if _option(p, flag) is not None]


def _parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    return dict(_parsers(cli.build_parser()))[path]


# commands that must take the option (a command that loses one fails here, not silently)
MUST_HAVE = {
    "--device": {("fit-flame",), ("synthesize",), ("train", "psi3d"), ("train", "psi"), ("animate",), ("evaluate",),
                 ("register",)},
    "--profile": {("config", "show"), ("fit-flame",), ("synthesize",), ("train", "psi3d"), ("evaluate",),
                  ("register",), ("pipeline", "compile"), ("pipeline", "submit"), ("pipeline", "schedule")},
}


@pytest.mark.parametrize("flag", sorted(MUST_HAVE))
def test_every_command_has_the_same_default(flag):
    paths = _commands_with(flag)
    assert MUST_HAVE[flag] <= set(paths)
    defaults = {path: _option(_parser(path), flag).default for path in paths}
    if flag == "--device":
        assert set(defaults.values()) == {"auto"}, defaults
        for path in paths:  # and each command turns it into the device this machine has
            assert _option(_parser(path), flag).type is pick_device, path
    else:
        # None = "the params file's profile, else tiny" (resolve_config); two commands spell tiny out
        assert set(defaults.values()) <= {None, "tiny"}, defaults


def test_auto_device_is_cuda_exactly_when_a_gpu_is_visible():
    import torch

    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu" and pick_device("cuda:1") == "cuda:1"
    args = cli.build_parser().parse_args(["evaluate", "--psi", "m", "--data", "d", "--assets", "a", "--out", "o"])
    assert args.device == pick_device("auto")


def test_pipeline_compile_defaults_to_the_tiny_profile(tmp_path):
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["pipeline", "compile", "--out", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]["params_yaml"]["defaultValue"]
    assert yaml.safe_load(params) == {"profile": "tiny"}


def test_in_pod_commands_are_not_listed_but_still_run(capsys):
    for argv, shown in ((["--help"], {"pipeline", "fit-flame", "demo"}), (["pipeline", "--help"], {"compile", "dvc"})):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0
        text = capsys.readouterr().out
        listed = set(re.findall(r"^    (\S+)", text, re.MULTILINE))  # the command rows under COMMAND
        assert shown <= listed and not listed & set(IN_POD_COMMANDS) and "SUPPRESS" not in text, listed
    for name in IN_POD_COMMANDS:  # each still parses and documents itself
        with pytest.raises(SystemExit) as done:
            cli.main(["pipeline", name, "--help"])
        assert done.value.code == 0 and "(in-pod)" in capsys.readouterr().out
    assert cli.main(["pipeline", "nothing-to-do", "--reason", "inputs unchanged"]) == 0
    assert capsys.readouterr().out == "nothing to do: inputs unchanged\n"


def test_a_missing_command_module_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "components.no_such_stage.cli"])
    assert cli.main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p4d: error: command module components.no_such_stage.cli is missing") and err.count("\n") == 1


def test_a_dag_stage_without_its_command_fails_compile(monkeypatch, tmp_path, capsys):
    """Without the train command module, `p4d pipeline compile` names both training stages and writes nothing."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", [m for m in cli.COMMAND_MODULES if m != "components.train.cli"])
    dag.registered_commands.cache_clear()
    out = tmp_path / "pipeline.yaml"
    try:
        assert cli.main(["pipeline", "compile", "--out", str(out)]) == 2
    finally:
        dag.registered_commands.cache_clear()
    err = capsys.readouterr().err
    assert "train_psi3d (`p4d train psi3d`), train_psi (`p4d train psi`)" in err and err.count("\n") == 1
    assert not out.exists()
