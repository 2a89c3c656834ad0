"""Collect the per-shard outputs of a fanned-out stage into one directory: ``part-NNNNN/`` per shard.

Readers of a stage output (``--labels``, ``--data``) accept either one stage output or such a
directory of parts; ``parts.json`` lists the parts in shard order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from components.io.atomic import atomic_write_text

PARTS_INDEX = "parts.json"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def gather_parts(parts: list[str | Path], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, part in enumerate(parts):
        part = Path(part)
        if not part.is_dir():
            raise FileNotFoundError(f"shard output {part} is not a directory")
        name = part_name(i)
        shutil.copytree(part, out / name, dirs_exist_ok=True)
        names.append(name)
    atomic_write_text(out / PARTS_INDEX, json.dumps({"parts": names}, indent=2))
    return out


def part_dirs(root: str | Path) -> list[Path]:
    """The parts of a gathered directory, or ``[root]`` for a plain stage output."""
    root = Path(root)
    index = root / PARTS_INDEX
    if not index.exists():
        return [root]
    return [root / name for name in json.loads(index.read_text())["parts"]]
