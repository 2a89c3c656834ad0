"""Trainer metrics: the Prometheus endpoint rank 0 serves, and the push to a Pushgateway."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

from components.train.monitor import TrainingMonitor


def test_endpoint_serves_step_throughput_losses_and_checkpoint_age(monkeypatch):
    monkeypatch.delenv("P4D_METRICS_ADDR", raising=False)
    monitor = TrainingMonitor("train_psi3d", port=0)
    monitor.update(step=7, images_seen=224, images_per_second=12.5, losses={"G/l1": 0.25, "D/loss": 1.3},
                   learning_rates={"base": 1e-4, "motion": 2.5e-4}, memory_bytes=2048)
    monitor._last_checkpoint = time.time() - 30
    text = urllib.request.urlopen(f"http://127.0.0.1:{monitor.port}/metrics", timeout=5).read().decode()
    assert 'p4d_train_step{stage="train_psi3d"} 7.0' in text
    assert 'p4d_train_images_seen{stage="train_psi3d"} 224.0' in text
    assert 'p4d_train_images_per_second{stage="train_psi3d"} 12.5' in text
    assert 'p4d_train_loss{stage="train_psi3d",term="G/l1"} 0.25' in text
    assert 'p4d_train_learning_rate{group="motion",stage="train_psi3d"} 0.00025' in text
    assert 'p4d_train_accelerator_memory_bytes{stage="train_psi3d"} 2048.0' in text
    age = float(next(line.split()[-1] for line in text.splitlines()
                     if line.startswith("p4d_train_checkpoint_age_seconds")))
    assert 29 <= age < 120
    monitor.checkpointed()
    text = urllib.request.urlopen(f"http://127.0.0.1:{monitor.port}/metrics", timeout=5).read().decode()
    age = float(next(line.split()[-1] for line in text.splitlines()
                     if line.startswith("p4d_train_checkpoint_age_seconds")))
    assert age < 5


class _Gateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str]] = []

    def do_PUT(self):  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        _Gateway.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_push_goes_to_the_gateway_and_an_unreachable_one_is_reported_not_raised(monkeypatch):
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monitor = TrainingMonitor("train_psi", pushgateway_url=f"http://127.0.0.1:{server.server_port}",
                                  serve_http=False)
        monitor.update(3, 96, 4.0, {"G/total": 2.5}, {"base": 1e-4}, 0)
        assert monitor.push() is None
        path, body = _Gateway.received[-1]
        assert path.startswith("/metrics/job/p4d_pipeline") and "stage/train_psi" in path
        assert 'p4d_train_loss{stage="train_psi",term="G/total"} 2.5' in body
    finally:
        server.shutdown()
        server.server_close()
    unreachable = TrainingMonitor("train_psi", pushgateway_url=f"http://127.0.0.1:{server.server_port}",
                                  serve_http=False)
    assert "push failed" in unreachable.push()
