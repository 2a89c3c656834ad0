"""The training loop's arithmetic and hooks, pinned so that a wrong formula fails a test:

- the EMA update: exact values after known steps, and the EMA a real (tiny, 1-process) run writes
  against the trained weights of the same checkpoints;
- Ψ's per-group learning rates (motion layers 2.5e-4, the rest 1e-4 in ``paper``) as the real DeepSpeed
  optimizer holds them after ``build_engines``;
- the sample grid (tiles where the samples are) and the loss curve (ink where the data are);
- the per-iteration record's truncation on resume; the DeepSpeed version the compat module was read for.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from components.config import build_config
from components.train.callbacks import MetricsRecord, RunStart
from components.train.checkpoint import TrainerState
from components.train.loop import update_ema
from tests.components.test_train import assert_ok, make_assets, make_shards, records, train, write_params

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------- EMA
class OneWeight(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))
        self.register_buffer("count", torch.tensor([value * 10]))


def test_ema_after_two_updates_is_the_lerp_towards_the_weights():
    """ema <- w + beta (ema - w) (official: ``p_ema.copy_(p.lerp(p_ema, ema_beta))``); buffers are copied."""
    ema, model = OneWeight(0.0), OneWeight(1.0)
    update_ema(ema, model, beta=0.75)
    assert ema.w.item() == pytest.approx(0.25)  # 1 + 0.75 (0 - 1)
    model.w.data.fill_(3.0)
    model.count.fill_(7.0)
    update_ema(ema, model, beta=0.75)
    assert ema.w.item() == pytest.approx(0.9375)  # 3 + 0.75 (0.25 - 3)
    assert ema.count.item() == 7.0


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> dict:
    """1 process, 3 iterations of 2 images, a checkpoint after each, a sample grid after each, no EMA ramp-up:
    beta = 0.5 ** (batch / half-life) = 0.5 ** (2 / (64 x 2 / 32)) = 0.5 ** 0.5 on every step."""
    root = tmp_path_factory.mktemp("ema")
    assets = make_assets(root)
    shards = make_shards(root, assets, identities=2)
    params = write_params(root / "ema.yaml", {
        "psi3d": {"total_images": 6},
        "checkpoints": {"every_images": 2, "keep_last": 3, "ema_half_life_images": 64},
        "train": {"ema_rampup": None, "sample_every_images": 2},
    })
    out = root / "run"
    assert_ok(train(root, 1, "psi3d", "--data", str(shards), "--assets", str(assets), "--out", str(out),
                    "--params", str(params)))
    return {"out": out, "shards": shards, "cfg": build_config("tiny", yaml_dict(params))}


def yaml_dict(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text())
    data.pop("profile")
    return data


def _checkpoint(out: Path, images: int) -> Path:
    return out / "checkpoints" / f"ckpt-{images:012d}"


@pytest.mark.slow
def test_the_ema_a_run_writes_trails_the_trained_weights_by_the_formula(ema_run):
    from safetensors.torch import load_file

    from components.assets.networks import build_network

    out, beta = ema_run["out"], 0.5 ** 0.5
    assert [r["images_seen_after"] for r in records(out)] == [2, 4, 6]
    previous = load_file(_checkpoint(out, 4) / "ema.safetensors")  # EMA after iteration 2
    last = load_file(_checkpoint(out, 6) / "ema.safetensors")  # EMA after iteration 3
    exported = load_file(out / "model" / "psi3d.safetensors")
    assert all(torch.equal(exported[k], last[k]) for k in last)  # the exported model is the last EMA
    states = torch.load(_checkpoint(out, 6) / "generator" / "mp_rank_00_model_states.pt", weights_only=False)
    trained = {k.removeprefix("psi."): v for k, v in states["module"].items()}  # weights after iteration 3
    names = [n for n, _ in build_network("psi3d", ema_run["cfg"], "cpu").named_parameters()]

    moved = 0
    for name in names:
        w, e_prev, e = trained[name].float(), previous[name].float(), last[name].float()
        expected = w + beta * (e_prev - w)
        assert torch.allclose(e, expected, rtol=1e-5, atol=1e-7), f"{name}: EMA is not w + beta (ema_prev - w)"
        gap = (e_prev - w).abs()
        if gap.max() > 1e-6:  # this parameter trained in iteration 3: the EMA sits between old EMA and weights
            moved += 1
            big = gap > 1e-6
            assert torch.all(torch.sign(e - w)[big] == torch.sign(e_prev - w)[big]), name
            assert torch.all((e - w).abs()[big] < gap[big]), name
    assert moved > 10, "too few parameters moved in the last iteration to check the EMA against"


@pytest.mark.slow
def test_the_sample_grid_a_run_writes_holds_the_fixed_batch_at_its_tiles(ema_run):
    from PIL import Image

    from components.train.data import ShardStream
    from components.train.stage import tiles

    cfg = ema_run["cfg"]
    grid = np.asarray(Image.open(ema_run["out"] / "samples" / "latest.png").convert("RGB"))
    rows, size, pad = cfg.train.sample_grid_rows, cfg.networks.image_resolution, 2
    columns = 3 + cfg.train.novel_views  # source | target view | Ψ_3d at the target camera | novel views
    assert grid.shape == (rows * (size + pad) + pad, columns * (size + pad) + pad, 3)
    fixed = next(ShardStream(str(ema_run["shards"]), rows, 0, 1, cfg.seed + 1))  # the loop's fixed batch
    for i, (source, target) in enumerate(zip(tiles(fixed.source_image, size), tiles(fixed.target_image, size))):
        y = pad + i * (size + pad)
        assert np.array_equal(grid[y:y + size, pad:pad + size], source), f"row {i}: source tile"
        assert np.array_equal(grid[y:y + size, 2 * pad + size:2 * pad + 2 * size], target), f"row {i}: target tile"
        render = grid[y:y + size, 3 * pad + 2 * size:3 * pad + 3 * size]
        assert render.std() > 1.0, f"row {i}: the render tile is flat"
    assert grid[0, 0].tolist() == [255, 255, 255] and grid[:pad].min() == 255  # the padding is white


# ------------------------------------------------------------------------------------- learning rates
@pytest.fixture()
def one_process_group(monkeypatch):
    """A gloo world of one in this process, for building real DeepSpeed engines; torn down afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    from components.train.engine import init_distributed

    dist = init_distributed("cpu")
    yield dist
    torch.distributed.destroy_process_group()


