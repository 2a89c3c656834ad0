"""The ``storage``, ``tracking`` and ``metrics`` sections: where data, runs and metrics go
(read by ``components/io``). Credentials never live here: boto3 and MLflow read them from the environment."""

from __future__ import annotations

from pydantic import Field

from components.config.base import Strict


class StorageSection(Strict):
    """Object store. Credentials never live here: boto3 reads them from the environment."""

    bucket: str = Field("p4d", min_length=3, description="S3 bucket for data, artifacts and models")
    prefix: str = Field("", description="key prefix inside the bucket")
    endpoint_url_env: str = Field("AWS_ENDPOINT_URL", description="env var holding the S3 endpoint (MinIO/moto)")


class TrackingSection(Strict):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (env MLFLOW_TRACKING_URI wins)")
    experiment: str = Field("portrait4d-v2", min_length=1)
    registered_model: str = Field("portrait4d-v2", min_length=1)


class MetricsSection(Strict):
    port: int = Field(0, ge=0, le=65535, description="Prometheus HTTP port on rank 0 (0 = pick a free one)")
    pushgateway_url: str | None = Field(None, description="Pushgateway for batch steps (env PUSHGATEWAY_URL wins)")
