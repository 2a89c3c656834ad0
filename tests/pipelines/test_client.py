"""Submit / schedule: bad cron and unreachable endpoints fail first, with what and where."""

from __future__ import annotations

import socket

import pytest

from pipelines.cli import main
from pipelines.kubeflow.client import CronError, EndpointError, check_reachable, kfp_cron


@pytest.mark.parametrize("expr, six", [
    ("0 3 * * 0", "0 0 3 * * 0"),
    ("*/15 * * * *", "0 */15 * * * *"),
    ("0 0 3 ? * SUN", "0 0 3 ? * SUN"),
    ("30 2 1-7 JAN,JUL MON-FRI", "0 30 2 1-7 JAN,JUL MON-FRI"),
    ("0 0 */6 * * *", "0 0 */6 * * *"),
])
def test_valid_cron_becomes_six_fields(expr, six):
    assert kfp_cron(expr) == six


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", "has 4 fields"),
    ("0 0 0 3 * * 0", "has 7 fields"),
    ("61 3 * * 0", "minute field: '61'"),
    ("0 25 * * 0", "hour field: '25'"),
    ("0 3 0 * *", "day-of-month field: '0'"),
    ("0 3 * 13 *", "month field: '13'"),
    ("0 3 * * 8", "day-of-week field: '8'"),
    ("0 3 * * FUNDAY", "day-of-week field: 'FUNDAY'"),
    ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "step 0"),
    ("? * * * *", "'?' is only allowed"),
    ("0 3 * * 1;2", "cannot parse"),
])
def test_bad_cron_names_the_field(expr, message):
    with pytest.raises(CronError, match=message.replace("*", r"\*").replace("?", r"\?")):
        kfp_cron(expr)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: connections are refused


def test_unreachable_host_names_the_url():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EndpointError, match=url.replace(".", r"\.")):
        check_reachable(url, timeout_s=2)
    with pytest.raises(EndpointError, match="expected http"):
        check_reachable("localhost:8080")


def test_submit_fails_before_any_work(monkeypatch, capsys):
    import pipelines.pipeline_cli as cli

    def compile_called(*a, **k):
        raise AssertionError("compiled before checking the endpoint")

    monkeypatch.setattr(cli, "compile_to", compile_called)
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["pipeline", "submit", "--host", url, "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and url in err


def test_schedule_checks_cron_then_host(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["pipeline", "schedule", "--host", url, "--cron", "0 3 * * 9"]) == 2
    assert "day-of-week field: '9'" in capsys.readouterr().err
    assert main(["pipeline", "schedule", "--host", url, "--cron", "0 3 * * 0"]) == 2
    assert url in capsys.readouterr().err


def test_submit_validates_the_params_file(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: huge\n")
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--params", str(bad)]) == 2
    assert "profile: got 'huge'" in capsys.readouterr().err
