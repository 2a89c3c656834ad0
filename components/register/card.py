"""The model card: Markdown that becomes the registry version's description (the MLflow UI renders it).

It says what a reviewer needs to decide: the data and the training schedule reached, every metric with its
interval and its delta against the champion, the gate verdict, the sample renders, the lineage, the known
limits and the intended use and misuse of a one-shot face-reenactment model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from components.register.evaluation import Evaluation, GateRule
from components.register.gate import GateResult
from components.register.lineage import DvcLineage

# Not the paper's words: the paper's own ethics discussion was not available to quote when this was
# written, so these are the standard limits of one-shot reenactment models (compare with the paper).
INTENDED_USE = (
    "Animating a portrait **with the consent of the person shown**: video conferencing avatars, "
    "telepresence, dubbing and visual effects where the person agreed, research on 4D head synthesis.",
)
MISUSE = (
    "Impersonation: making a real person appear to say or do something they did not (deepfakes), "
    "including for fraud, harassment, political disinformation or non-consensual intimate imagery.",
    "Identity verification or liveness spoofing: rendered faces must never be presented as camera footage "
    "to a biometric or KYC system.",
    "Publishing renders of a person without their consent, or without a clear label that the video is "
    "synthetic. Downstream services should watermark or label outputs and keep request logs.",
)
KNOWN_LIMITS = (
    "One source image: regions it does not show (back of the head, profile side, inside the mouth) are "
    "invented; large yaw away from the source view degrades first.",
    "Motion comes from PD-FGC on 224² crops and pose from a FLAME fit: fast motion, occlusions (hands, "
    "glasses), extreme expressions and non-frontal faces in the driving video reduce fidelity.",
    "Trained on FFHQ / VFHQ-like footage: faces, ages, skin tones and lighting that the training data under-"
    "represents render worse; metrics here are on the held-out test clips only, not on a fairness audit.",
    "Metrics are gated against our own champion, not paper numbers (evaluation protocols differ by several dB).",
)
SYNTHETIC_WARNING = (
    "**Built from the SYNTHETIC asset bundle** (random weights in the real formats): renders are not faces. "
    "Fine for testing the pipeline; never for serving outside the `tiny` profile."
)


@dataclass(frozen=True)
class CardContext:
    """Everything the card shows besides the evaluation itself."""

    model_name: str
    version: str | None
    profile: str
    config_sha256: str
    git_commit: str
    gate: GateResult
    champion_version: str | None
    champion_metrics: Mapping[str, float] | None
    dvc: DvcLineage
    schedule: Mapping[str, tuple[int | None, int]]  # stage -> (images seen, images planned)
    runs: Mapping[str, tuple[str | None, str | None]]  # role -> (run id, link)
    sample_links: Mapping[str, str]  # sample file name -> URL
    pipeline_run_id: str
    review_aliases: tuple[str, str] = ("champion", "challenger")
    notes: tuple[str, ...] = field(default_factory=tuple)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _delta(value: float, champion: float | None, rule: GateRule | None) -> str:
    if champion is None:
        return "–"
    diff = value - champion
    if rule is None or diff == 0:
        return f"{diff:+.4g}"
    better = (diff > 0) == rule.greater_is_better
    return f"{diff:+.4g} ({'better' if better else 'worse'})"


def _rule_text(rule: GateRule | None) -> str:
    if rule is None:
        return "not gated"
    op = ">=" if rule.greater_is_better else "<="
    parts = [f"{op} {rule.threshold:.4g}"] if rule.threshold is not None else []
    if rule.max_regression is not None:
        parts.append(f"≤ {rule.max_regression:.0%} worse than champion")
    return ", ".join(parts) or "not gated"


def _metric_table(ev: Evaluation, ctx: CardContext) -> list[str]:
    failed = {f.metric for f in ctx.gate.failures}
    champ = ctx.champion_metrics or {}
    head = f"champion v{ctx.champion_version}" if ctx.champion_version else "champion"
    lines = [f"| metric | value | 95% interval | n | {head} | delta | gate rule | result |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(set(ev.metrics) | set(ev.gate)):
        rule = ev.gate.get(name)
        if name not in ev.metrics:
            reason = ev.not_computed.get(name, "missing from the evaluation")
            verdict = "**failed**" if name in failed else "–"
            lines.append(f"| `{name}` | not computed | – | – | {_fmt(champ.get(name))} | – | "
                         f"{_rule_text(rule)} | {verdict} ({reason}) |")
            continue
        value = ev.metrics[name]
        lo_hi = ev.intervals.get(name)
        gated = rule is not None and (rule.threshold is not None or rule.max_regression is not None)
        result = "**failed**" if name in failed else ("passed" if gated else "–")
        lines.append(
            f"| `{name}` | {value:.4g} | {f'[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]' if lo_hi else '–'} | "
            f"{ev.counts.get(name, '–')} | {_fmt(champ.get(name))} | {_delta(value, champ.get(name), rule)} | "
            f"{_rule_text(rule)} | {result} |")
    for name, reason in sorted(ev.not_computed.items()):
        if name not in ev.metrics and name not in ev.gate:
            lines.append(f"| `{name}` | not computed | – | – | – | – | not gated | {reason} |")
    return lines


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


def model_card(ev: Evaluation, ctx: CardContext) -> str:
    """The Markdown card of one registered version."""
    title = f"# {ctx.model_name}" + (f" version {ctx.version}" if ctx.version else " candidate")
    gate_line = f"**Gate: {ctx.gate.status.upper()}**" + (
        f" against champion version {ctx.champion_version}" if ctx.champion_version else " (no champion yet)")
    out = [title, "", "Portrait4D-v2 one-shot 4D head synthesizer Ψ (source portrait + driving frame → "
           "rendered frame), trained by the p4d pipeline.", "",
           f"{gate_line} · profile `{ctx.profile}` · synthetic assets: `{str(ev.synthetic_assets).lower()}`", ""]
    if ev.synthetic_assets:
        out += [f"> {SYNTHETIC_WARNING}", ""]
    out += [f"> {note}" for note in ctx.notes] + ([""] if ctx.notes else [])

    out += ["## Data and schedule", "", f"- data version (evaluation): `{ev.data_version}`"]
    if ctx.dvc.lock is None:
        out.append("- DVC: not run through DVC (no dvc.lock); no DVC data hashes recorded")
    else:
        out += [f"- training data `{p}`: DVC md5 `{h}`" for p, h in ctx.dvc.train.items()]
        out += [f"- test data `{p}`: DVC md5 `{h}`" for p, h in ctx.dvc.test.items()]
    for stage, (seen, planned) in ctx.schedule.items():
        reached = "unknown" if seen is None else f"{seen:,} of {planned:,} images ({seen / planned:.0%})"
        out.append(f"- {stage} schedule reached: {reached}")
    out.append("")

    out += ["## Metrics", "", *_metric_table(ev, ctx), ""]
    out += ["## Gate", ""]
    out += [f"- checked: {c}" for c in ctx.gate.checks] or ["- no rule applied"]
    out += [f"- skipped: {s}" for s in ctx.gate.skipped]
    out += [f"- **failed**: {f.describe()}" for f in ctx.gate.failures]
    out.append("")

    out += ["## Samples", ""]
    grid = ctx.sample_links.get("samples/grid.png")
    if grid:
        out += [f"![sample grid: source | driving | output | target | novel views]({grid})", ""]
    out += [f"- {_link(name, url)}" for name, url in ctx.sample_links.items()] or ["- the evaluation wrote no samples"]
    out.append("")

    out += ["## Lineage", "", f"- git commit `{ctx.git_commit}`", f"- config sha256 `{ctx.config_sha256}` "
            f"(profile `{ctx.profile}`)", f"- pipeline run `{ctx.pipeline_run_id}`"]
    for role, (run_id, link) in ctx.runs.items():
        out.append(f"- {role} run: {_link(f'`{run_id}`', link) if run_id else 'unknown'}")
    out.append("")

    out += ["## Known limits", "", *[f"- {x}" for x in KNOWN_LIMITS], ""]
    out += ["## Intended use", "", *[f"- {x}" for x in INTENDED_USE], "", "## Misuse (out of scope, prohibited)", "",
            *[f"- {x}" for x in MISUSE], "",
            "_These limits are the standard ones for one-shot face reenactment; read them with the Portrait4D-v2 "
            "paper's own discussion of misuse._", ""]
    if ctx.version:
        champion, challenger = ctx.review_aliases
        out += ["## Review", "", "```",
                f"p4d review show {ctx.version}",
                f"p4d review approve {ctx.version} --note \"...\"   # moves `{champion}` here",
                f"p4d review reject {ctx.version} --note \"...\"    # removes `{challenger}`",
                "p4d review rollback                       # champion back to the previous approved version",
                "```", ""]
    return "\n".join(out)
