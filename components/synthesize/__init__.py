"""Stage `synthesize`: GenHead pseudo multi-view data for Ψ_3d, stored as tar shards or drawn online.

- ``run(cfg, labels, out, assets)``: render the sharded dataset (folder or s3://), resumable.
- ``ShardDataset(uri)``: read it back as a torch IterableDataset (one item per identity, K views).
- ``GenHeadSampler`` + ``OnlineSynthesizer``: the same rendering as fresh batches inside training.
"""

import importlib

# Lazy (PEP 562): components.config imports SynthesizeConfig from this package, and the stage modules
# import components.config, so nothing heavy may load when the package itself is imported.
_HOME = {
    "IdentityConditions": "conditions", "LabelPool": "conditions", "draw_identity": "conditions",
    "load_label_pool": "conditions", "SynthesizeConfig": "config", "ShardDataset": "reader",
    "read_index": "reader", "GenHeadSampler": "sampler", "OnlineSynthesizer": "sampler",
    "ViewRenders": "sampler", "SynthesisSummary": "stage", "check_assets": "stage",
    "load_models": "stage", "run": "stage", "synthesize_config": "stage",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"components.synthesize.{_HOME[name]}"), name)
    raise AttributeError(f"module 'components.synthesize' has no attribute {name!r}")


__all__ = [
    "GenHeadSampler",
    "IdentityConditions",
    "LabelPool",
    "OnlineSynthesizer",
    "ShardDataset",
    "SynthesisSummary",
    "SynthesizeConfig",
    "ViewRenders",
    "check_assets",
    "draw_identity",
    "load_label_pool",
    "load_models",
    "read_index",
    "run",
    "synthesize_config",
]
