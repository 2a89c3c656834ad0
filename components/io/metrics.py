"""Prometheus metrics of a stage run: timings, item counts, failures.

Batch steps (a pipeline stage) push once at the end to a Pushgateway when one is configured
(``PUSHGATEWAY_URL`` env, else ``MetricsSection.pushgateway_url``); long-running processes (trainers)
can serve the same registry over HTTP for Prometheus to scrape. The HTTP endpoint binds to
127.0.0.1 unless ``P4D_METRICS_ADDR`` says otherwise (pods set 0.0.0.0 so Prometheus can reach them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

from components.errors import P4DError

PUSH_JOB = "p4d_pipeline"


class MetricsError(P4DError):
    """The Pushgateway could not be reached; the message names its URL."""


@dataclass
class StageMetrics:
    """One registry per stage run, so a push carries exactly this stage's series."""

    stage: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        labels = ["stage"]
        self.duration = Gauge("p4d_stage_duration_seconds", "wall time of the last run", labels, registry=self.registry)
        self.items = Counter("p4d_stage_items", "items processed, by outcome", [*labels, "status"], registry=self.registry)
        self.runs = Counter("p4d_stage_runs", "stage runs, by outcome", [*labels, "outcome"], registry=self.registry)
        self.last_success = Gauge(
            "p4d_stage_last_success_timestamp_seconds", "unix time of the last successful run", labels,
            registry=self.registry,
        )

    def record(self, seconds: float, ok: int = 0, failed: int = 0, succeeded: bool = True) -> None:
        self.duration.labels(self.stage).set(seconds)
        self.items.labels(self.stage, "ok").inc(ok)
        self.items.labels(self.stage, "failed").inc(failed)
        self.runs.labels(self.stage, "success" if succeeded else "failure").inc()
        if succeeded:
            self.last_success.labels(self.stage).set_to_current_time()

    def push(self, gateway_url: str | None = None, grouping: dict[str, str] | None = None) -> bool:
        """Push to the Pushgateway (``PUSHGATEWAY_URL`` wins over the argument). False when none is set."""
        url = os.environ.get("PUSHGATEWAY_URL") or gateway_url
        if not url:
            return False
        try:
            push_to_gateway(url, job=PUSH_JOB, registry=self.registry, grouping_key={"stage": self.stage, **(grouping or {})}, timeout=10)
        except OSError as err:
            raise MetricsError(f"Pushgateway {url}: push failed ({err}); unset PUSHGATEWAY_URL to skip pushing") from None
        return True


def serve(registry: CollectorRegistry, port: int = 0, addr: str | None = None) -> int:
    """Serve ``registry`` at http://ADDR:PORT/metrics in a daemon thread; returns the bound port."""
    addr = addr or os.environ.get("P4D_METRICS_ADDR", "127.0.0.1")
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server.server_port
