"""Stage `synthesize`: GenHead pseudo multi-view data for Ψ_3d, stored as tar shards or drawn online.

- ``run(cfg, labels, out, assets)``: render the sharded dataset (folder or s3://), resumable.
- ``ShardDataset(uri)``: read it back as a torch IterableDataset (one item per identity, K views).
- ``GenHeadSampler`` + ``OnlineSynthesizer``: the same rendering as fresh batches inside training.

The stage's settings are the ``synthesize`` section of the typed config (``components.config.synthesize``).
"""

from components.config.synthesize import SynthesizeConfig
from components.synthesize.conditions import IdentityConditions, LabelPool, draw_identity, load_label_pool
from components.synthesize.reader import ShardDataset, read_index
from components.synthesize.sampler import GenHeadSampler, OnlineSynthesizer, ViewRenders
from components.synthesize.stage import SynthesisSummary, check_assets, load_models, run

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
]
