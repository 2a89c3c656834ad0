"""The compiled CUDA paths (model.compiled) compute what the eager ones do.

CPU: the switch itself (never compiled on the CPU; P4D_EAGER keeps CUDA eager). CUDA (``-m gpu``, run on
the device): the fused FIR filter and the inference attention against the eager / explicit formulations,
for the shapes and dtypes the networks use.
"""

from __future__ import annotations

import pytest
import torch

import model.compiled as compiled
from model.networks.psi.segformer import _QKVAttention
from model.networks.stylegan2 import upfirdn2d as U

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _double(x):
    return 2 * x


def test_cpu_tensors_are_never_compiled(monkeypatch):
    """The CPU path (tests, tiny) stays eager; and every variant of the FIR filter fits under the raised limit."""
    monkeypatch.delenv(compiled.EAGER_ENV, raising=False)
    assert compiled.on_cuda(_double, torch.zeros(1)) is _double


@cuda
@pytest.mark.gpu
def test_eager_switch_keeps_cuda_eager(monkeypatch):
    monkeypatch.setenv(compiled.EAGER_ENV, "1")
    assert compiled.on_cuda(_double, torch.zeros(1, device="cuda")) is _double
    monkeypatch.delenv(compiled.EAGER_ENV)
    assert compiled.on_cuda(_double, torch.zeros(1, device="cuda")) is not _double


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["up", "down", "filter", "separable"])
def test_fused_fir_matches_eager(monkeypatch, op, dtype):
    g = torch.Generator().manual_seed(0)
    f = U.setup_filter([1, 3, 3, 1])  # 2-D (outer product), as the networks' resample filters
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8  # 1-D: the separable path
    inputs = [torch.randn(*shape, generator=g).to("cuda", dtype)  # several shapes: no recompile limit
              for shape in [(2, 16, 33, 40), (1, 64, 128, 128), (8, 4, 64, 64)]]
    results = []
    for eager in ("1", "0"):
        monkeypatch.setenv(compiled.EAGER_ENV, eager)
        for x in inputs:
            if op == "up":
                y = U.upsample2d(x, f.cuda())
            elif op == "down":
                y = U.downsample2d(x, f.cuda())
            elif op == "filter":
                y = U.filter2d(x, f.cuda(), padding=1)
            else:
                y = U.upfirdn2d(x, f1.cuda(), up=1, down=2, padding=1)
            results.append((eager, y))
    half = len(results) // 2
    for (_, a), (_, b) in zip(results[:half], results[half:]):
        assert a.dtype == b.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the same fp32 sum
        torch.testing.assert_close(b.float(), a.float(), atol=tol, rtol=tol)


@cuda
@pytest.mark.gpu
def test_inference_attention_matches_explicit_fp32():
    torch.manual_seed(0)
    attn = _QKVAttention(1024, 2).cuda()  # 512-wide heads, as Ψ's triplane decoder
    x, ctx = torch.randn(2, 256, 1024, device="cuda"), torch.randn(2, 64, 1024, device="cuda")
    with torch.enable_grad():  # the explicit fp32 path (training)
        explicit = attn.attend(x, ctx).detach()
    with torch.no_grad():  # the memory-efficient kernel (inference)
        fused = attn.attend(x, ctx)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused_bf16 = attn.attend(x, ctx)
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused_bf16.float(), explicit, atol=5e-2, rtol=5e-2)


@cuda
@pytest.mark.gpu
def test_fir_runs_compiled_in_a_network_frame(monkeypatch):
    """The fused kernel really runs for every FIR call of a super-resolution pass in both dtypes (not a silent
    eager fallback): no eager addcmul_ is left in the profile."""
    from torch.profiler import ProfilerActivity, profile

    from model.networks.superresolution import SuperresolutionConfig, SuperresolutionHybrid8XDC

    monkeypatch.delenv(compiled.EAGER_ENV, raising=False)
    sr = SuperresolutionHybrid8XDC(SuperresolutionConfig()).cuda().eval()
    names = []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (1, 8):
            x = torch.randn(batch, sr.cfg.channels, 128, 128, device="cuda")
            ws = torch.zeros(batch, 1, sr.cfg.w_dim, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                sr(x[:, :3], x, ws)  # compile
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    sr(x[:, :3], x, ws)
            names += [e.key for e in prof.key_averages()]
    assert "aten::addcmul_" not in names
