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
write_report(model) -> Path           a shipped model: paper/REPORT.md (``write_shipped_report``); any other
                                      model: results/<model>/REPORT.md, that model alone
write_shipped_report() -> Path        paper/REPORT.md: every shipped model (``model.loading.SHIPPED``; smol, then
                                      tiny) side by side, claim by claim and in a contrast table
                                      (``report_compare``), then one section per model, the rules and amendments once
Verdict                               claim id, statement, verdict, measured text, rule, figure
RULES                                 claim id -> Rule (results files it needs, the original and amended rule),
                                      from rules_flow (02), rules_heads (03) and rules_control (04-06)
MissingMeasurement                    KeyError: a results file lacks the key that holds a measurement

Amendments (paper/claims.yaml ``amendments``): a claim whose rule an amendment changed is judged by the
amended rule. For a model in ``amendments.seen_models`` (its results were seen before the amendment) the
original rule's verdict is computed too and shown beside the amended one wherever they differ (in the combined
report, per model: a shipped model not in ``seen_models`` is judged by the amended rules alone).

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

from mfutils.model.loading import DEFAULT_MODEL, SHIPPED
from mfutils.core.paths import (atomic_write_text, display_path, figures_dir, model_slug, output_root, repo_root,
                                 output_name, results_dir, run_key)
from mfutils.present.report_compare import contrast_table, side_by_side
from mfutils.present.rules_common import MISSING, MissingMeasurement, Rule
from mfutils.present.rules_control import RULES as _CONTROL_RULES
from mfutils.present.rules_flow import RULES as _FLOW_RULES
from mfutils.present.rules_heads import RULES as _HEADS_RULES
from mfutils.present.rules_position import RULES as _POSITION_RULES
from mfutils.present.report_position import position_section
from mfutils.study.results import read_results

__all__ = ["load_claims", "verdict", "assess", "write_report", "write_shipped_report", "Verdict", "FIGURES", "RULES",
           "MissingMeasurement"]

RULES: dict[str, Rule] = dict(sorted({**_FLOW_RULES, **_HEADS_RULES, **_CONTROL_RULES, **_POSITION_RULES}.items(),
                                    key=lambda kv: int(kv[0][1:])))
_ORDER = ("smol", "tiny")   # the shipped models' order in paper/REPORT.md: the study's model, then the contrast
_FILES = {"02": "02_information_flow", "03": "03_head_identification", "04": "04_block_heads",
          "05": "05_amplification", "06": "06_capability_retention", "08": "08_instruction_position"}

