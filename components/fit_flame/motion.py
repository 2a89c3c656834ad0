"""PD-FGC motion embeddings of aligned crops (official data_preprocess/extract_pdfgc.py).

The encoder sees a crop defined by the two eye centres and the inner-mouth centre of the 68-point
landmarks (``model.face_align.crop_for_motion``); our 68 points come from the MediaPipe mesh.
Cutting the motion crop is per item (CPU workers); encoding is batched (GPU).
"""

from __future__ import annotations

import numpy as np
import torch

from model.face_mesh import MESH_TO_IBUG68
from model.face_align import crop_for_motion
from model.networks.pdfgc import PDFGCMotionEncoder


@torch.no_grad()
def motion_crop(crop: np.ndarray, mesh_points: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 aligned crop + (478, 2) crop-px landmarks -> (size, size, 3) uint8 encoder input."""
    image = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    ibug68 = torch.from_numpy(mesh_points[MESH_TO_IBUG68]).float()[None]
    warped = crop_for_motion(image, ibug68, size=size)[0]  # (3, size, size) in [-1, 1]
    return ((warped.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def encode_motion(encoder: PDFGCMotionEncoder, crops: np.ndarray, device: str) -> np.ndarray:
    """(B, s, s, 3) uint8 motion crops -> (B, motion_dim) float32."""
    images = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return encoder.to(device)(images).float().cpu().numpy()
