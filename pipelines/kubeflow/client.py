"""Submit and schedule the compiled pipeline on a Kubeflow Pipelines endpoint.

Everything that can be checked before talking to the cluster is checked first (the cron expression,
the params file, the endpoint answering at all), so a typo fails in a second with a message saying
what and where, not after a compile and a timeout.
"""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from components.errors import P4DError

# KFP schedules with a 6-field cron (seconds first, robfig/cron): sec min hour day-of-month month day-of-week.
_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
_ITEM = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(-[A-Za-z0-9]+)?)(/(?P<step>[0-9]+))?$")


class CronError(P4DError, ValueError):
    """The cron expression is malformed; the message names the field and the allowed values."""


class EndpointError(P4DError, ConnectionError):
    """The Kubeflow Pipelines endpoint cannot be reached or refused the request."""


def _value(text: str, field: str, lo: int, hi: int, names: dict[str, int]) -> int:
    value = names.get(text.upper()) if not text.isdigit() else int(text)
    if value is None or not lo <= value <= hi:
        allowed = f"{lo}-{hi}" + (f" or {', '.join(names)}" if names else "")
        raise CronError(f"cron {field} field: {text!r} is not allowed (use {allowed})")
    return value


def _check_field(text: str, field: str, lo: int, hi: int, names: dict[str, int]) -> None:
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            raise CronError(f"cron {field} field: cannot parse {item!r} (use *, N, N-M, */S, N-M/S or lists)")
        rng, step = m.group("range"), m.group("step")
        if rng == "?" and field not in ("day-of-month", "day-of-week"):
            raise CronError(f"cron {field} field: '?' is only allowed for day-of-month and day-of-week")
        if step is not None and int(step) == 0:
            raise CronError(f"cron {field} field: step 0 in {item!r}")
        if rng in ("*", "?"):
            continue
        bounds = [_value(part, field, lo, hi, names) for part in rng.split("-")]
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise CronError(f"cron {field} field: range {rng!r} runs backwards")


def kfp_cron(expression: str) -> str:
    """Validate a 5-field (crontab) or 6-field (KFP, seconds first) expression; return the 6-field form."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise CronError(
            f"cron expression {expression!r} has {len(fields)} fields; use 5 (min hour dom month dow, e.g. "
            f"'0 3 * * 0') or 6 with seconds first as KFP expects (e.g. '0 0 3 * * 0')"
        )
    for text, (field, lo, hi, names) in zip(fields, _FIELDS):
        _check_field(text, field, lo, hi, names)
    return " ".join(fields)


def check_reachable(host: str, timeout_s: float = 5.0) -> None:
    """Any HTTP answer from the KFP API (even 401/404) means reachable; no answer -> EndpointError."""
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise EndpointError(f"KFP host {host!r}: expected http(s)://HOST[:PORT][/PATH]")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # the server answered (auth proxy, older API): reachable
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise EndpointError(
            f"Kubeflow Pipelines endpoint {host} is not reachable ({reason}); check --host, the port-forward "
            f"(kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80) or your network"
        ) from None


def _client(host: str):
    import kfp

    check_reachable(host)
    return kfp.Client(host=host)


def submit(
    host: str, package: Path, arguments: dict, experiment: str, run_name: str, service_account: str | None
) -> str:
    client = _client(host)
    try:
        run = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            service_account=service_account,
        )
    except Exception as err:  # the KFP SDK raises ApiException / ValueError / urllib3 errors
        raise EndpointError(f"KFP {host}: submitting {package} failed ({err})") from None
    return run.run_id


def schedule(
    host: str, package: Path, arguments: dict, experiment: str, job_name: str, cron: str,
    service_account: str | None,
) -> str:
    cron6 = kfp_cron(cron)  # before any network traffic
    client = _client(host)
    try:
        exp = client.create_experiment(name=experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron6,
            pipeline_package_path=str(package), params=arguments, max_concurrency=1, no_catchup=True,
            service_account=service_account,
        )
    except Exception as err:
        raise EndpointError(f"KFP {host}: scheduling {package} failed ({err})") from None
    return job.recurring_run_id
