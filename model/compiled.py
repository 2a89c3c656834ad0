"""torch.compile for the few hot, memory-bound op chains of the networks, on CUDA only, in one place.

Eager PyTorch runs a chain of elementwise steps as one kernel per step, each reading and writing the whole
tensor; inductor fuses such a chain into one kernel. Measured on an H200 (docs/benchmarks.md): the
16-tap FIR filter of the super-resolution upsampling (16 strided multiply-adds over a (1, 1024, 512, 512)
fp32 tensor at batch 8) is the largest item of a Ψ frame when eager.

The CPU path is never compiled (tests and the tiny profile stay eager and deterministic). Set
``P4D_EAGER=1`` to keep CUDA eager as well (debugging, or comparing against the compiled path). The first
call compiles (seconds) with symbolic sizes and strides (``dynamic=True``), so one graph serves every
batch size and resolution. What still specializes a graph is the filter's tap count, the strides, and the
input and output dtypes: the networks call the FIR filter in about 16 such variants, more than torch's
default recompile limit (8 per function), past which it silently runs eager (seen on the H200: the fused
kernel never ran in a batch-8 bf16 frame). So the limit is raised to ``RECOMPILE_LIMIT``.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)
EAGER_ENV = "P4D_EAGER"
RECOMPILE_LIMIT = 64
_COMPILED: dict[Callable, Callable] = {}


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older alias
        if getattr(dynamo_config, name, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            setattr(dynamo_config, name, RECOMPILE_LIMIT)


def eager_only() -> bool:
    """True when the user asked for eager CUDA (``P4D_EAGER=1``)."""
    return os.environ.get(EAGER_ENV) == "1"


def compiling(device: torch.device | str) -> bool:
    """Whether work on ``device`` runs compiled: CUDA, unless P4D_EAGER=1."""
    return torch.device(device).type == "cuda" and not eager_only()


def compiled(fn: F) -> F:
    """``fn`` compiled (once per function, dynamic shapes), whatever the device; callers decide with ``compiling``."""
    result = _COMPILED.get(fn)
    if result is None:
        _raise_recompile_limit()
        result = _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return result  # type: ignore[return-value]


def on_cuda(fn: F, like: torch.Tensor) -> F:
    """``fn`` compiled when ``like`` lives on a CUDA device (and P4D_EAGER is not set), else ``fn`` itself."""
    return compiled(fn) if compiling(like.device) else fn
