"""Test helper: an FID Inception weights file in the real file's format, with seeded random weights.

The real file (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, ~95 MB) is user-supplied and never
downloaded; tests write this stand-in instead: the same 472 keys and shapes, BN statistics that are not the
identity (so a loader that skipped them would change the features).
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.networks.inception import FIDInceptionV3


def write_seeded_inception(path: Path, seed: int = 0, legacy_format: bool = False,
                           bn_counters: bool = False) -> FIDInceptionV3:  # fmt: skip
    """Write the weights of a seeded FIDInceptionV3 to ``path`` and return that network (eval mode).

    ``legacy_format``: torch's pre-1.6 pickle format (what a file saved in 2018 may be); ``bn_counters``: add the
    ``num_batches_tracked`` entries a state dict saved from ``nn.BatchNorm2d`` modules carries.
    """
    torch.manual_seed(seed)
    net = FIDInceptionV3().eval()
    g = torch.Generator().manual_seed(seed)
    for name, buf in net.named_buffers():
        if name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith("running_mean") or name.endswith("bn.bias"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    state = dict(net.state_dict())
    if bn_counters:
        for key in [k for k in state if k.endswith(".bn.running_var")]:
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_format)
    return net