def test_psi_motion_layers_get_2_5e_4_and_the_rest_1e_4_in_the_deepspeed_optimizer(one_process_group):
    """paper's Ψ rates (DESIGN §2: Adam lr 2.5e-4 for motion layers / 1e-4 for the rest) and its ZeRO stage,
    on tiny networks: the optimizer's groups hold exactly the motion / other parameters at those rates."""
    from components.assets.networks import build_network
    from components.train.engine import Precision
    from components.train.loop import apply_learning_rates, build_engines
    from components.train.models import is_optimized
    from components.train.psi import PsiTask
    from model.networks.psi import is_motion_parameter

    paper = build_config("paper")
    assert (paper.psi.lr_motion, paper.psi.lr) == (2.5e-4, 1e-4)
    cfg = build_config("tiny", {"psi": {"lr": paper.psi.lr, "lr_motion": paper.psi.lr_motion},
                                "deepspeed": {"zero_stage": paper.deepspeed.zero_stage}})
    dist = one_process_group
    torch.manual_seed(0)
    psi = build_network("psi", cfg, dist.device).train()
    discriminator = build_network("discriminator", cfg, dist.device).train()
    task = PsiTask(cfg, cfg.train, psi, discriminator, None, None, None, None, None, None, None, dist.device,
                   Precision.of(cfg.deepspeed, dist.device))
    engines = build_engines(task, cfg, cfg.train, dist)

    numel = {"motion": 0, "base": 0}
    for name, p in psi.named_parameters():
        if is_optimized(name):
            numel["motion" if is_motion_parameter(name) else "base"] += p.numel()
    assert numel["motion"] > 0 and numel["base"] > 0

    def groups() -> dict[str, tuple[float, int]]:
        return {g["name"]: (g["lr"], sum(p.numel() for p in g["params"]))
                for g in engines.generator.optimizer.param_groups}

    for when in ("built", "scheduled"):
        found = groups()
        assert set(found) == {"motion", "base"}, when
        assert found["motion"][0] == pytest.approx(2.5e-4) and found["base"][0] == pytest.approx(1e-4), when
        for group, (_, flat) in found.items():  # ZeRO's flat partition: the group's parameters + alignment padding
            assert numel[group] <= flat < numel[group] + 16, f"{when}: group {group} holds {flat} values"
        apply_learning_rates(engines, task.schedule(10**6))  # what every iteration does before its step
    d_groups = engines.discriminator.optimizer.param_groups
    assert [(g["name"], g["lr"]) for g in d_groups] == [("discriminator", pytest.approx(cfg.psi.d_lr))]


