"""Write a Triton model repository: a new numbered version of both models next to the existing ones.

Layout (``REPO`` is a folder or an ``s3://`` prefix; Triton reads either)::

    REPO/portrait4d/config.pbtxt              stateless model, version_policy latest{num_versions: 2}
    REPO/portrait4d/<N>/model.py              one import: components.deploy.backend.TritonPythonModel
    REPO/portrait4d/<N>/package/...           the Animator package (weights + config + assets)
    REPO/portrait4d_session/...               the same for the video-session model

Both models always get the same version number N (one more than the highest either has). A local
version folder appears whole or not at all (written under a temporary name, then renamed); on S3 the
version's files are uploaded before ``config.pbtxt``, and Triton only reads a version when it is asked
to load the model, which the rollout does after the upload.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.deploy.backend import PACKAGE_DIR
from components.config.deploy import DeployConfig
from components.deploy.model_config import config_text, model_config
from components.errors import P4DError
from components.io.atomic import atomic_dir, atomic_write_text
from components.io.storage import Store, open_store

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.py"
MODEL_PY = '''"""Triton Python-backend entry of a p4d model version: the adapter lives in the installed project.

The backend stub imports this file as the module ``model`` with its folder on ``sys.path``, which would hide
the project's own ``model`` package (the networks): free that name before importing the adapter.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("model"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["model"]

from components.deploy.backend import TritonPythonModel  # noqa: E402,F401
'''


class ExportError(P4DError):
    """The repository cannot be written (or read) where asked; the message names the location."""


@dataclass(frozen=True)
class ExportResult:
    repo: str
    version: int
    models: tuple[str, ...]
    image_size: int
    motion_dim: int

    def lines(self) -> list[str]:
        return [f"version {self.version} of {', '.join(self.models)} written to {self.repo}",
                f"image size {self.image_size}, motion dim {self.motion_dim}"]


def model_names(cfg: DeployConfig) -> tuple[str, str]:
    return cfg.model_name, cfg.session_model_name


def versions(store: Store, model: str) -> list[int]:
    """The numbered version folders of ``model`` in the repository, ascending."""
    found = {key.split("/")[1] for key in store.list(f"{model}/") if key.count("/") >= 2}
    return sorted(int(v) for v in found if v.isdigit())


def next_version(store: Store, cfg: DeployConfig) -> int:
    return max((v for m in model_names(cfg) for v in versions(store, m)), default=0) + 1


def _write_version(folder: Path, package: Path) -> None:
    """A version folder: model.py + a copy of the package."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_text(MODEL_PY)
    shutil.copytree(package, folder / PACKAGE_DIR)


def _upload_tree(store: Store, prefix: str, folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)


def export_package(package: Path, repo: str | Path, cfg: DeployConfig, image_size: int, motion_dim: int,
                   version: int | None = None) -> ExportResult:
    """Write ``package`` (an Animator package folder) as version N of both models into ``repo``."""
    store = open_store(str(repo))
    version = version or next_version(store, cfg)
    for model in model_names(cfg):
        if version in versions(store, model):
            raise ExportError(f"{store.url(f'{model}/{version}')}: version {version} exists already")
    configs = {m: config_text(model_config(cfg, image_size, motion_dim, session=(m == cfg.session_model_name)))
               for m in model_names(cfg)}
    local = not str(repo).startswith("s3://")
    for model in model_names(cfg):
        if local:
            with atomic_dir(Path(repo) / model / str(version)) as tmp:
                _write_version(tmp, package)
            atomic_write_text(Path(repo) / model / CONFIG_FILE, configs[model])
        else:
            with tempfile.TemporaryDirectory(prefix="p4d-export-") as tmp:
                _write_version(Path(tmp) / "v", package)
                _upload_tree(store, f"{model}/{version}", Path(tmp) / "v")
            store.put_bytes(f"{model}/{CONFIG_FILE}", configs[model].encode())
    return ExportResult(store.uri, version, model_names(cfg), image_size, motion_dim)


def export_model(model: str | Path, repo: str | Path, cfg: DeployConfig, assets: Path | None = None,
                 config=None, version: int | None = None) -> ExportResult:
    """Load ``model`` (anything ``Animator.load`` accepts: package, run dir, weights, ``models:/`` URI; a run
    dir or weights file also needs ``assets`` and the run's ``config``) and export its package as a new
    version. Returns what was written."""
    from components.animate import Animator

    animator = Animator.load(model, assets, config=config)
    try:
        with tempfile.TemporaryDirectory(prefix="p4d-package-") as tmp:
            package = animator.save_package(Path(tmp) / "package")
            return export_package(package, repo, cfg, animator.image_size, animator.motion_dim, version)
    finally:
        animator.close()


def remove_version(repo: str | Path, cfg: DeployConfig, version: int) -> None:
    """Delete version N of both models (a rollback); the other versions and config.pbtxt stay."""
    store = open_store(str(repo))
    for model in model_names(cfg):
        if not str(repo).startswith("s3://"):
            shutil.rmtree(Path(repo) / model / str(version), ignore_errors=True)
            continue
        for key in store.list(f"{model}/{version}/"):
            store.delete(key)
