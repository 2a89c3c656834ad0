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
