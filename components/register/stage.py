"""Stage `register`: a trained Ψ and its evaluation become a new version of the registered model.

Order matters, so that a failure never leaves a half-registered version:

1. read and check the evaluation, the dvc.lock lineage and the tracking server (retries with backoff)
   before anything is created;
2. write the model package (``OUT/package``) and log it as a pyfunc, the metrics and the evaluation's
   files in an MLflow run named ``register`` (a failure marks that run FAILED; no version exists yet);
3. create the version with every lineage and gate tag and the model card in one call, then write the card
   again with the version number in it;
4. alias ``challenger`` on a passing version (a failing one is registered, never aliased); with
   ``register.auto_approve`` a passing version becomes ``champion`` through the same approval as
   ``p4d review approve``;
5. ``OUT/config.yaml`` (the run's resolved config), then ``OUT/registration.json`` (``{"name", "version",
   "model_uri", "gate", "approved"}``), atomically, last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from components.io.atomic import atomic_write_text
from components.io.run_config import write_run_config
from components.io.tracking import TrackingError, TrackingRun, git_commit, lineage_tags, tracking_uri
from components.register.card import CardContext, model_card
from components.register.evaluation import Evaluation, read_evaluation
from components.register.gate import GateResult, apply_gate
from components.register.lineage import DvcLineage, LineageError, dvc_lineage, psi3d_folder, training_record
from components.register.registry import PENDING, Registry, RegistryError, connect, version_of

REGISTRATION_FILE = "registration.json"
PACKAGE_DIR = "package"
EVALUATION_ARTIFACTS = "evaluation"
MODEL_ARTIFACT = "model"
EXAMPLE_SIZE = 256  # px of the input-example portrait stored with the model (keeps MLmodel's example small)


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    model_uri: str
    gate: GateResult
    approved: bool
    run_id: str
    notes: tuple[str, ...]

    def as_json(self) -> dict:
        return {"name": self.name, "version": self.version, "model_uri": self.model_uri,
                "gate": self.gate.status, "approved": self.approved}

    def lines(self) -> list[str]:
        out = [f"{self.name} version {self.version} ({self.model_uri}), MLflow run {self.run_id}",
               f"gate {self.gate.status}" + (f": {self.gate.failures_text()}" if not self.gate.passed else ""),
               "approved: champion" if self.approved else "not approved: review with `p4d review show "
               f"{self.version}` then `p4d review approve {self.version} --note ...`"]
        return out + list(self.notes)


def config_sha256(cfg) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def run_link(uri: str, client, run_id: str | None) -> str | None:
    """The MLflow UI page of a run on an http(s) tracking server (None for local stores / unknown runs)."""
    if not run_id or not uri.startswith(("http://", "https://")):
        return None
    try:
        experiment = client.get_run(run_id).info.experiment_id
    except Exception:  # a run on another server, or deleted: keep the id, no link
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def artifact_link(uri: str, run_id: str, path: str) -> str:
    """A URL that serves one run artifact (the server's /get-artifact), else the runs:/ URI."""
    if uri.startswith(("http://", "https://")):
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        return f"{uri.rstrip('/')}/get-artifact?{query}"
    return f"runs:/{run_id}/{path}"


def example_portrait():
    """The input-example portrait stored with the model: scikit-image's public-domain astronaut photo (ships
    in the wheel, nothing downloads), downscaled."""
    import numpy as np
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((EXAMPLE_SIZE, EXAMPLE_SIZE), Image.BILINEAR))


def _dvc(dvc_lock: str | Path | None, psi_dir: Path, evaluation_dir: str | Path, notes: list[str]) -> DvcLineage:
    """Lineage from ``--dvc-lock`` (must describe Ψ and the evaluation), else from ./dvc.lock when it does
    (DVC runs a stage in the folder of its dvc.yaml), else none."""
    if dvc_lock is not None:
        if not Path(dvc_lock).is_file():
            raise LineageError(f"--dvc-lock {dvc_lock}: no such file")
        return dvc_lineage(dvc_lock, psi_dir, evaluation_dir)
    if not Path("dvc.lock").is_file():
        return DvcLineage(None)
    try:
        return dvc_lineage("dvc.lock", psi_dir, evaluation_dir)
    except LineageError as err:
        notes.append(f"no DVC lineage: {err}")
        return DvcLineage(None)


