"""Stages `train_psi3d` and `train_psi`: Ψ_3d and Ψ with DeepSpeed (``p4d train psi3d|psi``).

- ``psi3d.run(cfg, data, out, assets, ...)`` / ``psi.run(cfg, data, psi3d, out, assets, ...)``: the stages;
- ``schedule``: the paper's switches as pure functions of the images seen;
- ``engine``: process group, the generated DeepSpeed config, the G and D engines;
- ``checkpoint``: atomic, resumable checkpoints; ``loop``: the shared training loop.
"""
