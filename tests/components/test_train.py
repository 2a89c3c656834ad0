"""Training stages end to end (tiny profile, CPU, gloo): 2-process torchrun DeepSpeed runs of Ψ_3d and Ψ,
the schedule switches on the recorded per-step values, overfitting one batch, kill -9 then --resume,
SIGTERM (preemption) and bad input.

The runs go through the command line (``python -m components.train.cli train ...`` = ``p4d train ...``)
in subprocesses, as a training pod runs them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from components.config import ConfigError, build_config, load_params
from model.cameras import CameraDistribution, LabelLayout, sample_cameras

MOTION_DIM = 100  # tiny PD-FGC motion size; Ψ's motion_dim must match it
TINY = {"networks": {"psi3d": {"motion_dim": MOTION_DIM}, "psi": {"motion_dim": MOTION_DIM}}}


# --------------------------------------------------------------------------------------------- data builders
def fitted_labels(n: int, seed: int = 0, neck: float = 0.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 437)
    labels[:, LabelLayout.CAMERA] = sample_cameras(CameraDistribution(radius=(2.7, 2.7)), n, g)["c"]
    labels[:, LabelLayout.SHAPE] = torch.randn(n, 300, generator=g) * 0.3
    labels[:, LabelLayout.EXPRESSION] = torch.randn(n, 100, generator=g) * 0.3
    labels[:, LabelLayout.NECK_POSE] = torch.randn(n, 3, generator=g) * neck
    labels[:, LabelLayout.JAW_POSE] = torch.rand(n, 3, generator=g) * torch.tensor([0.3, 0.01, 0.01])
    labels[:, LabelLayout.EYE_POSE] = torch.randn(n, 6, generator=g) * 0.1
    return labels.numpy()


def make_assets(root: Path) -> Path:
    from components.assets.synth import synthesize_bundle

    return synthesize_bundle(root / "assets", "tiny")


def make_shards(root: Path, assets: Path, identities: int = 6, name: str = "shards") -> Path:
    """`p4d synthesize` output from tiny GenHead (2 views per identity, 2 identities per shard)."""
    from components.synthesize import run

    labels = root / "fit_flame"
    labels.mkdir(exist_ok=True)
    np.save(labels / "labels.npy", fitted_labels(16))
    cfg = build_config("tiny", {"synthesize": {"identities": identities, "shard_size": min(2, identities)}})
    run(cfg, [labels], str(root / name), assets, progress=False)
    return root / name


def make_clips(root: Path, clips: int = 2, frames: int = 3, size: int = 64) -> Path:
    """A fit_flame video output: crops/, labels.npy (with neck pose), motion.npy, manifest.parquet."""
    from components.fit_flame.manifest import OK, ManifestRow, write_manifest

    out = root / "clips"
    (out / "crops").mkdir(parents=True)
    n = clips * frames
    np.save(out / "labels.npy", fitted_labels(n, seed=1, neck=0.1))
    np.save(out / "motion.npy", np.random.default_rng(1).standard_normal((n, MOTION_DIM)).astype(np.float32))
    rng, rows = np.random.default_rng(2), []
    for k in range(n):
        clip, frame = divmod(k, frames)
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(out / "crops" / f"{k:04d}.png")
        rows.append(ManifestRow(id=f"clip{clip}/{frame}", source=f"clip{clip}.mp4", sha256="0", clip_id=f"clip{clip}",
                                frame_index=frame, status=OK, crop_path=f"crops/{k:04d}.png", label_row=k))
    write_manifest(rows, out / "manifest.parquet")
    return out


def write_params(path: Path, overrides: dict) -> Path:
    merged = {"profile": "tiny", **TINY}
    for key, value in overrides.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(merged))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(nproc: int, *args: str) -> list[str]:
    entry = ["-m", "components.train.cli", "train", *args, "--device", "cpu", "--no-progress"]
    if nproc == 1:
        return [sys.executable, *entry]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, f"--nproc-per-node={nproc}", f"--master-port={_free_port()}", *entry]


def run_env(root: Path, **extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def train(root: Path, nproc: int, *args: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command(nproc, *args), env=run_env(root, **env), capture_output=True, text=True,
                          timeout=timeout)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train")
    assets = make_assets(root)
    return {"root": root, "assets": assets, "shards": make_shards(root, assets), "clips": make_clips(root)}


@pytest.fixture(scope="module")
def psi3d_run(world) -> dict:
    """The reference run: 2 processes, ZeRO-1, 48 images, checkpoints every 16 (all three kept)."""
    root = world["root"]
    params = write_params(root / "psi3d.yaml", {"deepspeed": {"zero_stage": 1}, "checkpoints": {"keep_last": 3}})
    out = root / "psi3d"
    args = ("psi3d", "--data", str(world["shards"]), "--assets", str(world["assets"]), "--out", str(out),
            "--params", str(params))
    proc = train(root, 2, *args)
    assert_ok(proc)
    return {"out": out, "args": args, "proc": proc}


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_two_process_psi3d_run_writes_zero_checkpoints_and_the_model(psi3d_run):
    out = psi3d_run["out"]
    assert "finished: 24 iterations, 48 images" in psi3d_run["proc"].stdout
    ds = json.loads((out / "deepspeed_config.json").read_text())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (2, 1)
    assert ds["zero_optimization"] == {"stage": 1}
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt-000000000016", "ckpt-000000000032", "ckpt-000000000048"]
    last = out / "checkpoints" / names[-1]
    for engine in ("generator", "discriminator"):  # ZeRO-1: one optimizer shard per rank
        files = sorted(p.name for p in (last / engine).iterdir())
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(files)
    assert sorted(p.name for p in last.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    assert json.loads((last / "trainer.json").read_text())["images_seen"] == 48
    assert (out / "model" / "psi3d.safetensors").is_file() and (out / "model" / "discriminator.safetensors").is_file()
    # the run folder keeps the resolved config the run used (here: the --params file)
    params = Path(psi3d_run["args"][psi3d_run["args"].index("--params") + 1])
    assert load_params(out / "config.yaml") == load_params(params)


@pytest.mark.slow
def test_schedule_switches_happen_at_the_configured_image_counts(psi3d_run, world):
    """tiny: adversarial on / renderer unfrozen / depth + L_T off at 16 images; resolution 16 -> 32 over 16..32."""
    rows = records(psi3d_run["out"])
    assert [r["iteration"] for r in rows] == list(range(1, 25))
    for r in rows:
        n = int(r["images_seen"])  # images seen when the iteration started
        assert r["adversarial"] == (n >= 16) and r["renderer_frozen"] == (n < 16) and r["early_terms"] == (n < 16)
        assert r["identity"] == (n >= 8)  # TrainConfig.tiny identity_start_images
        assert r["neural_rendering_resolution"] == min(max(n, 16), 32)
        losses = r["losses"]
        assert ("D/loss" in losses) == (n >= 16)
        assert (losses["G/depth"] > 0) == (n < 16) and (losses["G/triplane"] > 0) == (n < 16)
        assert (losses["G/adversarial"] > 0) == (n >= 16) and (losses["G/identity"] > 0) == (n >= 8)
        due = (r["iteration"] - 1) % 4 == 0  # lazy regularisation: every 4th step in tiny
        # density TV: GenHead's density head starts at zero (flat field) and is frozen until the update at 16 images
        assert (losses["G/density"] > 0) == (due and n > 16)
        if n >= 16:
            assert (losses["D/r1"] > 0) == due
    # The renderer really held still: at 16 images Ψ_3d's decoder / SR are still GenHead's, later they moved.
    from safetensors.torch import load_file

    from components.train.models import load_state

    genhead = load_state(world["assets"] / "weights" / "genhead-ffhq512.pkl")
    early = load_file(psi3d_run["out"] / "checkpoints" / "ckpt-000000000016" / "ema.safetensors")
    late = load_file(psi3d_run["out"] / "checkpoints" / "ckpt-000000000048" / "ema.safetensors")
    renderer = [k for k in early if k.startswith(("decoder.", "superresolution.")) and k in genhead]
    assert renderer and all(torch.equal(early[k], genhead[k]) for k in renderer)
    assert any(not torch.equal(late[k], genhead[k]) for k in renderer)


@pytest.mark.slow
def test_two_process_psi_run_starts_from_psi3d_and_uses_the_frozen_teacher(psi3d_run, world):
    root = world["root"]
    params = write_params(root / "psi.yaml", {"deepspeed": {"zero_stage": 2}})
    out = root / "psi"
    proc = train(root, 2, "psi", "--data", str(world["clips"]), "--psi3d", str(psi3d_run["out"]),
                 "--assets", str(world["assets"]), "--out", str(out), "--params", str(params))
    assert_ok(proc)
    assert "finished: 16 iterations, 32 images" in proc.stdout
    last = out / "checkpoints" / "ckpt-000000000032"
    assert (last / "COMPLETE").is_file()
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in {p.name for p in (last / "generator").iterdir()}
    rows = records(out)
    assert all(r["neural_rendering_resolution"] == 32 and r["adversarial"] for r in rows)
    for r in rows:  # the cross-view term against Ψ_3d runs every 2nd step (tiny), with gain 2
        assert (r["losses"]["G/cross_view"] > 0) == ((r["iteration"] - 1) % 2 == 0)
        assert r["losses"]["D/loss"] > 0
    assert (out / "model" / "psi.safetensors").is_file()
    assert load_params(out / "config.yaml") == load_params(params)


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_same_loss_trajectory(psi3d_run, world):
    root = world["root"]
    out = root / "killed"
    args = [*psi3d_run["args"]]
    args[args.index("--out") + 1] = str(out)
    proc = subprocess.Popen(command(2, *args), env=run_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "checkpoints" / "ckpt-000000000016"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the run never wrote its first checkpoint"
    time.sleep(0.7)  # a few more iterations, maybe into the next checkpoint write
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun group we started: launcher and both ranks
    proc.wait()
    for ckpt in (out / "checkpoints").glob("ckpt-*"):  # whatever is visible is complete
        assert (ckpt / "COMPLETE").is_file() and (ckpt / "ema.safetensors").is_file()

    resumed = train(root, 2, *args, "--resume")
    assert_ok(resumed)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    reference = {r["iteration"]: r["losses"] for r in records(psi3d_run["out"])}
    again = {r["iteration"]: r["losses"] for r in records(out)}
    assert sorted(again) == sorted(reference) == list(range(1, 25))
    worst = max(abs(again[i][k] - v) / max(abs(v), 1e-6) for i in reference for k, v in reference[i].items())
    assert worst < 1e-4, f"resumed trajectory differs by {worst:.2e} (relative)"


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_143(world):
    root = world["root"]
    params = write_params(root / "long.yaml", {"psi3d": {"total_images": 400}})
    out = root / "preempted"
    proc = subprocess.Popen(command(1, "psi3d", "--data", str(world["shards"]), "--assets", str(world["assets"]),
                                    "--out", str(out), "--params", str(params)),
                            env=run_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr[-3000:]
    assert "stopped by SIGTERM after checkpointing" in stdout
    done = len(records(out))
    assert 3 <= done < 200
    ckpt = out / "checkpoints" / f"ckpt-{2 * done:012d}"
    assert (ckpt / "COMPLETE").is_file()
    assert json.loads((ckpt / "trainer.json").read_text())["iteration"] == done
    assert not (out / "model").exists()  # a preempted run exports nothing final


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_down_threefold(tmp_path, world):
    one = make_shards(tmp_path, world["assets"], identities=1, name="one")
    params = write_params(tmp_path / "overfit.yaml", {
        "psi3d": {"batch": 1, "lr": 2e-3, "total_images": 40, "adversarial_start_images": 10**9,
                  "renderer_frozen_until_images": 0, "depth_and_triplane_loss_until_images": 10**9,
                  "resolution_ramp_start_images": 10**9},
        "checkpoints": {"every_images": 10**6},
    })
    out = tmp_path / "overfit"
    assert_ok(train(tmp_path, 1, "psi3d", "--data", str(one), "--assets", str(world["assets"]), "--out", str(out),
                    "--params", str(params)))
    total = [r["losses"]["G/total"] for r in records(out)]
    assert len(total) == 40
    drop = np.mean(total[:3]) / np.mean(total[-3:])
    assert drop >= 3.0, f"loss fell only {drop:.2f}x on one repeated batch"


def test_bad_inputs_fail_before_training_with_the_reason(tmp_path, world):
    from components.train import psi, psi3d
    from components.train.data import TrainingDataError
    from components.train.models import WeightsError

    cfg = build_config("tiny", TINY)
    with pytest.raises(TrainingDataError, match="no training data"):
        psi3d.run(cfg, None, tmp_path / "o", world["assets"])
    with pytest.raises(ConfigError, match=r"networks.psi.motion_dim \(548\) must equal"):
        build_config("tiny", {"networks": {"psi": {"motion_dim": 548}}})
    with pytest.raises(WeightsError, match="no Ψ_3d weights"):
        psi.run(cfg, world["clips"], tmp_path, tmp_path / "o", world["assets"])
    with pytest.raises(TrainingDataError, match="no manifest.parquet"):
        psi.run(cfg, tmp_path, tmp_path, tmp_path / "o", world["assets"])
    lonely = make_clips(tmp_path / "lonely", clips=2, frames=1)
    with pytest.raises(TrainingDataError, match="no clip has two usable frames"):
        psi.run(cfg, lonely, tmp_path, tmp_path / "o", world["assets"])
    with pytest.raises(WeightsError, match="no Ψ_3d weights"):
        psi.run(cfg, world["clips"], tmp_path / "nothing", tmp_path / "o", world["assets"])
    (world["clips"] / "motion.npy").rename(tmp_path / "motion.npy")
    try:
        with pytest.raises(TrainingDataError, match="missing motion array"):
            psi.run(cfg, world["clips"], tmp_path, tmp_path / "o", world["assets"])
    finally:
        (tmp_path / "motion.npy").rename(world["clips"] / "motion.npy")


@pytest.mark.slow
def test_a_fresh_start_refuses_a_folder_that_holds_checkpoints(psi3d_run, world):
    proc = train(world["root"], 1, *psi3d_run["args"])
    assert proc.returncode != 0
    assert "already holds checkpoints" in proc.stderr and "--resume" in proc.stderr


@pytest.mark.slow
def test_a_resume_with_a_changed_setting_names_it_and_overwrites_nothing(psi3d_run, world):
    out, args = psi3d_run["out"], [*psi3d_run["args"]]
    saved = load_params(out / "config.yaml")
    changed = write_params(world["root"] / "psi3d-lr.yaml", {"deepspeed": {"zero_stage": 1},
                                                             "checkpoints": {"keep_last": 3}, "psi3d": {"lr": 7.7e-4}})
    args[args.index("--params") + 1] = str(changed)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = train(world["root"], 1, *args, "--resume")
    assert proc.returncode != 0
    assert (f"resume refused: these settings differ from the run in {out / 'checkpoints' / 'ckpt-000000000048'}: "
            f"psi3d.lr ({saved.psi3d.lr} -> 0.00077); resume with the same params") in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # config.yaml included


@pytest.mark.slow
def test_online_genhead_data_mixed_with_shards_under_gradient_accumulation(world):
    root = world["root"]
    params = write_params(root / "online.yaml", {"psi3d": {"total_images": 8},
                                                 "deepspeed": {"gradient_accumulation_steps": 2}})
    out = root / "online"
    proc = train(root, 1, "psi3d", "--data", str(world["shards"]), "--online", "--labels", str(root / "fit_flame"),
                 "--assets", str(world["assets"]), "--out", str(out), "--params", str(params))
    assert_ok(proc)
    ds = json.loads((out / "deepspeed_config.json").read_text())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (2, 1)
    assert ds["gradient_accumulation_steps"] == 2
    assert [r["images_seen_after"] for r in records(out)] == [2, 4, 6, 8]
    state = torch.load(out / "checkpoints" / "ckpt-000000000008" / "rank-00000.pt", weights_only=True)["data"]
    # 4 iterations x 2 micro-batches, alternating stored / online: 4 of each
    assert state["position"] == 8 and state["online"]["drawn"] == 4 and state["stored"]["taken"] in (1, 2, 3, 4)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__ if getattr(a, f) is not None)


def test_data_streams_resume_at_their_saved_position(world):
    from components.train.data import ClipPairStream, ShardStream

    shards = ShardStream(str(world["shards"]), 1, rank=1, world_size=2, seed=5)
    for _ in range(4):  # past the end of this rank's first epoch
        next(shards)
    saved = shards.state_dict()
    resumed = ShardStream(str(world["shards"]), 1, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(saved)
    assert _same(next(shards), next(resumed)) and _same(next(shards), next(resumed))

    clips = ClipPairStream(world["clips"], 2, rank=0, world_size=2, seed=5, image_resolution=32, motion_dim=MOTION_DIM)
    first = next(clips)
    assert first.source_image.shape == (2, 3, 32, 32) and first.driving_motion.shape == (2, MOTION_DIM)
    saved = clips.state_dict()
    again = ClipPairStream(world["clips"], 2, rank=0, world_size=2, seed=5, image_resolution=32, motion_dim=MOTION_DIM)
    again.load_state_dict(saved)
    assert _same(next(clips), next(again))
    other_rank = ClipPairStream(world["clips"], 2, rank=1, world_size=2, seed=5, image_resolution=32,
                                motion_dim=MOTION_DIM)
    assert not _same(next(other_rank), first)
