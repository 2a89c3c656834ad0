"""What the project's hand-written Triton kernels share: the optional import, the interpreter switch, the jit cache.

Triton ships with CUDA builds of torch; CPU-only installs may lack it, and then the kernels' callers keep their
eager paths. Kernel bodies are plain module-level functions (Triton resolves the names they use in the module's
globals) jitted on first use by ``jitted``, because Triton decides at jit time whether a kernel is compiled or
run by its interpreter (``TRITON_INTERPRET=1``: the same source executed with numpy on CPU tensors; the tests use
it, in a child process, since Triton also reads that variable once at import).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without Triton
    triton = None
    tl = None


def available() -> bool:
    """Whether Triton can be imported here."""
    return tl is not None


def interpreting() -> bool:
    """Whether Triton runs kernels through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(device: torch.device | str) -> bool:
    """Whether a Triton kernel can run on tensors of ``device``: CUDA, or anything under the interpreter."""
    return available() and (torch.device(device).type == "cuda" or interpreting())


@functools.cache
def _jitted(fn: Callable, interpret: bool):
    del interpret  # part of the cache key: a kernel jitted for the interpreter is not a compiled one
    return triton.jit(fn)


def jitted(fn: Callable):
    """``triton.jit(fn)``, once per function and interpreter setting."""
    if not available():
        raise RuntimeError("Triton is not installed (it ships with CUDA builds of torch)")
    return _jitted(fn, interpreting())
