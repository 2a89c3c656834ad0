"""The FID Inception-v3: 2048-d pool3 features of images, the network every published FID number uses.

Why our own network: every maintained FID package (torch-fidelity, pytorch-fid, clean-fid, piq) builds its
Inception with torchvision, which does not install here. This module is the same computation, written from
the architecture facts of pytorch-fid (github mseitzer/pytorch-fid ``src/pytorch_fid/inception.py``:
``fid_inception_v3`` and its ``FIDInceptionA/C/E_1/E_2`` blocks) and torchvision's Inception3 (github
pytorch/vision ``torchvision/models/inception.py``: layer sizes, ``BasicConv2d`` = bias-free conv + BN with
eps 1e-3 + ReLU). It reads the standard FID weights file, pytorch-fid's release
``pt_inception-2015-12-05-6726825d.pth`` (the TF 2015-12-05 Inception graph ported to PyTorch; torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` carries the same SHA-256 prefix and loads into the same keys).

The FID variant differs from torchvision's ImageNet Inception in three ways (pytorch-fid's patches):
- the average pools inside Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1) do not count the zero padding
  (``count_include_pad=False``, TensorFlow's pooling);
- Mixed_7c (E_2) pools its pool branch with a 3x3 MAX pool instead of an average;
- the classifier has 1008 classes (TF's graph), not 1000, and there is no auxiliary classifier.

Input (pytorch-fid ``InceptionV3`` with ``resize_input`` and ``normalize_input``): RGB in [0, 1], any size,
resized bilinearly (``align_corners=False``) to 299², then scaled to [-1, 1]. Output: the global average
of Mixed_7c, (N, 2048).

State-dict keys equal the weights file's: 94 conv blocks x (``conv.weight`` + BN ``weight``, ``bias``,
``running_mean``, ``running_var``) + ``fc.weight`` (1008, 2048) + ``fc.bias`` = 472 tensors (torch-fidelity's
``utils/util_convert_inception_weights.py`` writes exactly these from the TF graph). The batch norm is
frozen (a metric network is never trained), so it has no ``num_batches_tracked`` counter the file lacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FID_INPUT_SIZE = 299  # Inception-v3's input side (pytorch-fid resizes every image to it)
FID_FEATURE_DIM = 2048  # pool3: the global average of Mixed_7c
FID_CLASSES = 1008  # the TF 2015-12-05 graph's softmax (1000 ImageNet classes + 8 unused)
_BN_EPS = 1e-3  # torchvision BasicConv2d / TF Inception batch-norm epsilon


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms (eval-mode BN), keys as ``nn.BatchNorm2d``'s."""

    def __init__(self, channels: int, eps: float = _BN_EPS):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


class ConvBN(nn.Module):
    """Bias-free conv -> frozen BN -> ReLU (torchvision's ``BasicConv2d``; keys ``conv.*``, ``bn.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average that ignores the zero padding (TensorFlow's pooling; pytorch-fid's patch)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b-d (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | TF avg pool-1x1 -> 224 + ``pool_features`` channels."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (35 -> 17): stride-2 3x3 | 1x1-3x3-stride-2 3x3 | stride-2 max pool (unchanged in the FID net)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b-e (17x17): factorised 7x7 convolutions (1x7 / 7x1) with ``c7`` inner channels -> 768 channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}  # 1x7, 7x1
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):  # fmt: skip
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (17 -> 8): 1x1-stride-2 3x3 | 1x1-1x7-7x1-stride-2 3x3 | stride-2 max pool (unchanged)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b / 7c (8x8) -> 2048 channels. ``max_pool``: Mixed_7c's pool branch is a 3x3 max pool in the FID
    graph (pytorch-fid ``FIDInceptionE_2``; likely a quirk of that TF graph), Mixed_7b's a TF average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1], (N, 3, H, W) -> (N, 2048) pool3 features. Attribute names are the weights file's keys."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        # The classifier is not used for FID; it is part of the file, so it is loaded (and checked) with it.
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_CLASSES)
        self._init_random()

    def _init_random(self) -> None:
        """Variance-preserving random weights (He, fan-in) so an unloaded network still gives spread-out
        features (tests, synthetic files); real use always loads the weights file over them."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 64 x 147²
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 64 x 73²
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 192 x 71²
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 192 x 35²
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
            x = block(x)  # ... 2048 x 8²
        return x.mean(dim=(2, 3))
