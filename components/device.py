"""``--device`` of every command, defined once: ``auto`` (the default) = CUDA when this process sees a GPU, else CPU.

Commands add the option with :func:`add_device_argument`; argparse runs :func:`pick_device` on the value
(the default included), so a stage receives ``cuda`` or ``cpu`` and never has to know about ``auto``.
"""

from __future__ import annotations

import argparse

DEFAULT_DEVICE = "auto"


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` / ``cpu``; any other name (``cpu``, ``cuda``, ``cuda:1``) unchanged."""
    if name != "auto":
        return name
    import torch  # only when a command runs: `p4d --help` stays fast

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=DEFAULT_DEVICE, type=pick_device,
                        help="auto, cpu or cuda[:N] (default: auto = cuda when a GPU is visible, else cpu)")
