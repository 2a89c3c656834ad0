"""The ``networks`` section: the architecture of every network (defaults: the official sizes, so state
dicts load 1:1). The classes themselves live in ``model/``; this section ties them together."""

from __future__ import annotations

from pydantic import model_validator

from components.config.base import Strict
from model.deformation import DeformationConfig
from model.networks.arcface import ArcFaceConfig
from model.networks.discriminator import DiscriminatorConfig
from model.networks.genhead import GenHeadConfig
from model.networks.lpips import LPIPSConfig
from model.networks.pdfgc import PDFGCConfig
from model.networks.psi.config import PsiConfig


class NetworksSection(Strict):
    """Architecture of every network; defaults are the official sizes (state dicts load 1:1)."""

    genhead: GenHeadConfig = GenHeadConfig()
    psi3d: PsiConfig = PsiConfig.psi3d()
    psi: PsiConfig = PsiConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    pdfgc: PDFGCConfig = PDFGCConfig()
    arcface: ArcFaceConfig = ArcFaceConfig()
    lpips: LPIPSConfig = LPIPSConfig()
    deformation: DeformationConfig = DeformationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "NetworksSection":
        if not self.psi3d.static or self.psi.static:
            raise ValueError("networks.psi3d must be static (Ψ_3d) and networks.psi must not be")
        sizes = {
            "genhead.img_resolution": self.genhead.img_resolution,
            "psi3d.img_resolution": self.psi3d.img_resolution,
            "psi.img_resolution": self.psi.img_resolution,
            "discriminator.img_resolution": self.discriminator.img_resolution,
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"image resolutions must agree across networks, got {sizes}")
        for name in ("psi3d", "psi"):
            if getattr(self, name).motion_dim != self.pdfgc.motion_dim:
                raise ValueError(
                    f"networks.{name}.motion_dim ({getattr(self, name).motion_dim}) must equal the PD-FGC "
                    f"embedding width networks.pdfgc.motion_dim ({self.pdfgc.motion_dim})"
                )
        return self

    @property
    def image_resolution(self) -> int:
        return self.psi.img_resolution
