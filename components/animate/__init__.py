"""The inference engine of a trained Ψ (``Animator``) and `p4d animate`; see engine.py."""

from components.animate.engine import (
    CAMERA_MODES,
    NECK_MODES,
    AnimateError,
    Animator,
    Motion,
    NoFaceError,
    Source,
)
from components.animate.model_files import ModelLoadError

__all__ = ["Animator", "Source", "Motion", "AnimateError", "NoFaceError", "ModelLoadError", "CAMERA_MODES",
           "NECK_MODES"]
