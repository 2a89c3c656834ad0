"""The one rule about synthetic assets: a synthetic bundle (``p4d assets synth``: random weights in the real
file formats, ``bundle.json`` says ``synthetic``) is for the ``tiny`` profile only.

Every stage that loads assets calls :func:`refuse_synthetic_outside_tiny` before any work, so the refusal reads
the same everywhere: ``fit-flame`` (its labels feed paper training: a fit against a random FLAME / PD-FGC
would poison every later stage, so it fails at the first one), ``synthesize``, ``train psi3d`` / ``train psi``
and ``evaluate`` (its metrics gate the registry).

Not here, on purpose: ``p4d animate`` and the served model (MLflow pyfunc, Triton) load whatever Ψ and assets
they are given, whatever the profile: paper-size speed benchmarks run on synthetic weights (the timings do not
depend on the values), and a model built from synthetic assets is marked ``synthetic_assets`` in its package
and in the registry, which never makes such a version ``champion`` (``register.require_real_assets_for_champion``),
so it cannot reach the cluster's endpoint.
"""

from __future__ import annotations

from pathlib import Path

from components.assets.check import AssetError, BundleInfo, read_bundle_info
from components.assets.manifest import ASSETS

SYNTHETIC_PROFILE = "tiny"  # the only profile whose networks are stand-in sizes anyway


class SyntheticAssetsError(AssetError):
    """A synthetic asset bundle was given to a run whose profile needs the real files."""


def refuse_synthetic_outside_tiny(asset_dir: str | Path, profile: str) -> BundleInfo:
    """The folder's bundle info; a synthetic bundle with any profile but tiny is refused with one message."""
    asset_dir = Path(asset_dir)
    bundle = read_bundle_info(asset_dir)
    if bundle.synthetic and profile != SYNTHETIC_PROFILE:
        real = ", ".join(spec.path for spec in ASSETS if spec.required)
        raise SyntheticAssetsError(
            f"{asset_dir} is a synthetic bundle (random weights, `p4d assets synth`) but the profile is {profile!r}; "
            f"synthetic assets are for the {SYNTHETIC_PROFILE} profile only: place the real files there ({real}; "
            f"`p4d assets list` says where to get them) or use --profile {SYNTHETIC_PROFILE}"
        )
    return bundle
