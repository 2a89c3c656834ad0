"""The stage manifest: exactly one row per input item, written atomically as Parquet.

An *item* is one image, or one sampled frame of a video clip (a video that cannot be opened at
all is one item with no ``frame_index``). ``status`` is ``ok`` or ``failed``; a failed row says
why in ``reason``; ``notes`` records what was done to an accepted item (several faces, EXIF
rotation, colour conversion, ...). ``label_row`` indexes ``labels.npy`` / ``motion.npy`` /
``landmarks.npy`` (-1 for failed rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.errors import ItemFailure  # noqa: F401  (a failed row's reason; the stages import it from here)
from components.io.atomic import atomic_path

MANIFEST_NAME = "manifest.parquet"
OK, FAILED = "ok", "failed"


@dataclass
class ManifestRow:
    id: str
    source: str
    sha256: str
    clip_id: str | None
    frame_index: int | None  # None for still images
    status: str
    reason: str = ""
    notes: str = ""
    crop_path: str | None = None
    label_row: int = -1
    reprojection_px: float | None = None  # mean landmark error of the fit, px at 512
    config_hash: str = ""


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("clip_id", pa.string()),
        ("frame_index", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("notes", pa.string()),
        ("crop_path", pa.string()),
        ("label_row", pa.int64()),
        ("reprojection_px", pa.float32()),
        ("config_hash", pa.string()),
    ]
)


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    columns = {name: [] for name in SCHEMA.names}
    for row in rows:
        values = asdict(row)
        for name in SCHEMA.names:
            columns[name].append(values[name])
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: Path) -> list[ManifestRow]:
    table = pq.read_table(path, schema=SCHEMA)
    return [ManifestRow(**record) for record in table.to_pylist()]
