"""Training schedules (pure functions of images seen) and the generated DeepSpeed config."""

from __future__ import annotations

import pytest

from components.config import build_config
from components.config.train import TrainConfig
from components.train.engine import DistributedSetupError, deepspeed_config, micro_batch_per_gpu
from components.train.schedule import ema_beta, iterations, lazy_due, neural_resolution, psi3d_schedule, psi_schedule

PAPER = build_config("paper")


def at(images: int):
    return psi3d_schedule(images, PAPER.psi3d, TrainConfig())


def test_psi3d_switches_happen_at_one_million_images():
    before, after = at(999_999), at(1_000_000)
    assert (before.adversarial, before.renderer_frozen, before.early_terms) == (False, True, True)
    assert (after.adversarial, after.renderer_frozen, after.early_terms) == (True, False, False)
    assert at(0).identity is False and at(399_999).identity is False and at(400_000).identity is True
    assert before.lr == after.lr == 1e-4 and before.d_lr == 1e-4


def test_psi3d_neural_resolution_ramps_linearly_from_64_to_128_over_the_second_million():
    assert [at(n).neural_rendering_resolution for n in (0, 999_999, 1_000_000)] == [64, 64, 64]
    assert at(1_250_000).neural_rendering_resolution == 80
    assert at(1_500_000).neural_rendering_resolution == 96
    assert at(2_000_000).neural_rendering_resolution == 128
    assert at(9_000_000).neural_rendering_resolution == 128
    values = [at(1_000_000 + k * 10_000).neural_rendering_resolution for k in range(101)]
    assert values == sorted(values)


def test_neural_resolution_rounds_half_to_even_and_jumps_for_a_zero_length_ramp():
    assert neural_resolution(1, 64, 65, 0, 2) == 64  # 64.5 -> 64 (np.rint)
    assert neural_resolution(3, 64, 65, 0, 2) == 65
    assert neural_resolution(9, 16, 32, 10, 0) == 16 and neural_resolution(10, 16, 32, 10, 0) == 32


def test_psi_schedule_is_constant_with_motion_lr_two_and_a_half_times_the_rest():
    s0, s1 = psi_schedule(0, PAPER.psi, TrainConfig()), psi_schedule(5_999_968, PAPER.psi, TrainConfig())
    assert s0 == s1.__class__(**{**s1.__dict__, "images_seen": 0})
    assert s0.neural_rendering_resolution == 128 and s0.adversarial and not s0.renderer_frozen
    assert (s0.lr, s0.lr_motion) == (1e-4, 2.5e-4)


def test_ema_half_life_scales_with_batch_and_ramps_up():
    # official: ema_kimg = batch * 10 / 32, half-life min(that, images * 0.05)
    assert ema_beta(10**9, 32, 10_000, 0.05) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32_000, 32, 10_000, 0.05) == pytest.approx(0.5 ** (32 / 1_600))
    assert ema_beta(0, 32, 10_000, 0.05) == 0.0
    assert ema_beta(32, 32, 10_000, None) == pytest.approx(0.5 ** (32 / 10_000))


def test_lazy_regularisation_and_iteration_counts():
    assert [i for i in range(40) if lazy_due(i, 16)] == [0, 16, 32]
    assert iterations(10_000_000, 32) == 312_500 and iterations(33, 32) == 2


def test_deepspeed_config_keeps_the_global_batch_whatever_the_world_size():
    for world, micro in ((1, 32), (8, 4), (16, 2)):
        ds = deepspeed_config(PAPER.deepspeed, 32, world, "cuda")
        assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == micro
        assert ds["train_batch_size"] == micro * world * ds["gradient_accumulation_steps"]
    ds = deepspeed_config(PAPER.deepspeed, 32, 8, "cuda")
    assert ds["zero_optimization"] == {"stage": 1} and ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert deepspeed_config(PAPER.deepspeed, 32, 8, "cpu")["torch_autocast"] == {"enabled": False}
    accumulate = PAPER.deepspeed.model_copy(update={"gradient_accumulation_steps": 2})
    assert deepspeed_config(accumulate, 32, 8, "cuda")["train_micro_batch_size_per_gpu"] == 2


def test_deepspeed_config_rejects_an_uneven_split_and_zero_3():
    with pytest.raises(DistributedSetupError, match="not divisible by world size 3"):
        micro_batch_per_gpu(32, 3, 1)
    with pytest.raises(DistributedSetupError, match="zero_stage 3"):
        deepspeed_config(PAPER.deepspeed.model_copy(update={"zero_stage": 3}), 32, 8, "cuda")
