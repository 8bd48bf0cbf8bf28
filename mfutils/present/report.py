"""The claims report: every claim C1-C12, what the paper says, what this run measured, a verdict by the
rule written in ``paper/claims.yaml`` before the numbers were known, and the figure that shows it.

Nothing in the report is typed by hand: every number comes from ``results/<model>/*.json`` written by the
notebooks. A claim reads "not measured" only when a measurement is absent: the results file does not exist, or
it lacks the key that holds the measurement (``MissingMeasurement``). Any other error inside a rule is a bug
and raises.

Public API
----------
load_claims() -> dict                 paper/claims.yaml
verdict(model, claim_id) -> Verdict   one claim's verdict by its rule (what notebooks print)
assess(model) -> list[Verdict]        every claim's verdict, in the order of paper/claims.yaml
write_report(model) -> Path           paper/REPORT.md for the default model (results/<model>/REPORT.md otherwise)
Verdict                               claim id, statement, verdict, measured text, rule, figure
RULES                                 claim id -> Rule (results files it needs, the original and amended rule),
                                      from rules_flow (02), rules_heads (03) and rules_control (04-06)
MissingMeasurement                    KeyError: a results file lacks the key that holds a measurement

Amendments (paper/claims.yaml ``amendments``): a claim whose rule an amendment changed is judged by the
amended rule. For a model in ``amendments.seen_models`` (its results were seen before the amendment) the
original rule's verdict is computed too and shown beside the amended one wherever they differ.

Example::

    v = verdict("tiny", "C6"); print(v.verdict, v.measured)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from mfutils.model.loading import DEFAULT_MODEL
from mfutils.core.paths import atomic_write_text, display_path, figures_dir, model_slug, output_root, repo_root, results_dir
from mfutils.present.rules_common import MISSING, MissingMeasurement, Rule
from mfutils.present.rules_control import RULES as _CONTROL_RULES
from mfutils.present.rules_flow import RULES as _FLOW_RULES
from mfutils.present.rules_heads import RULES as _HEADS_RULES
from mfutils.study.results import read_results

__all__ = ["load_claims", "verdict", "assess", "write_report", "Verdict", "FIGURES", "RULES", "MissingMeasurement"]

RULES: dict[str, Rule] = dict(sorted({**_FLOW_RULES, **_HEADS_RULES, **_CONTROL_RULES}.items(), key=lambda kv: int(kv[0][1:])))
_FILES = {"02": "02_information_flow", "03": "03_head_identification", "04": "04_block_heads",
          "05": "05_amplification", "06": "06_capability_retention"}

# The figure that shows each claim (file stem under figures/<model>/).
FIGURES: dict[str, str] = {
    "C1": "02_knockout_by_instruction", "C2": "02_knockout_by_instruction", "C3": "02_ldar", "C4": "02_dla",
    "C5": "03_head_scores", "C6": "04_block_vs_random", "C7": "06_capability", "C8": "05_amplification",
    "C9": "04_block_vs_random", "C10": "02_knockout_succeeded_failed", "C11": "02_controls", "C12": "02_stability",
}


@dataclass
class Verdict:
    """One claim's verdict: ``verdict`` is reproduced / partly / not reproduced / not applicable / not measured;
    ``measured`` the numbers behind it; ``figure`` the figure's path relative to the output root (None if absent)."""

    claim: str
    statement: str
    verdict: str
    measured: str
    rule: str
    figure: str | None
    amendment: str | None = None            # the amendment whose rule gave ``verdict`` (None: the original rule)
    original_verdict: str | None = None     # seen models only: the original rule's verdict and measured text
    original_measured: str | None = None

    @property
    def changed(self) -> bool:
        """True when an amendment changed this claim's verdict (seen models only)."""
        return self.original_verdict is not None and self.original_verdict != self.verdict


def load_claims() -> dict[str, Any]:
    return yaml.safe_load((repo_root() / "paper" / "claims.yaml").read_text())


