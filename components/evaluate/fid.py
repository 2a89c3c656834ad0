"""FID of the self-reenactment renders against their targets, with user-supplied Inception weights.

Decision: our own FID Inception network (model/networks/inception.py) reading the standard FID weights file,
and the Fréchet distance computed as pytorch-fid computes it (``calculate_frechet_distance`` in
github mseitzer/pytorch-fid ``src/pytorch_fid/fid_score.py``: float64 mean and covariance, ``scipy.linalg.sqrtm``
of the covariance product, a 1e-6 diagonal offset when that product is singular, a refusal when the
square root's diagonal has an imaginary part above 1e-3). Why not a package: torchmetrics' FID needs
torch-fidelity, and it, pytorch-fid, clean-fid and piq all build their Inception with torchvision, which
does not install here.

The weights file is read and checked by components/assets/fid_inception.py (``load_inception``).

Note: FID over a few hundred renders is strongly biased upwards (the covariance of 2048-d features is
estimated from fewer samples than dimensions); compare it between models on the same test set only.
"""

from __future__ import annotations

import numpy as np
import torch

from components.errors import P4DError
from components.evaluate.metrics import _chunks, _float_nchw
from model.networks.inception import FID_FEATURE_DIM, FIDInceptionV3

SINGULAR_OFFSET = 1e-6  # pytorch-fid's eps added to both covariances' diagonals when their product is singular
IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid's bound on the imaginary part of sqrtm's diagonal


class FIDError(P4DError):
    """The Fréchet distance cannot be computed from these features (the message says why)."""


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: np.ndarray, device: str = "cpu", batch: int = 32) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, 2048) float64 pool3 features, ``batch`` images per forward pass."""
    # the same batching and uint8 -> NCHW conversion as the other evaluate metrics; the network takes [0, 1]
    out = [net(_float_nchw(images[s], device) / 255).double().cpu().numpy() for s in _chunks(len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, FID_FEATURE_DIM))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64 (pytorch-fid's np.cov)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise FIDError(f"FID needs >= 2 feature vectors per set, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)): the Fréchet distance of two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise FIDError(f"statistics differ in size: mean {mu1.shape} vs {mu2.shape}, covariance "
                       f"{sigma1.shape} vs {sigma2.shape}")  # fmt: skip
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # a singular product: shift both covariances off singularity
        offset = np.eye(len(sigma1)) * SINGULAR_OFFSET
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # round-off leaves a small imaginary part; a large one means no real root
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise FIDError(f"the covariance product has no real square root (imaginary part up to "
                           f"{np.abs(covmean.imag).max():.3g})")  # fmt: skip
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(net: FIDInceptionV3, real: np.ndarray, fake: np.ndarray, device: str = "cpu", batch: int = 32) -> float:
    """FID between two sets of (N, H, W, 3) uint8 images (each set >= 2 images)."""
    stats = [feature_statistics(inception_features(net, images, device, batch)) for images in (real, fake)]
    return frechet_distance(*stats[0], *stats[1])
