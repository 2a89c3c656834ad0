"""Timing shared by the benchmark scripts: a device sync, and the median of repeated calls after a warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so a wall-clock interval covers the kernels."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str, iters: int, warmup: int) -> tuple[float, Any]:
    """(median seconds of one call over ``iters`` calls after ``warmup`` untimed ones, the last call's result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def set_flags(device: torch.device, tf32: str = "off", cudnn_benchmark: bool = False) -> str:
    """Set the TF32 / cuDNN-autotuning flags a benchmark runs under and say them, as read back from torch.

    ``tf32``: "off" (no TF32 in matmuls nor cuDNN convolutions), "default" (leave PyTorch's: cuDNN may use
    TF32, matmuls not) or "on" (TF32 in both).
    """
    if tf32 not in ("off", "default", "on"):
        raise ValueError(f"tf32 must be off, default or on, got {tf32!r}")
    if tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
        torch.backends.cudnn.allow_tf32 = tf32 == "on"
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if device.type != "cuda":
        return f"CPU, {torch.get_num_threads()} threads"
    return (f"TF32 in matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, in cuDNN "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, cudnn.benchmark "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}")