def _write_package(cfg, psi_dir: Path, assets: Path | None, out: Path, device: str) -> tuple[Path, bool]:
    from components.animate import Animator

    package = out / PACKAGE_DIR
    if package.exists():  # our own output of an earlier run (DVC removes it before a run anyway)
        shutil.rmtree(package)
    animator = Animator.load(psi_dir, assets, device=device, config=cfg)
    try:
        return animator.save_package(package), bool(animator.synthetic_assets)
    finally:
        animator.close()


def _version_tags(cfg, ev: Evaluation, gate: GateResult, dvc: DvcLineage, runs: dict[str, str | None],
                  schedule: dict[str, tuple[int | None, int]], synthetic: bool, pipeline_run_id: str) -> dict[str, str]:
    from components.register.pyfunc import requirement

    tags = {
        cfg.register.owner_tag: requirement(), "gate": gate.status, "gate_failures": gate.failures_text(),
        "approval": PENDING, "profile": cfg.profile, "config_sha256": config_sha256(cfg), "git_commit": git_commit(),
        "synthetic_assets": str(synthetic).lower(), "data_version": ev.data_version, "pipeline_run_id": pipeline_run_id,
        **{f"run.{role}": run_id for role, run_id in runs.items() if run_id},
        **{f"schedule.{stage}.images_seen": str(seen) for stage, (seen, _) in schedule.items() if seen is not None},
        **dvc.tags(),
    }
    return tags