# ------------------------------------------------------------------------------------------ pictures
def test_image_grid_places_each_tile_in_its_cell_on_white_padding():
    from components.io.tracking import image_grid

    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 255, (8, 6, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    grid = image_grid(rows, pad=2)
    assert grid.shape == (2 * 10 + 2, 3 * 8 + 2, 3)
    covered = np.zeros(grid.shape[:2], bool)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = 2 + i * 10, 2 + j * 8
            assert np.array_equal(grid[y:y + 8, x:x + 6], tile), f"tile ({i}, {j})"
            covered[y:y + 8, x:x + 6] = True
    assert (grid[~covered] == 255).all()


def _ends(image: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float, int]:
    """(mean image row at the leftmost ink columns, at the rightmost ones, horizontal span) of colour ``rgb``."""
    close = np.abs(image.astype(int) - np.array(rgb)).sum(axis=2) < 40
    ys, cols = np.nonzero(close)
    assert len(cols) > 200, f"no curve drawn in {rgb}"
    left, right = cols.min(), cols.max()  # the curve's ends: the legend's short sample lines lie inside them
    return ys[cols <= left + 2].mean(), ys[cols >= right - 2].mean(), int(right - left)


def test_the_loss_curve_draws_each_series_where_its_values_are():
    """Matplotlib's first two cycle colours (#1f77b4, #ff7f0e) go to the series in name order: 'D/loss'
    falls 2.0 -> 1.0, 'G/l1' rises 0.1 -> 1.1, so they cross near the end. Image rows grow downwards."""
    from components.io.tracking import loss_curve_png

    xs = range(0, 1000, 10)
    curve = loss_curve_png({"G/l1": [(x, 0.1 + x / 1000) for x in xs],
                            "D/loss": [(x, 2.0 - x / 1000) for x in xs]}, "train_psi3d")
    assert curve.ndim == 3 and curve.shape[2] == 3
    d_start, d_end, d_span = _ends(curve, (0x1F, 0x77, 0xB4))
    g_start, g_end, g_span = _ends(curve, (0xFF, 0x7F, 0x0E))
    assert min(d_span, g_span) > 0.6 * curve.shape[1], "a curve does not span the images-seen axis"
    assert d_end > d_start + 20 and g_end < g_start - 80  # D/loss goes down, G/l1 up (tenfold: far up)
    assert d_start < g_start - 100  # at 0 images 2.0 is far above 0.1
    assert d_end > g_end  # at the end 1.0 is just below 1.1


# -------------------------------------------------------------------------------------- record, version
def test_a_resumed_record_keeps_the_rows_up_to_the_checkpoint_and_their_history(tmp_path):
    rows = [{"iteration": i, "images_seen_after": 2 * i, "losses": {"G/total": 1.0 / i}} for i in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = MetricsRecord(tmp_path)
    record.on_start(RunStart(TrainerState("psi3d", 3, 6, 1, "x"), tmp_path / "ckpt-000000000006"))
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in kept] == [1, 2, 3]
    assert record.history == {"G/total": [(2, 1.0), (4, 0.5), (6, pytest.approx(1 / 3))]}


def test_the_installed_deepspeed_is_the_version_its_private_attributes_were_checked_for():
    import re

    from components.train.deepspeed_compat import PINNED_VERSION, version_problem

    pin = re.search(r'"deepspeed==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pin == PINNED_VERSION, (f"pyproject.toml pins deepspeed {pin}, components/train/deepspeed_compat.py "
                                   f"was checked against {PINNED_VERSION}: re-check it, then update PINNED_VERSION")
    problem = version_problem()
    assert problem is None, problem