class _Doc(dict):  # type: ignore[type-arg]
    """A JSON object of a results file: a missing key raises ``MissingMeasurement`` (naming the file), so that
    the rules tell an absent measurement from a bug (a KeyError anywhere else, an IndexError, a TypeError)."""

    def __init__(self, items: dict[str, Any], source: str) -> None:
        super().__init__(items)
        self.source = source

    def __missing__(self, key: Any) -> Any:
        raise MissingMeasurement(key, self.source)


def _tagged(x: Any, source: str) -> Any:
    """``x`` with every JSON object a ``_Doc`` of ``source``."""
    if isinstance(x, dict):
        return _Doc({k: _tagged(v, source) for k, v in x.items()}, source)
    if isinstance(x, list):
        return [_tagged(v, source) for v in x]
    return x


def _load(model: str, name: str) -> dict[str, Any] | None:
    """results/<model>/<name>.json (``study.results.read_results``), or None when the file was not written."""
    try:
        doc = read_results(model, name)
    except FileNotFoundError:
        return None
    return _tagged(doc, f"{name}.json")


def _apply(fn: Any, results: dict[str, dict[str, Any] | None], th: dict[str, float]) -> tuple[str, str]:
    try:
        return fn({k: v for k, v in results.items() if v is not None}, th)
    except MissingMeasurement as exc:  # only an absent measurement; a bug in a rule raises
        return MISSING, f"results incomplete for this claim ({exc.source} has no {exc.key!r}); rerun the chain"


def _amendment_rule(claims: dict[str, Any], aids: str, cid: str) -> str:
    """The amended rule text of ``cid`` from each amendment of ``aids`` ("A4", or "A3+A4" for several)."""
    parts = []
    for aid in aids.split("+"):
        a = claims["amendments"]["list"][aid]
        parts.append(f"[{aid}, {a['date']}] " + str(a["rule"].get(cid, a["rule"].get("all", ""))))
    return " ".join(parts)


def _judge(model: str, cid: str, claims: dict[str, Any], results: dict[str, dict[str, Any] | None]) -> Verdict:
    """Claim ``cid``'s verdict by its rule on ``results`` (file key -> document, None when not written)."""
    spec, rule = claims["claims"][cid], RULES[cid]
    th = {**claims["thresholds"], **claims.get("amendments", {}).get("thresholds", {})}
    missing = [_FILES[n] for n in rule.needs if results[n] is None]
    fig = FIGURES.get(cid)
    fig_path = figures_dir(model, create=False) / f"{fig}.png" if fig else None
    figure = display_path(fig_path) if fig_path is not None and fig_path.exists() else None
    if missing:
        text = f"no results: {', '.join(missing)}.json was not written (notebook not run or not built)"
        return Verdict(cid, spec["statement"], MISSING, text, spec["rule"], figure)
    if rule.amended is None:
        v, text = _apply(rule.original, results, th)
        return Verdict(cid, spec["statement"], v, text, spec["rule"], figure)
    v, text = _apply(rule.amended, results, th)
    seen = model_slug(model) in {model_slug(m) for m in claims["amendments"].get("seen_models", [])}
    ov, otext = _apply(rule.original, results, th) if seen else (None, None)
    return Verdict(cid, spec["statement"], v, text, _amendment_rule(claims, rule.amendment or "", cid), figure,
                   rule.amendment, ov, otext)


def verdict(model: str, claim_id: str) -> Verdict:
    """The verdict of claim ``claim_id`` ("C1".."C12") by its rule in paper/claims.yaml, from the results
    files of ``model``. Notebooks print verdicts only through this (or ``assess``).

    Example::

        v = verdict("tiny", "C6"); print(f"{v.claim}: {v.verdict} ({v.measured})")
    """
    claims = load_claims()
    if claim_id not in claims["claims"]:
        raise ValueError(f"unknown claim {claim_id!r}; paper/claims.yaml has {', '.join(claims['claims'])}")
    results = {k: _load(model, f) for k, f in _FILES.items()}
    return _judge(model, claim_id, claims, results)


