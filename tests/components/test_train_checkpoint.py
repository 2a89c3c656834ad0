"""Checkpoints (atomic, prunable, refused when they do not fit) and the starting weights of both stages."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from components.train.checkpoint import (
    COMPLETE,
    EMA_FILE,
    CheckpointError,
    Checkpoints,
    TrainerState,
    rng_state,
    set_rng_state,
)
from components.train.models import (
    WeightsError,
    find_psi3d_weights,
    init_psi_from_psi3d,
    init_renderer_from_genhead,
)
from model.networks.psi import Psi, PsiConfig, is_motion_parameter


class FakeEngine:
    """What Checkpoints needs from a DeepSpeed engine; ``fail`` simulates a crash while writing."""

    def __init__(self, value: float, fail: bool = False) -> None:
        self.value, self.fail = value, fail

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool = True) -> None:
        if self.fail:
            raise OSError("No space left on device")
        (torch.save({"value": self.value}, f"{save_dir}/{tag}.pt"))

    def load_checkpoint(self, load_dir: str, tag: str, load_lr_scheduler_states: bool = True) -> None:
        self.value = torch.load(f"{load_dir}/{tag}.pt")["value"]


def state(images: int, **kw) -> TrainerState:
    return TrainerState(**{"stage": "psi3d", "iteration": images // 2, "images_seen": images, "world_size": 1,
                           "config_sha256": "abc", **kw})


def save(ckpts: Checkpoints, images: int, ema: nn.Module, value: float = 1.0, fail: bool = False):
    return ckpts.save(state(images), FakeEngine(value), FakeEngine(-value, fail), ema,
                      {"rng": rng_state(), "data": {"position": images}}, {"network": "psi3d"})


def test_a_saved_checkpoint_is_complete_and_loads_back(tmp_path):
    ema = nn.Linear(3, 2)
    ckpts = Checkpoints(tmp_path / "ck", keep_last=3, rank=0)
    path = save(ckpts, 16, ema, value=7.0)
    assert path.name == "ckpt-000000000016" and (path / COMPLETE).is_file() and (path / EMA_FILE).is_file()
    assert json.loads((path / "trainer.json").read_text())["images_seen"] == 16
    assert ckpts.latest() == path

    g, d, ema2 = FakeEngine(0), FakeEngine(0), nn.Linear(3, 2)
    loaded, rank_state = ckpts.load(path, g, d, ema2, state(0))
    assert (loaded.images_seen, loaded.iteration, g.value, d.value) == (16, 8, 7.0, -7.0)
    assert torch.equal(ema2.weight, ema.weight) and rank_state["data"] == {"position": 16}


def test_rng_states_round_trip():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = rng_state()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(saved)
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_crash_while_writing_never_leaves_a_visible_checkpoint(tmp_path):
    ema = nn.Linear(3, 2)
    ckpts = Checkpoints(tmp_path / "ck", keep_last=3, rank=0)
    first = save(ckpts, 16, ema)
    with pytest.raises(OSError, match="No space left"):
        save(ckpts, 32, ema, fail=True)
    assert ckpts.latest() == first
    assert [p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp-")] == [".tmp-ckpt-000000000032"]
    Checkpoints(tmp_path / "ck", keep_last=3, rank=0)  # a restarted run cleans the leftovers
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["ckpt-000000000016"]


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    ema = nn.Linear(3, 2)
    ckpts = Checkpoints(tmp_path / "ck", keep_last=2, rank=0)
    for images in (16, 32, 48, 64):
        save(ckpts, images, ema)
    assert [p.name for p in ckpts.complete()] == ["ckpt-000000000048", "ckpt-000000000064"]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["ckpt-000000000048", "ckpt-000000000064"]


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_reason(tmp_path):
    ema = nn.Linear(3, 2)
    ckpts = Checkpoints(tmp_path / "ck", keep_last=2, rank=0)
    path = save(ckpts, 16, ema)
    engines = (FakeEngine(0), FakeEngine(0), nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="written by 1 processes and this run has 2"):
        ckpts.load(path, *engines, state(0, world_size=2))
    with pytest.raises(CheckpointError, match="'psi3d' checkpoint, not 'psi'"):
        ckpts.load(path, *engines, state(0, stage="psi"))
    with pytest.raises(CheckpointError, match="resume refused: the run in .* was written with other settings"):
        ckpts.load(path, *engines, state(0, config_sha256="xyz"))


def test_psi_starts_from_psi3d_except_the_motion_layers():
    torch.manual_seed(0)
    psi3d = Psi(PsiConfig.tiny(static=True))
    torch.manual_seed(1)
    psi = Psi(PsiConfig.tiny())
    before = {k: v.clone() for k, v in psi.state_dict().items()}
    init_psi_from_psi3d(psi, psi3d.state_dict())
    after, source = psi.state_dict(), psi3d.state_dict()
    motion = [k for k in after if is_motion_parameter(k)]
    assert motion and all(torch.equal(after[k], before[k]) for k in motion)
    assert all(torch.equal(after[k], source[k]) for k in after if not is_motion_parameter(k))
    with pytest.raises(WeightsError, match="lack"):
        init_psi_from_psi3d(psi, {k: v for k, v in source.items() if not k.startswith("decoder.")})


def test_psi3d_renderer_starts_from_genhead():
    from components.assets.networks import build_network

    torch.manual_seed(0)
    genhead = build_network("genhead", "tiny")
    psi3d = build_network("psi3d", "tiny")
    assert init_renderer_from_genhead(psi3d, genhead.state_dict()) > 0
    g, p = genhead.state_dict(), psi3d.state_dict()
    renderer = [k for k in p if k.startswith(("decoder.", "superresolution."))]
    assert renderer and all(torch.equal(p[k], g[k]) for k in renderer)


def test_psi3d_weights_are_found_in_a_run_folder_or_its_checkpoints(tmp_path):
    ckpts = Checkpoints(tmp_path / "run" / "checkpoints", keep_last=2, rank=0)
    path = save(ckpts, 16, nn.Linear(2, 2))
    assert find_psi3d_weights(tmp_path / "run") == path / EMA_FILE
    (tmp_path / "run" / "model").mkdir()
    (tmp_path / "run" / "model" / "psi3d.safetensors").write_bytes(b"x")
    assert find_psi3d_weights(tmp_path / "run") == tmp_path / "run" / "model" / "psi3d.safetensors"
    with pytest.raises(WeightsError, match="no Ψ_3d weights"):
        find_psi3d_weights(tmp_path / "elsewhere")


# ------------------------------------------------------------------------------ fallback over bad checkpoints
def _three(tmp_path, keep_last: int = 3):
    ema = nn.Linear(3, 2)
    ckpts = Checkpoints(tmp_path / "ck", keep_last=keep_last, rank=0, config={"psi3d": {"lr": 1e-4}})
    return ckpts, [save(ckpts, images, ema, value=float(images)) for images in (16, 32, 48)]


def test_a_truncated_or_missing_file_is_found_before_any_engine_is_touched(tmp_path):
    from components.train.checkpoint import problem

    ckpts, (c16, c32, c48) = _three(tmp_path)
    assert problem(c48) is None and json.loads((c48 / "MANIFEST.json").read_text())["ema.safetensors"]["size"] > 0
    data = (c48 / EMA_FILE).read_bytes()
    (c48 / EMA_FILE).write_bytes(data[: len(data) // 2])
    assert problem(c48) == f"ema.safetensors is {len(data) // 2} bytes, {len(data)} were written (truncated or overwritten)"
    (c32 / "generator.pt").unlink()
    assert problem(c32) == "generator.pt is missing"
    raw = bytearray((c16 / "rank-00000.pt").read_bytes())
    raw[-10] ^= 0xFF  # same size, one flipped byte
    (c16 / "rank-00000.pt").write_bytes(bytes(raw))
    assert problem(c16) == "rank-00000.pt does not match its sha256 (corrupted)"


def test_resume_skips_bad_checkpoints_newest_first_and_removes_them(tmp_path, capsys):
    from components.train.resume import candidates

    ckpts, (c16, c32, c48) = _three(tmp_path)
    (c48 / EMA_FILE).write_bytes(b"\0" * 10)
    skipped: list[str] = []
    found = candidates(ckpts, None, skipped)
    assert next(found) == c32
    out = capsys.readouterr().out
    assert "resume: skipped ckpt-000000000048: ema.safetensors is 10 bytes" in out and "removed it" in out
    assert skipped == ["ckpt-000000000048"] and not c48.exists()
    g, d = FakeEngine(0), FakeEngine(0)
    loaded, _ = ckpts.load(c32, g, d, nn.Linear(3, 2), state(0))
    assert (loaded.images_seen, g.value) == (32, 32.0)
    # the next save at 48 images writes a new checkpoint rather than keeping the removed bad one
    assert (save(ckpts, 48, nn.Linear(3, 2)) / COMPLETE).is_file()


def test_with_no_good_checkpoint_nothing_is_resumed(tmp_path, capsys):
    from components.train.resume import candidates

    ckpts, paths = _three(tmp_path)
    for p in paths:
        (p / "trainer.json").write_text("{ not json")
    skipped: list[str] = []
    assert list(candidates(ckpts, None, skipped)) == []
    assert skipped == ["ckpt-000000000048", "ckpt-000000000032", "ckpt-000000000016"]
    assert "trainer.json unreadable" in capsys.readouterr().out


def test_a_config_change_is_refused_naming_the_keys_that_differ(tmp_path):
    ckpts, (_, _, c48) = _three(tmp_path)
    now = Checkpoints(tmp_path / "ck", keep_last=3, rank=0, config={"psi3d": {"lr": 2e-4}, "seed": 1})
    with pytest.raises(CheckpointError) as err:
        now.load(c48, FakeEngine(0), FakeEngine(0), nn.Linear(3, 2), state(0, config_sha256="xyz"))
    assert str(err.value) == (f"resume refused: these settings differ from the run in {c48}: psi3d.lr (0.0001 -> "
                              "0.0002), seed (absent -> 1); resume with the same params, or start a new --out")
    with pytest.raises(CheckpointError, match="trained on data version v1 and this run's data is v2"):
        now.check_fits(c48, TrainerState(**{**state(48).__dict__, "data_version": "v1"}),
                       state(0, data_version="v2"))


def test_the_store_mirror_uploads_marker_last_and_downloads_whole(tmp_path):
    from components.io.storage import LocalStore
    from components.train.durable import CheckpointMirror
    from components.train.resume import candidates

    ckpts, (c16, c32, c48) = _three(tmp_path)
    mirror = CheckpointMirror(LocalStore(tmp_path / "store"))
    for p in (c16, c32, c48):
        mirror.upload(p)
    mirror.store.delete("checkpoints/ckpt-000000000048/COMPLETE")  # as if the upload of 48 was cut short
    assert mirror.complete() == ["ckpt-000000000016", "ckpt-000000000032"]
    mirror.prune(1)
    assert mirror.complete() == ["ckpt-000000000032"]
    assert not (tmp_path / "store" / "checkpoints" / "ckpt-000000000016").exists()
    # a new attempt with an empty output folder: the stored checkpoint comes down, complete
    fresh = Checkpoints(tmp_path / "attempt2", keep_last=3, rank=0)
    [got] = list(candidates(fresh, mirror, []))
    assert got == tmp_path / "attempt2" / "ckpt-000000000032" and (got / COMPLETE).is_file()
    assert (got / EMA_FILE).read_bytes() == (c32 / EMA_FILE).read_bytes()
