"""The MLflow model registry as reviewers use it: aliases and tags (MLflow 3), never the deprecated stages.

State lives only in the registry, so the MLflow UI and ``p4d review`` are interchangeable:

- alias ``champion`` = the serving version, alias ``challenger`` = the newest version that passed the gate;
- version tags: ``p4d_model`` (registered by this project), ``gate`` = passed|failed, ``gate_failures``,
  ``approval`` = pending|approved|rejected|rolled_back, ``approved_by`` / ``approved_at`` /
  ``approval_note`` / ``approval_forced``, ``previous_champion`` (the champion this version replaced);
- an audit trail: one tag per action, ``audit.<UTC time>.<random>`` = JSON {action, by, at, note, ...};
  two reviewers acting at once both leave their tag, and the alias holds whichever write came last.

Versions without the ``p4d_model`` tag (another team's, hand-made) are listed but never aliased.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.errors import P4DError
from components.io.tracking import TrackingError
from components.config.register import RegisterConfig

AUDIT_PREFIX = "audit."
APPROVED, REJECTED, PENDING, ROLLED_BACK = "approved", "rejected", "pending", "rolled_back"


class RegistryError(P4DError):
    """A review action cannot be done (unknown version, foreign version, policy); the message says why."""


def version_of(mv) -> str:
    """A version number as text (the REST store answers strings, the sqlite store ints)."""
    return str(mv.version)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def reviewer() -> str:
    """Who acts: ``P4D_REVIEWER`` (CI, service accounts), else the OS user."""
    if os.environ.get("P4D_REVIEWER"):
        return os.environ["P4D_REVIEWER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _probe(uri: str) -> None:
    """One reachability check: the server's /health for http(s); a local store only needs its folder."""
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:
            if resp.status != 200:
                raise OSError(f"/health answered HTTP {resp.status}")
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):]))
        if not os.path.isdir(folder):
            raise OSError(f"folder {folder} of the sqlite store does not exist")


def connect(uri: str, policy: RegisterConfig, sleep: Callable[[float], None] = time.sleep):
    """An ``MlflowClient`` on ``uri`` once the server answers; retries with exponential backoff first, so
    an unreachable server fails here, before anything is created."""
    from mlflow.tracking import MlflowClient

    wait, last = policy.connect_backoff_s, ""
    for attempt in range(1, policy.connect_attempts + 1):
        try:
            _probe(uri)
            return MlflowClient(tracking_uri=uri, registry_uri=uri)
        except (OSError, urllib.error.URLError) as err:
            last = str(getattr(err, "reason", err))
            if attempt < policy.connect_attempts:
                sleep(wait)
                wait *= 2
    raise TrackingError(f"MLflow tracking server {uri} unreachable after {policy.connect_attempts} tries ({last}); "
                        "start it or point --tracking-uri / MLFLOW_TRACKING_URI at a running one. Nothing was "
                        "registered")


@dataclass(frozen=True)
class AuditEntry:
    key: str
    action: str
    by: str
    at: str
    details: dict[str, Any]

    def line(self) -> str:
        rest = ", ".join(f"{k}={v}" for k, v in self.details.items() if v not in (None, ""))
        return f"{self.at}  {self.action:<10} by {self.by}" + (f"  ({rest})" if rest else "")


