"""VGG16 convolutional feature stack (ImageNet ``features``), tapped after relu1_2 ... relu5_3.

Written here because no torchvision build exists for our torch. Layers keep torchvision's
``features`` indices inside five slices (``slice1.0``, ``slice1.2``, ``slice2.5`` ...), which is how
the official LPIPS wrapper names them (official models/lpips/pretrained_networks.py ``vgg16``),
so ImageNet VGG16 weights load by renaming ``features.<i>`` -> ``slice<k>.<i>``.
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision cfg "D": conv widths per stage; a 2x2 max-pool opens every stage after the first.
_STAGE_CONVS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)


def _first_index(stage: int) -> int:
    """torchvision ``features`` index of the first layer of 0-based ``stage`` (0, 4, 9, 16, 23)."""
    return sum(2 * _STAGE_CONVS[s] + (1 if s > 0 else 0) for s in range(stage))  # conv/relu pairs + pool


def slice_key(features_key: str) -> str:
    """Rename a torchvision ImageNet VGG16 key to ours: ``features.17.weight`` -> ``slice4.17.weight``."""
    parts = features_key.split(".")
    if len(parts) != 3 or parts[0] != "features" or not parts[1].isdigit():
        raise ValueError(f"not a torchvision VGG16 features key: {features_key!r}")
    _, index, leaf = parts
    stage = sum(1 for s in range(1, len(_STAGE_CONVS)) if int(index) >= _first_index(s))
    return f"slice{stage + 1}.{index}.{leaf}"


class VGG16Features(nn.Module):
    """(B, 3, H, W) -> five feature maps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS):
        super().__init__()
        if len(widths) != len(_STAGE_CONVS):
            raise ValueError(f"VGG16 has {len(_STAGE_CONVS)} stages, got widths {widths}")
        cin = 3
        for stage, (width, n_convs) in enumerate(zip(widths, _STAGE_CONVS)):
            index = _first_index(stage)
            layers = nn.Sequential()
            if stage > 0:
                layers.add_module(str(index), nn.MaxPool2d(kernel_size=2, stride=2))
                index += 1
            for _ in range(n_convs):
                layers.add_module(str(index), nn.Conv2d(cin, width, kernel_size=3, padding=1))
                layers.add_module(str(index + 1), nn.ReLU())
                cin, index = width, index + 2
            self.add_module(f"slice{stage + 1}", layers)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for stage in range(len(self.widths)):
            x = self._modules[f"slice{stage + 1}"](x)
            taps.append(x)
        return taps
