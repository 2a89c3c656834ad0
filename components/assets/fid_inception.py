"""The FID Inception weights asset: read pytorch-fid's weights file safely and strictly into our network.

The file (``pt_inception-2015-12-05-6726825d.pth``) is user-supplied and optional; ``p4d assets check`` and
the evaluate stage both read it through here: ``torch.load(weights_only=True)`` (no code from the file runs),
then every key and shape against ``model/networks/inception.py``, so a wrong file is refused with its path
and the keys that differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.networks.inception import FIDInceptionV3

# PyTorch's BatchNorm2d saves this counter; pytorch-fid's file has none and inference never reads it, so a
# state dict saved from a torchvision-built Inception is accepted too.
_BN_COUNTER = ".num_batches_tracked"


def inception_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the FID Inception weights file (= our network's state dict; built on meta: instant)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}


def read_inception_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an FID Inception weights file, checked against ``inception_layout``.

    Raises ``OfficialImportError`` (not a state dict) or ``KeyMismatchError`` (naming missing / unexpected /
    wrong-shape keys), both P4DErrors whose message starts with the file's path.
    """
    from components.import_official.key_lists import KeyList, check_state_dict
    from components.import_official.weights_file import read_torch_state_dict

    state = {k: v for k, v in read_torch_state_dict(path).items() if not k.endswith(_BN_COUNTER)}
    check_state_dict(state, KeyList("fid_inception", inception_layout()), str(path))
    return state


def load_inception(path: str | Path, device: str = "cpu") -> FIDInceptionV3:
    """The FID Inception network with the weights of ``path`` (see ``read_inception_weights``), in eval mode."""
    net = FIDInceptionV3()
    net.load_state_dict(read_inception_weights(path), strict=True)
    return net.eval().requires_grad_(False).to(device)
