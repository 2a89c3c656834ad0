"""The base of every config section: unknown keys are errors, values are immutable, defaults are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every config section: a typo in params.yaml fails with the allowed keys, not silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
