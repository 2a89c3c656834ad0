"""What `p4d review` prints (the version table, one version in full) and the deploy that follows approval."""

from __future__ import annotations

import datetime as _dt

from components.register.registry import Registry, version_of

LINEAGE_PREFIXES = ("run.", "dvc.", "schedule.")
LINEAGE_KEYS = ("profile", "config_sha256", "git_commit", "synthetic_assets", "data_version", "pipeline_run_id",
                "previous_champion")


def _created(mv) -> str:
    ms = getattr(mv, "creation_timestamp", None)
    if not ms:
        return "?"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


def list_table(registry: Registry) -> str:
    """One row per version, newest first: version, created (UTC), gate, key metrics, aliases, approval."""
    versions = registry.versions()
    if not versions:
        return f"model {registry.name!r} has no versions yet (run `p4d register`)\n"
    keys = list(registry.policy.key_metrics)
    aliases = registry.alias_map()
    rows = [["version", "created (UTC)", "gate", *[k.removeprefix("eval/") for k in keys], "aliases", "approval"]]
    for mv in versions:
        tags = mv.tags or {}
        metrics = registry.metrics(mv)
        ours = registry.is_ours(mv)
        rows.append([version_of(mv), _created(mv), tags.get("gate", "-") if ours else "-",
                     *[f"{metrics[k]:.4g}" if k in metrics else "-" for k in keys],
                     ",".join(aliases.get(version_of(mv), [])) or "-",
                     tags.get("approval", "-") if ours else "foreign (not p4d)"])
    return _table(rows)


def show_text(registry: Registry, version: str) -> str:
    """Card, metrics, lineage, artifact links and audit trail of one version."""
    mv = registry.get(version)
    tags = mv.tags or {}
    out = [f"{registry.name} version {version_of(mv)}  created {_created(mv)} UTC  aliases: "
           f"{', '.join(sorted(getattr(mv, 'aliases', None) or [])) or 'none'}",
           f"gate: {tags.get('gate', '-')}  failures: {tags.get('gate_failures', '-')}",
           f"approval: {tags.get('approval', '-')}" + "".join(
               f"  {k}: {tags[k]}" for k in ("approved_by", "approved_at", "approval_note", "approval_forced")
               if k in tags)]
    if not registry.is_ours(mv):
        out.append(f"NOT registered by p4d (no {registry.policy.owner_tag!r} tag): p4d will not alias it")
    metrics = registry.metrics(mv)
    out += ["", "metrics:"] + ([f"  {k} = {v:.6g}" for k, v in sorted(metrics.items())] or ["  none"])
    out += ["", "lineage:"] + [f"  {k} = {v}" for k, v in sorted(tags.items())
                               if k in LINEAGE_KEYS or k.startswith(LINEAGE_PREFIXES)]
    out += ["", "artifacts:", f"  model: models:/{registry.name}/{version_of(mv)}  (source {mv.source})"]
    if mv.run_id:
        out += [f"  register run: runs:/{mv.run_id}/",
                *[f"  {a.path}" for a in _artifacts(registry, mv.run_id, "evaluation")]]
    out += ["", "audit trail:"] + ([f"  {e.line()}" for e in registry.audit_trail(mv)] or ["  none"])
    out += ["", "model card:", "", mv.description or "(no description)", ""]
    return "\n".join(out)


def _artifacts(registry: Registry, run_id: str, path: str) -> list:
    """Files under ``path`` of a run's artifacts (recursively)."""
    found, todo = [], [path]
    while todo:
        for a in registry.client.list_artifacts(run_id, todo.pop()):
            (todo.append(a.path) if a.is_dir else found.append(a))
    return sorted(found, key=lambda a: a.path)


def deploy_champion(registry: Registry, version: str, repo: str, triton_url: str, config) -> list[str]:
    """Roll ``version`` (the new champion) out to Triton through the deploy stage's rollout; its summary lines.
    Raises the rollout's error (after it restored the previous serving version) when the rollout fails."""
    from components.deploy.rollout import rollout_model

    result = rollout_model(f"models:/{registry.name}/{version}", repo, triton_url, cfg=config.deploy, config=config)
    return result.lines()
