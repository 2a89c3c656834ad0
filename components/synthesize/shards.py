"""The on-disk dataset: WebDataset-style tar shards of per-view files plus ``index.json``.

Layout under the output root (a folder or an s3:// prefix)::

    index.json                       counts, per-shard sha256 and bytes, settings fingerprint
    shards/shard-000000.tar          identities [0, shard_size), every view of each
    ...

Inside a shard, files are named ``<identity:08d>_<view>.<ext>`` (WebDataset: the key is the name up
to the first dot) and appear identity by identity, view by view, in the order of ``VIEW_FILES``.
Tar headers carry no time, owner or mode of the writing machine, so equal inputs give equal bytes.

Per view (and why; official loss_recon_v1.py / training_loop_recon_v1.py):
- ``image.png``     512² SR image: L1 + LPIPS on SR, identity loss; the raw targets are also filtered
                    resizes of it (official ``filtered_resizing(real_img_recon, ...)``).
- ``image_raw.png`` GenHead's neural-resolution render (the raw image as GenHead made it).
- ``seg.png``       foreground opacity: splits raw into raw-no-bg / bg targets, seg loss, depth mask.
- ``bg.png``        GenHead's background rgb: target of the bg L1/LPIPS term (official uses
                    ``real_feature_recon_bg[:, :3]``).
- ``depth.npy``     float16 ray depth: early depth loss.
- ``label.npy``     float32 437-float label: rendering camera + the FLAME parameters GenHead was given.
- ``triplane.npy``  float16 (N, 3 + C): points + face-triplane features for the early L_T (optional).
- ``json``          provenance: label rows used, camera source, conditioning camera.
Not stored because the trainer recomputes them from ``label.npy`` at no GenHead cost: the FLAME
correspondence ("uv") map and landmarks (model.deformation), and PD-FGC motion (unused by the static
Ψ_3d, whose motion scale is 0). The 32-channel feature images are not stored (about 0.5 MB per view)
since only the official code's extra early feature term uses them.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

INDEX_FILE = "index.json"
SHARD_DIR = "shards"
INDEX_FORMAT = "p4d-synthesize/1"
VIEW_FILES = ("image.png", "image_raw.png", "seg.png", "bg.png", "depth.npy", "label.npy", "triplane.npy", "json")


def shard_name(index: int) -> str:
    return f"{SHARD_DIR}/shard-{index:06d}.tar"


def view_key(identity: int, view: int) -> str:
    return f"{identity:08d}_{view}"


def _png(image: torch.Tensor, level: int) -> bytes:
    """(C, H, W) in [-1, 1] -> 8-bit PNG (grey for C = 1)."""
    pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_view(image: torch.Tensor, image_raw: torch.Tensor, seg: torch.Tensor, background: torch.Tensor,
                depth: torch.Tensor, label: torch.Tensor, triplane: torch.Tensor | None, meta: dict,
                png_level: int) -> list[tuple[str, bytes]]:
    """One view's files as (extension, bytes), in ``VIEW_FILES`` order (CPU tensors, no batch dim)."""
    files = [
        ("image.png", _png(image, png_level)),
        ("image_raw.png", _png(image_raw, png_level)),
        ("seg.png", _png(seg, png_level)),
        ("bg.png", _png(background, png_level)),
        ("depth.npy", _npy(depth.numpy().astype(np.float16))),
        ("label.npy", _npy(label.numpy().astype(np.float32))),
    ]
    if triplane is not None:
        files.append(("triplane.npy", _npy(triplane.numpy().astype(np.float16))))
    files.append(("json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()))
    return files


def _image(data: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(data)))
    t = torch.from_numpy(array.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float() / 127.5 - 1


def decode_view(files: dict[str, bytes]) -> dict:
    """Inverse of ``encode_view``: images in [-1, 1] float32, arrays float32, ``json`` a dict."""
    out: dict = {}
    for ext, data in files.items():
        if ext.endswith(".png"):
            out[ext[:-4]] = _image(data)
        elif ext.endswith(".npy"):
            out[ext[:-4]] = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))
        elif ext == "json":
            out["meta"] = json.loads(data)
    return out


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A POSIX tar of (name, bytes) in the given order, with fixed headers (mtime 0, root, 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def iter_identities(data: bytes) -> Iterator[tuple[int, list[dict[str, bytes]]]]:
    """(identity, [view files]) from shard bytes, in stored order; views sorted by view index."""
    current: int | None = None
    views: dict[int, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            ident_text, _, view_text = key.partition("_")
            identity, view = int(ident_text), int(view_text)
            if current is not None and identity != current:
                yield current, [views[v] for v in sorted(views)]
                views = {}
            current = identity
            views.setdefault(view, {})[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, [views[v] for v in sorted(views)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps_index(index: dict) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