def assess(model: str) -> list[Verdict]:
    """Apply the rules of paper/claims.yaml to the results of ``model``: every claim's verdict, in file order."""
    claims = load_claims()
    results = {k: _load(model, f) for k, f in _FILES.items()}
    return [_judge(model, cid, claims, results) for cid in claims["claims"]]


def write_report(model: str = DEFAULT_MODEL) -> Path:
    """Write the report: paper/REPORT.md for the default model, results/<model>/REPORT.md for others."""
    from mfutils.core.provenance import git_commit

    verdicts = assess(model)
    path = (output_root() / "paper" / "REPORT.md") if model == DEFAULT_MODEL else results_dir(model) / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    timings_p = figures_dir(model, create=False) / "notebooks" / "chain_timings.json"
    timings = json.loads(timings_p.read_text()) if timings_p.exists() else None

    def link(fig: str | None) -> str:
        if fig is None:
            return "—"
        up = "../" * (len(path.relative_to(output_root()).parts) - 1)   # fig: relative to the output root
        return f"[{Path(fig).stem}]({up}{Path(fig).as_posix()})"

    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    lines = [
        f"# Claims report — model `{model}`",
        "",
        "Generated by `mfutils.present.report` from `results/" + model_slug(model) + "/*.json`; nothing here is typed by hand.",
        "Verdicts follow the rules of [paper/claims.yaml](" + ("" if model == DEFAULT_MODEL else "../../") +
        ("claims.yaml" if model == DEFAULT_MODEL else "paper/claims.yaml") + "), fixed before the numbers were known.",
        "Definitions marked as ours are reconstructions (see METHOD.md): only the paper's abstract is public.",
        "",
        *([f"**Random weights: smoke only.** `{model}` is a randomly initialised model; these verdicts test that the "
           "code runs end to end on its architecture and say nothing about the paper's claims.", ""]
          if model.startswith("random:") else []),
        f"Code: `{git_commit()}`" + (f"; chain run {'smoke' if timings and timings.get('smoke') else 'full'}, "
                                     f"{sum(timings['seconds'].values()):.0f} s" if timings else ""),
        "",
        "Summary: " + ", ".join(f"{k}: {v}" for k, v in counts.items()),
        "",
        "| claim | paper | verdict | measured | figure |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        cell, measured = f"**{v.verdict}**", v.measured
        if v.amendment is not None:
            cell += f" (amended rule, {v.amendment})"
            if v.changed:
                cell += f"<br>original rule: **{v.original_verdict}**"
                measured += f"<br>*measured for the original rule:* {v.original_measured}"
            elif v.original_verdict is not None:
                cell += "<br>the original rule gives the same"
        lines.append(f"| {v.claim} | {v.statement} | {cell} | {measured} | {link(v.figure)} |")
    claims = load_claims()
    amendments = claims.get("amendments", {})
    seen = model_slug(model) in {model_slug(m) for m in amendments.get("seen_models", [])}
    lines += ["", "## Rules", ""]
    for v in verdicts:
        original = claims["claims"][v.claim]["rule"]
        if v.amendment is None:
            lines.append(f"- **{v.claim}**: {original}")
        else:
            lines.append(f"- **{v.claim}** (amended, {v.rule})" + (f"; original rule: {original}" if seen else ""))
    if amendments.get("list"):
        lines += ["", "## Amendments", "",
                  ("The results of this model had been seen when these amendments were written, so every claim whose "
                   "verdict an amendment changes shows the original rule's verdict beside the amended one."
                   if seen else "This model's results had not been seen when the amendments were written: the amended "
                   "rules are simply its rules."), ""]
        for aid, a in amendments["list"].items():
            lines.append(f"- **{aid}** ({a['date']}; {', '.join(a['claims'])}): {a['reason']}")
    lines.append("")
    return atomic_write_text(path, "\n".join(lines))
