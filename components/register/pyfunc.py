"""Ψ as an MLflow model: a pyfunc whose ``predict`` renders through the Animator.

Not ``mlflow.pytorch``: its default ``pt2`` format needs ``torch.export`` of the whole renderer. The model's
one artifact is the Animator *model package* (safetensors weights + network config + inference settings +
the assets alignment and motion need), so ``mlflow.pyfunc.load_model("models:/portrait4d-v2@champion")``
renders with nothing else installed than this project (its pip requirement).

Request (a pandas DataFrame, one row per frame to render):

- ``source``: encoded image bytes (PNG / JPEG) of the portrait to animate;
- ``driving``: encoded image bytes of the driving frame, **or** ``motion``: a list of ``motion_dim`` floats
  (548 at paper size, PD-FGC's embedding);
- ``camera`` (optional): a list of 25 floats (cam2world 4x4 + normalised intrinsics) to render from;
  without it the driving frame's own camera (``driving``) or the source's camera (``motion``) is used.

Response: a DataFrame with one column ``image`` holding PNG bytes of the (S, S, 3) uint8 frame, S = Ψ's
image size. PNG is lossless, so the decoded frame equals the Animator's exactly, and bytes survive every
pyfunc transport (in-process, ``mlflow models serve`` JSON as base64). Decode with ``decode_image``.
Rows sharing a source image encode it once per call. ``model_config={"device": "cuda"}`` at load time
picks the device (default ``auto``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

DISTRIBUTION = "portrait4d-mlops"
PACKAGE_ARTIFACT = "package"
OUTPUT_COLUMN = "image"
CAMERA_FLOATS = 25  # the EG3D-style camera label: model.cameras (cam2world 4x4 + intrinsics 3x3)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    from components.animate import AnimateError

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise AnimateError(f"{what}: expected encoded image bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise AnimateError(f"{what}: not a decodable image ({err})") from None


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):  # pandas fills absent cells with NaN
        return False
    return True


class PsiModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: load the Animator from the package artifact, render one frame per input row."""

    def load_context(self, context) -> None:
        from components.animate import Animator

        device = (context.model_config or {}).get("device", "auto")
        self.animator = Animator.load(context.artifacts[PACKAGE_ARTIFACT], device=device)

    def _frame(self, source, row: Any, index: int) -> np.ndarray:
        from components.animate import AnimateError

        a = self.animator
        camera = row.get("camera")
        cameras = np.asarray(camera, np.float32).reshape(1, -1) if _present(camera) else None
        if cameras is not None and cameras.shape[1] != CAMERA_FLOATS:
            raise AnimateError(f"row {index}: camera: expected {CAMERA_FLOATS} floats, got {cameras.shape[1]}")
        if _present(row.get("driving")):
            motion = a.driving_motion([decode_image(row["driving"], f"row {index}: driving")], smooth=False)
            if cameras is None:
                return a.render(source, motion)[0]
            labels, _ = a.frame_conditions(source, motion)
            return a.render_conditions(source, motion.motion, labels, cameras)[0]
        if _present(row.get("motion")):
            vector = np.asarray(row["motion"], np.float32)
            return a.render(source, a.motion_from_vectors(vector[None], cameras, source=source))[0]
        raise AnimateError(f"row {index}: needs a 'driving' image or a 'motion' vector")

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        from components.animate import AnimateError

        if not isinstance(model_input, pd.DataFrame) or "source" not in model_input.columns:
            raise AnimateError("input: expected a DataFrame with a 'source' column (see the model's signature)")
        sources: dict[str, Any] = {}
        images = []
        for i, row in enumerate(model_input.to_dict(orient="records")):
            data = row.get("source")
            if not _present(data):
                raise AnimateError(f"row {i}: 'source' is empty")
            key = hashlib.sha256(bytes(data)).hexdigest()
            if key not in sources:  # one source encoding per distinct portrait
                sources[key] = self.animator.prepare_source(decode_image(data, f"row {i}: source"))
            images.append(encode_png(self._frame(sources[key], row, i)))
        return pd.DataFrame({OUTPUT_COLUMN: images})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(DataType.binary, "source"),
        ColSpec(DataType.binary, "driving", required=False),
        ColSpec(Array(DataType.double), "motion", required=False),
        ColSpec(Array(DataType.double), "camera", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.binary, OUTPUT_COLUMN)]))


def input_example(source: np.ndarray, driving: np.ndarray | None = None, motion_dim: int | None = None):
    """One request row: a source portrait and either a driving frame or a zero motion vector (the neutral
    PD-FGC embedding; one FLAME fit fewer when MLflow validates the example at logging time)."""
    import pandas as pd

    if driving is not None:
        return pd.DataFrame({"source": [encode_png(source)], "driving": [encode_png(driving)]})
    return pd.DataFrame({"source": [encode_png(source)], "motion": [[0.0] * int(motion_dim)]})


def requirement() -> str:
    """This project at the exact version that is installed (what rebuilds the serving environment)."""
    return f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}"


def log_psi_model(package_dir: str | Path, source_example: np.ndarray, name: str = "model",
                  tags: dict[str, str] | None = None):
    """Log the package as a pyfunc in the active MLflow run; returns MLflow's ``ModelInfo``.

    ``source_example``: a (H, W, 3) uint8 portrait with a face for the input example; MLflow renders it once
    while logging (its serving-input check), so a package that cannot predict is caught here.
    """
    import json

    import mlflow

    from components.animate.model_files import PACKAGE_FILE

    motion_dim = json.loads((Path(package_dir) / PACKAGE_FILE).read_text())["motion_dim"]
    return mlflow.pyfunc.log_model(
        name=name, python_model=PsiModel(), artifacts={PACKAGE_ARTIFACT: str(package_dir)},
        signature=signature(), input_example=input_example(source_example, motion_dim=motion_dim),
        pip_requirements=[requirement()], tags=tags)
