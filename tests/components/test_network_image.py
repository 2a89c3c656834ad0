"""Training data and inference feed Ψ the same pixels: one resize (model/face_align.py::to_network_image)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from components.animate.engine import to_network_image as inference_image
from components.train.data import ClipPairStream


@pytest.mark.parametrize("size", [64, 96])  # a downscale and an upscale of the 80² crop
def test_training_crop_and_inference_crop_become_identical_tensors(tmp_path, size):
    crop = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    Image.fromarray(crop).save(tmp_path / "crop.png")
    stream = SimpleNamespace(root=tmp_path, resolution=size)  # what _image reads of a ClipPairStream
    trained = ClipPairStream._image(stream, "crop.png")
    served = inference_image(crop[None], size, torch.device("cpu"))[0]
    assert trained.shape == (3, size, size)
    assert torch.equal(trained, served)
    # and it is the documented mapping: uint8 -> [-1, 1], channels first (no resize at the crop's own size)
    same = inference_image(crop[None], 80, torch.device("cpu"))[0]
    assert torch.equal(same, torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1)
