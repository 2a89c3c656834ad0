"""The ``register`` section: review policy of the `register` stage and `p4d review`.

The registered-model name lives in ``P4DConfig.tracking.registered_model`` and the gate thresholds in the
evaluate stage's ``gate.json`` (``P4DConfig.evaluate.gate``); neither is repeated here.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from components.config.base import Strict


class RegisterConfig(Strict):
    """Defaults are the cluster's: a human approves every champion; synthetic-asset models never serve."""

    auto_approve: bool = Field(
        False, description="a version that passes the gate becomes champion at once (the embedded default: "
        "on, so the main job deploys; the cluster: off, a reviewer runs `p4d review approve`)"
    )
    require_real_assets_for_champion: bool = Field(
        True, description="refuse `champion` for a version built from the synthetic asset bundle (even with --force)"
    )
    champion_alias: str = Field("champion", pattern=r"^[a-z][a-z0-9_-]*$", description="alias of the serving version")
    challenger_alias: str = Field(
        "challenger", pattern=r"^[a-z][a-z0-9_-]*$", description="alias of the newest version that passed the gate"
    )
    owner_tag: str = Field(
        "p4d_model", min_length=1, description="version tag that marks versions this project registered; versions "
        "without it (another team's, hand-made) are never aliased"
    )
    connect_attempts: int = Field(4, ge=1, description="tries to reach the tracking server before giving up")
    connect_backoff_s: float = Field(1.0, ge=0, description="first wait between tries; doubles after each")
    key_metrics: tuple[str, ...] = Field(
        ("eval/self/psnr", "eval/self/lpips", "eval/self/csim", "eval/cross/csim"),
        description="metrics shown as columns by `p4d review list`",
    )

    @model_validator(mode="after")
    def _distinct_aliases(self) -> "RegisterConfig":
        if self.champion_alias == self.challenger_alias:
            raise ValueError(f"champion_alias and challenger_alias must differ (both {self.champion_alias!r})")
        return self