# The figure that shows each claim (file stem under figures/<model>/).
FIGURES: dict[str, str] = {
    "C1": "02_knockout_by_instruction", "C2": "02_knockout_by_instruction", "C3": "02_ldar", "C4": "02_dla",
    "C5": "03_head_scores", "C6": "04_block_vs_random", "C7": "06_capability", "C8": "05_amplification",
    "C9": "04_block_vs_random", "C10": "02_knockout_succeeded_failed", "C11": "02_controls", "C12": "02_stability",
    "C14": "08_position_mfr",
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
    """paper/claims.yaml, with each claim of ``claims_added`` (new claims of ours, pre-registered by an amendment)
    that has a rule in ``RULES`` appended to ``claims`` (its rule text: the adding amendment's)."""
    claims = yaml.safe_load((repo_root() / "paper" / "claims.yaml").read_text())
    listed = claims.get("amendments", {}).get("list", {})
    for cid, spec in (claims.get("claims_added") or {}).items():
        if cid in RULES and cid not in claims["claims"]:
            rule = listed.get(spec["added_by"], {}).get("rule", {}).get(cid, spec["rule"])
            claims["claims"][cid] = {**spec, "rule": f"[{spec['added_by']}] {rule}"}
    return claims


def seen_for(model: str, claims: dict[str, Any], aids: str | None = None) -> bool:
    """Whether ``model``'s results had been seen when any amendment of ``aids`` ("A2+A8"; None: any amendment) was
    written: the amendment's own ``seen_models``, else the list's ``amendments.seen_models``."""
    am = claims.get("amendments", {})
    listed = am.get("list", {})
    ids = aids.split("+") if aids else list(listed)
    slug = model_slug(model)
    return any(slug in {model_slug(m) for m in listed.get(a, {}).get("seen_models", am.get("seen_models", []))}
               for a in ids if a)


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


def _thresholds(claims: dict[str, Any]) -> dict[str, float]:
    return {**claims["thresholds"], **claims.get("amendments", {}).get("thresholds", {})}


def _figure(model: str, stem: str | None) -> str | None:
    """The path of ``figures/<model>/<stem>.png`` relative to the output root, or None when it does not exist."""
    fig_path = figures_dir(model, create=False) / f"{stem}.png" if stem else None
    return display_path(fig_path) if fig_path is not None and fig_path.exists() else None


def _judge(model: str, cid: str, claims: dict[str, Any], results: dict[str, dict[str, Any] | None]) -> Verdict:
    """Claim ``cid``'s verdict by its rule on ``results`` (file key -> document, None when not written)."""
    spec, rule = claims["claims"][cid], RULES[cid]
    th = _thresholds(claims)
    missing = [_FILES[n] for n in rule.needs if results[n] is None]
    figure = _figure(model, FIGURES.get(cid))
    if missing:
        text = f"no results: {', '.join(missing)}.json was not written (notebook not run or not built)"
        return Verdict(cid, spec["statement"], MISSING, text, spec["rule"], figure)
    if rule.amended is None:
        v, text = _apply(rule.original, results, th)
        return Verdict(cid, spec["statement"], v, text, spec["rule"], figure)
    v, text = _apply(rule.amended, results, th)
    seen = seen_for(model, claims, rule.amendment)
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


def _shipped() -> list[str]:
    """The shipped models in report order: ``smol`` (the study's model) first, ``tiny`` (the contrast) next,
    any other shipped model after them."""
    return [m for m in _ORDER if m in SHIPPED] + [m for m in SHIPPED if m not in _ORDER]


def _seen(model: str, claims: dict[str, Any]) -> bool:
    return seen_for(model, claims)


def _names(models: list[str]) -> str:
    """```a```, ```a`` and ``b```, ```a``, ``b`` and ``c```."""
    quoted = [f"`{m}`" for m in models]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _timings(model: str) -> dict[str, Any] | None:
    p = figures_dir(model, create=False) / "notebooks" / "chain_timings.json"
    return json.loads(p.read_text()) if p.exists() else None


def _chain_run(timings: dict[str, Any]) -> str:
    return f"chain run {'smoke' if timings.get('smoke') else 'full'}, {sum(timings['seconds'].values()):.0f} s"


def _linker(path: Path) -> Callable[[str | None], str]:
    """A figure path (relative to the output root) as a Markdown link relative to the folder of ``path``."""
    up = "../" * (len(path.relative_to(output_root()).parts) - 1)

    def link(fig: str | None) -> str:
        return "—" if fig is None else f"[{Path(fig).stem}]({up}{Path(fig).as_posix()})"

    return link


def _summary(verdicts: list[Verdict]) -> str:
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    return "Summary: " + ", ".join(f"{k}: {v}" for k, v in counts.items())


def _rows(verdicts: list[Verdict], link: Callable[[str | None], str], statement: bool = True) -> list[str]:
    """The claims table's rows: claim | (paper |) verdict | measured | figure."""
    rows = []
    for v in verdicts:
        cell, measured = f"**{v.verdict}**", v.measured
        if v.amendment is not None:
            cell += f" (amended rule, {v.amendment})"
            if v.changed:
                cell += f"<br>original rule: **{v.original_verdict}**"
                measured += f"<br>*measured for the original rule:* {v.original_measured}"
            elif v.original_verdict is not None:
                cell += "<br>the original rule gives the same"
        rows.append(f"| {v.claim} |" + (f" {v.statement} |" if statement else "") + f" {cell} | {measured} | {link(v.figure)} |")
    return rows


def _rules(rules: list[tuple[str, str | None, str]], claims: dict[str, Any], show_original: bool) -> list[str]:
    """The rules list from (claim, amendment or None, the rule text that judged it)."""
    lines = []
    for cid, amendment, text in rules:
        original = claims["claims"][cid]["rule"]
        if amendment is None:
            lines.append(f"- **{cid}**: {original}")
        else:
            lines.append(f"- **{cid}** (amended, {text})" + (f"; original rule: {original}" if show_original else ""))
    return lines


def _registered_rules(claims: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Every claim's rule as registered in ``RULES`` (independent of any model's results)."""
    out: list[tuple[str, str | None, str]] = []
    for cid, spec in claims["claims"].items():
        rule = RULES[cid]
        if rule.amended is None:
            out.append((cid, None, spec["rule"]))
        else:
            out.append((cid, rule.amendment or "", _amendment_rule(claims, rule.amendment or "", cid)))
    return out


def _amendments(amendments: dict[str, Any]) -> list[str]:
    return [f"- **{aid}** ({a['date']}; {', '.join(a['claims'])}): {a['reason']}" for aid, a in amendments["list"].items()]


def write_report(model: str = DEFAULT_MODEL) -> Path:
    """Write the report of ``model``: for a shipped model's shipped chain (``model.loading.SHIPPED``, no run key) the
    combined paper/REPORT.md of every shipped model (``write_shipped_report``); for any other model or run,
    results/<model>[--<run key>]/REPORT.md (``core.paths.output_name``).

    Example::

        print(write_report("random:llava"))     # results/random-llava/REPORT.md
    """
    if model in SHIPPED and not run_key():      # a smoke or MC2 run of a shipped model gets a report of its own
        return write_shipped_report()
    return _write_single(model)


def _write_single(model: str) -> Path:
    """results/<model>/REPORT.md: one model's report."""
    from mfutils.core.provenance import git_commit

    verdicts = assess(model)
    path = results_dir(model) / "REPORT.md"
    timings = _timings(model)
    claims = load_claims()
    amendments = claims.get("amendments", {})
    seen = _seen(model, claims)
    lines = [
        f"# Claims report — model `{model}`",
        "",
        "Generated by `mfutils.present.report` from `results/" + output_name(model) + "/*.json`; nothing here is typed by hand.",
        "Verdicts follow the rules of [paper/claims.yaml](../../paper/claims.yaml), fixed before the numbers were known.",
        "Definitions marked as ours are reconstructions (see METHOD.md): only the paper's abstract is public.",
        "",
        *([f"**Random weights: smoke only.** `{model}` is a randomly initialised model; these verdicts test that the "
           "code runs end to end on its architecture and say nothing about the paper's claims.", ""]
          if model.startswith("random:") else []),
        f"Code: `{git_commit()}`" + (f"; {_chain_run(timings)}" if timings else ""),
        "",
        _summary(verdicts),
        "",
        "| claim | paper | verdict | measured | figure |",
        "|---|---|---|---|---|",
        *_rows(verdicts, _linker(path)),
        "", "## Rules", "",
        *_rules([(v.claim, v.amendment, v.rule) for v in verdicts], claims, seen),
    ]
    if amendments.get("list"):
        lines += ["", "## Amendments", "",
                  ("The results of this model had been seen when these amendments were written, so every claim whose "
                   "verdict an amendment changes shows the original rule's verdict beside the amended one."
                   if seen else "This model's results had not been seen when the amendments were written: the amended "
                   "rules are simply its rules."), ""]
        lines += _amendments(amendments)
    lines.append("")
    return atomic_write_text(path, "\n".join(lines))


def _section(model: str, verdicts: list[Verdict], docs: dict[str, Any], seen: bool | None,
             link: Callable[[str | None], str]) -> list[str]:
    """One model's section of the combined report (``seen``: None when claims.yaml has no amendments)."""
    timings = _timings(model)
    lines = [f"## Model `{model}`", "",
             f"Results: `results/{model_slug(model)}/*.json`; " +
             (_chain_run(timings) if timings else
              f"no chain run recorded (`figures/{model_slug(model)}/notebooks/chain_timings.json` absent)") + ".", ""]
    if seen is not None:
        ids = [a for a in load_claims().get("amendments", {}).get("list", {}) if seen_for(model, load_claims(), a)]
        lines += [(f"This model's results had been seen when amendments {', '.join(ids)} were written (paper/claims.yaml, "
                   "each amendment's `seen_models`), so every claim whose verdict one of them changes shows the original "
                   "rule's verdict beside the amended one; for the other amendments the amended rules are simply its "
                   "rules." if ids else
                   "This model's results had not been seen when the amendments were written (paper/claims.yaml "
                   "`seen_models`): the amended rules are simply its rules."), ""]
    lines += [_summary(verdicts), ""]
    if all(d is None for d in docs.values()):
        return lines + [f"Not measured: no results file under `results/{model_slug(model)}/` yet "
                        f"(`make reproduce MODEL={model}` writes them), so every claim reads {MISSING}.", ""]
    return lines + ["| claim | verdict | measured | figure |", "|---|---|---|---|", *_rows(verdicts, link, False), ""]


def write_shipped_report() -> Path:
    """Write paper/REPORT.md: every shipped model side by side (the claim-by-claim table and the contrast of
    ``report_compare``), then one section per model, then the rules and amendments once. A shipped model
    without results reads "not measured" throughout.

    Example::

        print(write_shipped_report())           # paper/REPORT.md
    """
    from mfutils.core.provenance import git_commit

    claims = load_claims()
    amendments = claims.get("amendments", {})
    models = _shipped()
    path = output_root() / "paper" / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    link = _linker(path)
    docs = {m: {k: _load(m, f) for k, f in _FILES.items()} for m in models}
    verdicts = {m: [_judge(m, cid, claims, docs[m]) for cid in claims["claims"]] for m in models}
    has_amendments = bool(amendments.get("list"))
    seen = {m: _seen(m, claims) for m in models}
    lines = [
        f"# Claims report — shipped models {_names(models)}",
        "",
        "Generated by `mfutils.present.report` from " + " and ".join(f"`results/{model_slug(m)}/*.json`" for m in models)
        + "; nothing here is typed by hand.",
        "Verdicts follow the rules of [paper/claims.yaml](claims.yaml), fixed before the numbers were known.",
        "Definitions marked as ours are reconstructions (see METHOD.md): only the paper's abstract is public.",
        "",
        f"Code: `{git_commit()}`",
        "",
        "## Claim by claim",
        "",
        "Each verdict links to its model's section, which has the numbers behind it and the figure. *changes*: yes "
        "where the models' verdicts differ, no where they agree, — where fewer than two models have a verdict.",
        "",
        *side_by_side(verdicts, {cid: c["statement"] for cid, c in claims["claims"].items()}),
        "",
        "## Contrast",
        "",
        "From each model's `02_information_flow.json` (the instruction->last knockout on all test samples: of the "
        "deep and the shallow window that C2 compares, the stronger; relative depth = layer / (layers - 1)), "
        "`03_head_identification.json` (the top-k heads whose share C5 judges) and `04_block_heads.json` (C6). "
        "Intervals: the bootstrap 95% intervals that the notebooks wrote.",
        "",
        *contrast_table(docs),
        "",
        *position_section({m: docs[m]["08"] for m in models}, link, _thresholds(claims),
                          {m: _figure(m, "08_position_mfr") for m in models}),
    ]
    for m in models:
        lines += _section(m, verdicts[m], docs[m], seen[m] if has_amendments else None, link)
    lines += ["## Rules", "", *_rules(_registered_rules(claims), claims, any(seen.values()))]
    if has_amendments:
        was = [m for m in models if seen[m]]
        was_not = [m for m in models if not seen[m]]
        text = []
        if was:
            text.append(f"The results of {_names(was)} had been seen when these amendments were written: "
                        f"{'its section shows' if len(was) == 1 else 'their sections show'} the original rule's "
                        "verdict beside the amended one wherever an amendment changes it.")
        if was_not:
            text.append(f"{'Those' if was else 'The results'} of {_names(was_not)} had not been seen: the amended "
                        f"rules are simply {'its' if len(was_not) == 1 else 'their'} rules.")
        lines += ["", "## Amendments", "", " ".join(text), "", *_amendments(amendments)]
    lines.append("")
    return atomic_write_text(path, "\n".join(lines))
