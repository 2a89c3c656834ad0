"""The ``deploy`` section: settings of the `deploy` stage.

What the Triton model repository looks like (model names, instance kind, batching, session timeout),
what the server accepts (image size limits), how the server is started (ports, readiness) and how a
rollout is judged (smoke tolerance). The image size Ψ renders and the motion width are NOT here:
they are facts of the model package and are read from it at export time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import Strict


class DeployConfig(Strict):
    """Defaults: the cluster (``paper``): one GPU instance per model, Triton's standard ports."""

    model_name: str = Field("portrait4d", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="stateless Triton model: SOURCE + DRIVING|MOTION -> IMAGE")
    session_model_name: str = Field(
        "portrait4d_session", pattern=r"^[A-Za-z0-9_.-]+$",
        description="video-session Triton model (sequence batcher): the source is encoded once per session",
    )
    instance_kind: Literal["gpu", "cpu"] = Field("gpu", description="instance_group kind (KIND_GPU / KIND_CPU)")
    instance_count: int = Field(1, gt=0, description="instances per model (per GPU for KIND_GPU); each is a process")
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="Animator dtype inside the server (None: the Animator's default for the device)"
    )
    max_batch_size: int = Field(8, gt=0, description="Triton max_batch_size (requests queued per execute)")
    max_queue_delay_us: int = Field(2000, ge=0, description="dynamic batcher: how long a request may wait for others")
    max_sessions: int = Field(
        64, gt=0, description="sequence batcher (oldest strategy): sessions that may be in flight per instance"
    )
    session_idle_timeout_s: float = Field(
        60.0, gt=0, description="a session with no request for this long is dropped (its source cache freed)"
    )
    source_cache_size: int = Field(
        16, ge=0, description="stateless model: encodings of the last N source photos kept per instance (0 = off)"
    )
    max_image_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest encoded image a request may carry")
    max_image_side: int = Field(4096, gt=0, description="largest width/height of a request image, in pixels")
    versions_served: int = Field(2, gt=0, description="version_policy latest{num_versions}: the previous stays live")
    http_port: int = Field(8000, gt=0, le=65535)
    grpc_port: int = Field(8001, gt=0, le=65535)
    metrics_port: int = Field(8002, gt=0, le=65535)
    ready_timeout_s: float = Field(600.0, gt=0, description="how long a server start / model load may take")
    smoke_tolerance: int = Field(
        1, ge=0, le=255, description="a rollout's smoke frame may differ from the Animator's by this much per uint8"
    )
    local_smoke: bool = Field(
        False,
        description="the `deploy` stage without --triton starts a local server on the exported repository, "
        "smoke-tests it and stops it (off on the cluster profile: there the stage rolls the real endpoint)",
    )

    @model_validator(mode="after")
    def _distinct(self) -> "DeployConfig":
        if self.model_name == self.session_model_name:
            raise ValueError(f"model_name and session_model_name must differ, both are {self.model_name!r}")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3:
            raise ValueError(f"http_port, grpc_port and metrics_port must differ, got {ports}")
        return self
