"""Write a synthetic asset bundle in the REAL file formats (for tests and the embedded default).

Every file is what the real asset is, format-wise: FLAME as a chumpy-style pickle, the landmark
embedding as a pickled-dict ``.npy``, the MediaPipe embedding as an ``.npz``, GenHead/Ψ_3d/Ψ as
official-style network pickles (persistent-class records with embedded source text), PD-FGC /
ArcFace / LPIPS as plain state dicts. Weights are random. ``bundle.json`` says ``synthetic: true``.

The bundle is built in a temporary sibling directory and renamed into place, so a crash never
leaves a half-written bundle; an existing directory is replaced only if it is itself synthetic.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from components.assets.check import AssetError, read_bundle_info
from components.assets.manifest import ASSETS, BUNDLE_METADATA, spec

MEDIAPIPE_EMBEDDED = 105  # MICA's MediaPipe-to-FLAME embedding has 105 points
FLAME_LANDMARKS = 68


def _faces_and_bary(rng: np.random.Generator, n_faces: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    faces = rng.choice(n_faces, size=n, replace=n > n_faces)
    bary = rng.dirichlet(np.ones(3), size=n)
    return faces.astype(np.int64), bary.astype(np.float64)


def _write_flame(root: Path, seed: int) -> dict:
    from model.flame import synthetic_flame_arrays, write_flame_pickle

    arrays = synthetic_flame_arrays(seed)
    path = root / spec("flame_model").path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_flame_pickle(path, arrays)
    return arrays


def _write_landmark_embeddings(root: Path, arrays: dict, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    n_faces = arrays["f"].shape[0]
    faces, bary = _faces_and_bary(rng, n_faces, FLAME_LANDMARKS - 17)
    full_faces, full_bary = _faces_and_bary(rng, n_faces, FLAME_LANDMARKS)
    # Same keys as DECA's landmark_embedding.npy (a pickled dict saved with np.save).
    embedding = {
        "static_lmk_faces_idx": faces,
        "static_lmk_bary_coords": bary,
        "dynamic_lmk_faces_idx": rng.integers(0, n_faces, size=(79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), size=(79, 17)),
        "full_lmk_faces_idx": full_faces[None],
        "full_lmk_bary_coords": full_bary[None],
    }
    np.save(root / spec("flame_landmarks").path, np.array(embedding, dtype=object), allow_pickle=True)
    np.savez(root / spec("mediapipe_embedding").path, **_mediapipe_embedding(arrays))


def _mediapipe_embedding(arrays: dict) -> dict[str, np.ndarray]:
    """MediaPipe-to-FLAME embedding that fits real faces to the synthetic head.

    Random triangles would make every real-photo fit miss fit_flame's reprojection limit; instead
    MediaPipe's points on a public-domain photo (scikit-image's astronaut) are cast onto the head's
    front, so the embedded landmarks sit where a face's landmarks sit.
    """
    from skimage.data import astronaut

    from components.landmarks import FaceLandmarker
    from components.assets.synthetic_embedding import synthetic_mediapipe_embedding

    with FaceLandmarker() as landmarker:
        points = landmarker(astronaut()).points
    return synthetic_mediapipe_embedding(arrays, points, n_landmarks=MEDIAPIPE_EMBEDDED)


def _write_flame_parts(root: Path, arrays: dict) -> None:
    """The official FLAME part sets and proxy mesh, derived from the synthetic mesh, in their file formats."""
    import pickle

    from model.deformation import build_proxy_mesh, part_labels, synthetic_flame_parts

    parts = synthetic_flame_parts(arrays)
    masks, info = parts.to_official()
    # FLAME_masks.pkl is a protocol-2 pickle of a dict of numpy arrays (read back by the restricted unpickler).
    (root / spec("flame_masks").path).write_bytes(pickle.dumps(masks, protocol=2))
    np.save(root / spec("flame_parts_info").path, np.array(info, dtype=object), allow_pickle=True)
    proxy = build_proxy_mesh(arrays["v_template"], arrays["f"], part_labels=part_labels(parts))
    np.save(root / spec("flame_proxy_mesh").path, np.array(proxy.to_official(), dtype=object), allow_pickle=True)


def _write_networks(root: Path, profile: str, seed: int) -> None:
    import torch

    from components.assets.networks import build_network, official_record
    from components.import_official import write_mimic_official_pickle

    (root / "weights").mkdir(parents=True, exist_ok=True)
    for a in ASSETS:
        if a.network is None:
            continue
        torch.manual_seed(seed)
        module = build_network(a.network, profile)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if a.kind == "official_pickle":
            write_mimic_official_pickle(root / a.path, {"G_ema": official_record(a.network, profile, state)})
        else:
            torch.save(state, root / a.path)


def synthesize_bundle(out: str | Path, profile: str = "tiny", seed: int = 0) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        meta = out / BUNDLE_METADATA
        if not meta.exists() or not read_bundle_info(out).synthetic:
            raise AssetError(
                f"{out} is not empty and is not a synthetic bundle; refusing to overwrite what may be real assets"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arrays = _write_flame(tmp, seed)
        _write_landmark_embeddings(tmp, arrays, seed)
        _write_flame_parts(tmp, arrays)
        _write_networks(tmp, profile, seed)
        (tmp / BUNDLE_METADATA).write_text(
            json.dumps(
                {
                    "synthetic": True,
                    "profile": profile,
                    "seed": seed,
                    "note": "random weights in the real file formats; never report or register results from it",
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                },
                indent=2,
            )
        )
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