class Registry:
    """One registered model on one tracking server."""

    def __init__(self, client, name: str, policy: RegisterConfig) -> None:
        self.client, self.name, self.policy = client, name, policy

    # ------------------------------------------------------------------ reading
    def versions(self) -> list:
        """Every version, newest first (an absent registered model has none)."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda mv: int(mv.version), reverse=True)

    def get(self, version: str | int):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            known = ", ".join(version_of(mv) for mv in reversed(self.versions())) or "none"
            raise RegistryError(f"model {self.name!r} has no version {version} (versions: {known})") from None

    def by_alias(self, alias: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def is_ours(self, mv) -> bool:
        return self.policy.owner_tag in (mv.tags or {})

    def metrics(self, mv) -> dict[str, float]:
        """The evaluation metrics attached to a version (those of the run that registered it)."""
        from mlflow.exceptions import MlflowException

        if not mv.run_id:
            return {}
        try:
            return dict(self.client.get_run(mv.run_id).data.metrics)
        except MlflowException:
            return {}

    def audit_trail(self, mv) -> list[AuditEntry]:
        entries = []
        for key, value in (mv.tags or {}).items():
            if not key.startswith(AUDIT_PREFIX):
                continue
            try:
                data = json.loads(value)
            except json.JSONDecodeError:
                data = {"action": "?", "note": value}
            entries.append(AuditEntry(key, str(data.pop("action", "?")), str(data.pop("by", "?")),
                                      str(data.pop("at", "?")), data))
        return sorted(entries, key=lambda e: e.key)

    # ------------------------------------------------------------------ writing
    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def audit(self, version: str, action: str, by: str, **details: Any) -> None:
        """Append one audit entry; the key is unique even for two actions in the same microsecond."""
        now = _dt.datetime.now(_dt.timezone.utc)
        key = f"{AUDIT_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%f')}Z.{secrets.token_hex(3)}"
        entry = {"action": action, "by": by, "at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                 **{k: v for k, v in details.items() if v is not None}}
        self.client.set_model_version_tag(self.name, str(version), key, json.dumps(entry, sort_keys=True))

    def _drop_challenger(self, version: str) -> None:
        """A version that is decided (approved or rejected) no longer waits for review."""
        challenger = self.by_alias(self.policy.challenger_alias)
        if challenger is not None and version_of(challenger) == version:
            self.client.delete_registered_model_alias(self.name, self.policy.challenger_alias)

    def _require_ours(self, mv, action: str) -> None:
        if not self.is_ours(mv):
            raise RegistryError(
                f"{self.name} version {version_of(mv)} has no {self.policy.owner_tag!r} tag: it was not registered by "
                f"p4d (another team's or a hand-made version), so p4d will not {action} it")

    def set_challenger(self, version: str) -> None:
        self._require_ours(self.get(version), f"alias {self.policy.challenger_alias!r}")
        self.client.set_registered_model_alias(self.name, self.policy.challenger_alias, str(version))

    # ------------------------------------------------------------------ review actions
    def approve(self, version: str | int, note: str, *, force: bool = False, by: str | None = None,
                policy_for: Callable[[str], RegisterConfig] | None = None) -> str | None:
        """Make ``version`` the champion; returns the previous champion's version (None if there was none)."""
        by = by or reviewer()
        mv = self.get(version)
        version = version_of(mv)
        self._require_ours(mv, f"make {self.policy.champion_alias!r} of")
        tags = mv.tags or {}
        profile = tags.get("profile", "paper")
        policy = policy_for(profile) if policy_for else self.policy
        if policy.require_real_assets_for_champion and tags.get("synthetic_assets") == "true":
            raise RegistryError(
                f"{self.name} version {version} was built from synthetic assets (profile {profile}): it can never "
                f"become {self.policy.champion_alias} outside the tiny profile (not even with --force)")
        forced = tags.get("gate") != "passed"
        if forced and not force:
            raise RegistryError(
                f"{self.name} version {version} failed the gate ({tags.get('gate_failures', 'gate not recorded')}); "
                "pass --force to approve it anyway (recorded in its tags)")
        previous = self.by_alias(self.policy.champion_alias)
        previous_version = version_of(previous) if previous is not None else None
        self.audit(version, "approve", by, note=note, forced=forced or None, previous_champion=previous_version)
        self.client.set_registered_model_alias(self.name, self.policy.champion_alias, version)
        self.set_tags(version, {
            "approval": APPROVED, "approved_by": by, "approved_at": utc_now(), "approval_note": note,
            "approval_forced": str(forced).lower(),
            "previous_champion": previous_version if previous_version not in (None, version)
            else tags.get("previous_champion", "none"),
        })
        self._drop_challenger(version)
        return previous_version

    def reject(self, version: str | int, note: str, *, by: str | None = None) -> None:
        by = by or reviewer()
        mv = self.get(version)
        version = version_of(mv)
        champion = self.by_alias(self.policy.champion_alias)
        if champion is not None and version_of(champion) == version:
            raise RegistryError(f"{self.name} version {version} is the {self.policy.champion_alias}: run `p4d review "
                                "rollback` (or approve another version) before rejecting it")
        self.audit(version, "reject", by, note=note)
        self.set_tags(version, {"approval": REJECTED, "rejected_by": by, "rejected_at": utc_now(),
                                "approval_note": note})
        self._drop_challenger(version)

    def rollback_target(self, champion) -> Any:
        """The previous approved version: follow ``previous_champion`` from the champion; without a usable
        link (e.g. the alias was set in the UI) the most recently approved other version."""
        seen = {version_of(champion)}
        link = (champion.tags or {}).get("previous_champion")
        while link and link != "none" and link not in seen:
            seen.add(link)
            try:
                mv = self.client.get_model_version(self.name, link)
            except Exception:  # a deleted version breaks the chain; fall back below
                break
            if self.is_ours(mv) and (mv.tags or {}).get("approval") == APPROVED:
                return mv
            link = (mv.tags or {}).get("previous_champion")
        approved = [mv for mv in self.versions() if version_of(mv) != version_of(champion) and self.is_ours(mv)
                    and (mv.tags or {}).get("approval") == APPROVED]
        return max(approved, key=lambda mv: (mv.tags or {}).get("approved_at", ""), default=None)

    def rollback(self, note: str = "", *, by: str | None = None) -> tuple[str, str]:
        """Point the champion back to the previous approved version; returns (from, to)."""
        by = by or reviewer()
        champion = self.by_alias(self.policy.champion_alias)
        if champion is None:
            raise RegistryError(f"model {self.name!r} has no {self.policy.champion_alias!r}: nothing to roll back")
        target = self.rollback_target(champion)
        if target is None:
            raise RegistryError(f"{self.name}: no approved version before {self.policy.champion_alias} version "
                                f"{version_of(champion)} to roll back to")
        old, new = version_of(champion), version_of(target)
        self.audit(old, "rollback", by, note=note, replaced_by=new)
        self.audit(new, "restore", by, note=note, replaced=old)
        self.client.set_registered_model_alias(self.name, self.policy.champion_alias, new)
        self.set_tags(old, {"approval": ROLLED_BACK, "rolled_back_by": by, "rolled_back_at": utc_now(),
                            "rolled_back_to": new})
        self.set_tags(new, {"restored_by": by, "restored_at": utc_now()})
        return old, new

    def alias_map(self) -> dict[str, list[str]]:
        """version -> its aliases (``search_model_versions`` does not return aliases; the registered model does)."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return {}
        out: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            out.setdefault(str(version), []).append(alias)
        return {v: sorted(a) for v, a in out.items()}
