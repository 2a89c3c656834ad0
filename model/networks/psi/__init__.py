"""Ψ / Ψ_3d: the one-shot animatable triplane reconstructor (one class; Ψ_3d = ``PsiConfig(static=True)``)."""

from model.networks.psi.config import MOTION_DIM, PsiConfig
from model.networks.psi.reconstructor import Psi, SourceFeatures, is_motion_parameter

__all__ = ["MOTION_DIM", "Psi", "PsiConfig", "SourceFeatures", "is_motion_parameter"]
