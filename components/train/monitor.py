"""Prometheus metrics of a running trainer (rank 0): served over HTTP and pushed to a Pushgateway.

Built on ``components.io.metrics.StageMetrics`` (one registry per stage run, its push and its HTTP
server), with the trainer's own series: step, images seen, images/s, each loss term, learning
rates, accelerator memory and the age of the last checkpoint.
"""

from __future__ import annotations

import time

from prometheus_client import Gauge

from components.io.metrics import MetricsError, StageMetrics, serve


class TrainingMonitor:
    def __init__(self, stage: str, port: int = 0, pushgateway_url: str | None = None, serve_http: bool = True) -> None:
        self.stage_metrics = StageMetrics(stage)
        self.pushgateway_url = pushgateway_url
        reg, labels = self.stage_metrics.registry, ["stage"]
        self.stage = stage
        self.step = Gauge("p4d_train_step", "iterations done", labels, registry=reg)
        self.images = Gauge("p4d_train_images_seen", "training images seen", labels, registry=reg)
        self.images_per_second = Gauge("p4d_train_images_per_second", "global training throughput", labels,
                                       registry=reg)
        self.loss = Gauge("p4d_train_loss", "loss terms (mean over ranks)", [*labels, "term"], registry=reg)
        self.lr = Gauge("p4d_train_learning_rate", "learning rate per parameter group", [*labels, "group"],
                        registry=reg)
        self.memory = Gauge("p4d_train_accelerator_memory_bytes", "peak accelerator memory of rank 0", labels,
                            registry=reg)
        self.checkpoint_age = Gauge("p4d_train_checkpoint_age_seconds", "seconds since the last checkpoint", labels,
                                    registry=reg)
        self._last_checkpoint = time.time()
        self.checkpoint_age.labels(stage).set_function(lambda: time.time() - self._last_checkpoint)
        self.port = serve(reg, port) if serve_http else None

    def update(self, step: int, images_seen: int, images_per_second: float, losses: dict[str, float],
               learning_rates: dict[str, float], memory_bytes: int) -> None:
        s = self.stage
        self.step.labels(s).set(step)
        self.images.labels(s).set(images_seen)
        self.images_per_second.labels(s).set(images_per_second)
        for term, value in losses.items():
            self.loss.labels(s, term).set(value)
        for group, value in learning_rates.items():
            self.lr.labels(s, group).set(value)
        self.memory.labels(s).set(memory_bytes)

    def checkpointed(self) -> None:
        self._last_checkpoint = time.time()

    def push(self) -> str | None:
        """Push to the Pushgateway if one is configured; a failed push is reported, never fatal to training."""
        try:
            self.stage_metrics.push(self.pushgateway_url)
        except MetricsError as err:
            return str(err)
        return None