def run(cfg, psi_dir: str | Path, evaluation_dir: str | Path, out_dir: str | Path, *, assets: str | Path | None = None,
        pipeline_run_id: str | None = None, dvc_lock: str | Path | None = None, device: str = "cpu") -> Registration:
    """Register Ψ in ``psi_dir`` with the evaluation in ``evaluation_dir``; see the module docstring."""
    import os

    import mlflow

    from components.register.pyfunc import log_psi_model

    psi_dir, out = Path(psi_dir), Path(out_dir)
    policy, name = cfg.register, cfg.tracking.registered_model
    pipeline_run_id = pipeline_run_id or os.environ.get("P4D_PIPELINE_RUN_ID") or "local"
    ev = read_evaluation(evaluation_dir)
    if not psi_dir.exists():
        from components.animate import ModelLoadError

        raise ModelLoadError(f"--psi {psi_dir}: no such folder or file")
    notes: list[str] = []
    dvc = _dvc(dvc_lock, psi_dir, evaluation_dir, notes)
    uri = tracking_uri(cfg.tracking)
    client = connect(uri, policy)
    registry = Registry(client, name, policy)

    champion = registry.by_alias(policy.champion_alias)
    champion_metrics = None
    if champion is not None and not registry.is_ours(champion):
        notes.append(f"champion version {version_of(champion)} was not registered by p4d (no "
                     f"{policy.owner_tag!r} tag): no regression check against it")
        champion = None
    elif champion is not None:
        champion_metrics = registry.metrics(champion)
    foreign = [version_of(mv) for mv in registry.versions() if not registry.is_ours(mv)]
    if foreign:
        notes.append(f"model {name!r} also holds versions not registered by p4d ({', '.join(foreign)}): p4d never "
                     "aliases them")
    gate = apply_gate(ev.gate, ev.metrics, champion_metrics,
                      f"champion v{version_of(champion)}" if champion is not None else "champion")

    package, synthetic = _write_package(cfg, psi_dir, Path(assets) if assets else None, out, device)
    synthetic = synthetic or ev.synthetic_assets
    psi_record = training_record(psi_dir if psi_dir.is_dir() else None)
    psi_run = ev.psi_run_id or psi_record.run_id
    try:
        psi_params = dict(client.get_run(psi_run).data.params) if psi_run else {}
    except Exception:  # the Ψ run lives on another server: lineage keeps its id only
        psi_params = {}
    psi3d_record = training_record(psi3d_folder(psi_params))
    schedule = {"train_psi3d": (psi3d_record.images_seen, cfg.psi3d.total_images),
                "train_psi": (psi_record.images_seen, cfg.psi.total_images)}

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    runs: dict[str, str | None] = {"psi3d": psi3d_record.run_id, "psi": psi_run, "evaluate": ev.evaluate_run_id}
    # the run is created like every stage's (experiment, artifact location, config as params, lineage tags)
    tracked = TrackingRun.start(cfg.tracking, "register", cfg.model_dump(mode="json"),
                                lineage_tags("register", ev.data_version) | {"pipeline_run_id": pipeline_run_id})
    run_id = runs["register"] = tracked.run_id
    try:
        with mlflow.start_run(run_id=run_id):
            info = log_psi_model(package, example_portrait(), name=MODEL_ARTIFACT)
            mlflow.log_metrics(ev.metrics, model_id=info.model_id)
            mlflow.log_artifact(str(ev.folder / "metrics.json"), EVALUATION_ARTIFACTS)
            mlflow.log_artifact(str(ev.folder / "gate.json"), EVALUATION_ARTIFACTS)
            for rel, path in ev.samples().items():
                mlflow.log_artifact(str(path), f"{EVALUATION_ARTIFACTS}/{Path(rel).parent}")
            mlflow.set_tags({"gate": gate.status, **{f"run.{k}": v for k, v in runs.items() if v}})
    except (OSError, mlflow.exceptions.MlflowException) as err:
        raise TrackingError(f"MLflow at {uri}: logging the model failed ({str(err).splitlines()[0]}); the register "
                            "run is marked FAILED and no version was created") from None

    links = {role: run_link(uri, client, run_id) for role, run_id in runs.items()}
    samples = {rel: artifact_link(uri, run_id, f"{EVALUATION_ARTIFACTS}/{rel}") for rel in ev.samples()}
    tags = _version_tags(cfg, ev, gate, dvc, runs, schedule, synthetic, pipeline_run_id)

    def card(version: str | None) -> str:
        return model_card(ev, CardContext(
            name, version, cfg.profile, tags["config_sha256"], tags["git_commit"], gate,
            version_of(champion) if champion is not None else None, champion_metrics, dvc, schedule,
            {role: (runs.get(role), links.get(role)) for role in ("psi3d", "psi", "evaluate", "register")},
            samples, pipeline_run_id, (policy.champion_alias, policy.challenger_alias), tuple(notes)))

    _ensure_registered_model(client, name)
    mv = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=tags, description=card(None),
                                     model_id=info.model_id, run_link=links.get("register"))
    version = version_of(mv)
    client.update_model_version(name, version, description=card(version))
    approved = False
    if gate.passed:
        registry.set_challenger(version)
        if policy.auto_approve:
            try:
                registry.approve(version, "auto-approved: the gate passed and register.auto_approve is on",
                                 by="p4d register (auto_approve)")
                approved = True
            except RegistryError as err:
                notes.append(f"auto-approve refused: {err}")
    result = Registration(name, version, f"models:/{name}/{version}", gate, approved, run_id, tuple(notes))
    write_run_config(out, cfg)
    atomic_write_text(out / REGISTRATION_FILE, json.dumps(result.as_json(), indent=2) + "\n")
    return result


def _ensure_registered_model(client, name: str) -> None:
    """Create the registered model on first use (another process may create it at the same moment)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="Portrait4D-v2 Ψ registered by the p4d pipeline; review with `p4d review list`")
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
