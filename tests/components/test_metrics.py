"""components/io/metrics.py: stage metrics served on 127.0.0.1 and pushed to a Pushgateway."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from components.io.metrics import MetricsError, StageMetrics, serve


def test_endpoint_on_loopback_serves_the_stage_metrics(monkeypatch):
    monkeypatch.delenv("P4D_METRICS_ADDR", raising=False)
    m = StageMetrics("synthesize")
    m.record(12.5, ok=30, failed=2)
    port = serve(m.registry)  # port 0: any free one
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'p4d_stage_duration_seconds{stage="synthesize"} 12.5' in text
    assert 'p4d_stage_items_total{stage="synthesize",status="ok"} 30.0' in text
    assert 'p4d_stage_items_total{stage="synthesize",status="failed"} 2.0' in text
    assert 'p4d_stage_runs_total{outcome="success",stage="synthesize"} 1.0' in text
    assert 'p4d_stage_last_success_timestamp_seconds{stage="synthesize"}' in text


def test_failed_run_has_no_success_time():
    m = StageMetrics("train_psi")
    m.record(3.0, succeeded=False)
    names = {s.name: s for metric in m.registry.collect() for s in metric.samples}
    assert names["p4d_stage_runs_total"].labels == {"stage": "train_psi", "outcome": "failure"}
    assert "p4d_stage_last_success_timestamp_seconds" not in names


def test_push_only_when_configured_and_names_an_unreachable_gateway(monkeypatch):
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    m = StageMetrics("fit_flame")
    m.record(1.0, ok=1)
    assert m.push() is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUSHGATEWAY_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(MetricsError, match=f"Pushgateway http://127.0.0.1:{port}"):
        m.push()
