"""docker/: a small Dockerfile linter, and every command the images RUN is one the test suite / CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.config.platform import IMAGE_VERSION, PlatformConfig

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL)", re.I)
# RUN steps that set up the OS (cannot run here, no Docker engine) vs project commands (must be exercised)
SYSTEM_SETUP = (re.compile(r"^apt-get (update|install -y --no-install-recommends [a-z0-9.+\- ]+)$"),
                re.compile(r"^rm -rf /var/lib/apt/lists/\*$"),
                re.compile(r"^useradd --uid 1000 --create-home --shell /usr/sbin/nologin p4d$"))
EXERCISED = {"bash scripts/env.sh", "p4d --help"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def test_there_is_a_gpu_a_cpu_and_a_triton_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.triton"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_lint(path):
    ins = instructions(path)
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 1
    image = froms[0].split()[0]
    assert re.match(r"^[\w./-]+:[\w.-]+$", image) and not image.endswith(":latest"), f"unpinned base {image}"
    assert not [a for _, a in ins if ":latest" in a], "no `latest` tag in any instruction"
    assert not [a for i, a in ins if i == "ADD"], "use COPY (ADD fetches URLs / unpacks archives implicitly)"
    for kind in ("ENV", "ARG"):
        for args in (a for i, a in ins if i == kind):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                assert not SECRET_NAME.search(name), f"{kind} {name}: secrets never go into an image"
    users = [(n, a) for n, (i, a) in enumerate(ins) if i == "USER"]
    assert users and users[-1][1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    entry = [(n, a) for n, (i, a) in enumerate(ins) if i == "ENTRYPOINT"]
    assert entry and entry[-1][1] == '["p4d"]' and entry[-1][0] > users[-1][0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_project_command_it_runs_is_exercised(path):
    for args in (a for i, a in instructions(path) if i == "RUN"):
        for command in (c.strip() for c in args.split("&&")):
            if any(p.match(command) for p in SYSTEM_SETUP):
                continue
            assert command in EXERCISED, f"{path.name} runs {command!r}, which no test or CI step runs"


def test_the_image_install_is_the_ci_install():
    # CI (.ci/run, the README's second command) runs the same script the images RUN.
    assert "bash scripts/env.sh" in (REPO / ".ci/run").read_text()
    env_sh = (REPO / "scripts/env.sh").read_text()
    assert "pip install --quiet -e '.[test]'" in env_sh and "pip check" in env_sh  # pins from pyproject.toml


def test_p4d_help_runs_and_lists_the_pipeline_commands():
    # the p4d of the interpreter running the tests (PATH may hold another install's shim)
    exe = str(Path(sys.executable).with_name("p4d"))
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "pipeline" in result.stdout and "demo" in result.stdout


def test_images_in_config_are_the_ones_the_dockerfiles_build():
    images = PlatformConfig().images
    for path, ref in ((REPO / "docker/Dockerfile.gpu", images.gpu), (REPO / "docker/Dockerfile.cpu", images.cpu)):
        assert f"-t {ref} ." in path.read_text()
        assert ref.endswith(f":{IMAGE_VERSION}")
    import tomllib

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == IMAGE_VERSION


def test_dockerignore_keeps_credentials_data_and_git_out():
    ignored = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")}
    assert {".git", ".venv", ".dvc/config.local", "*.env", "**/*.pem", "**/*.key", "data", "assets", "runs"} <= ignored
