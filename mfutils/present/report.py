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
RULES                                 claim id -> (results files it needs, the rule)
MissingMeasurement                    KeyError: a results file lacks the key that holds a measurement

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
from mfutils.study.results import read_results

__all__ = ["load_claims", "verdict", "assess", "write_report", "Verdict", "FIGURES", "RULES", "MissingMeasurement"]

REPRODUCED, PARTLY, NOT, NA, MISSING = "reproduced", "partly", "not reproduced", "not applicable", "not measured"

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


def load_claims() -> dict[str, Any]:
    return yaml.safe_load((repo_root() / "paper" / "claims.yaml").read_text())


class MissingMeasurement(KeyError):
    """A results file lacks the key that holds a measurement: the claim reads "not measured", not an error."""

    def __init__(self, key: Any, source: str) -> None:
        super().__init__(key)
        self.key, self.source = key, source


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


def _n(x: float | None) -> float:
    """A JSON number, with null (NaN written by the notebooks) as NaN: every comparison with it is False."""
    return math.nan if x is None else float(x)


def _f(x: float | None, nd: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _strongest(curve: dict[str, Any], n_layers: int, deep: bool) -> dict[str, float] | None:
    """The window with the lowest mean INSSD among shallow (deep=False) or deep windows."""
    rows = [(s, m, lo, hi) for s, m, lo, hi in zip(curve.get("start", []), curve.get("inssd", []),
                                                  curve.get("lo", []), curve.get("hi", []))
            if (s >= n_layers / 2) == deep and m is not None and not (isinstance(m, float) and math.isnan(m))]
    if not rows:
        return None
    s, m, lo, hi = min(rows, key=lambda r: r[1])
    return {"start": s, "mean": m, "lo": lo, "hi": hi, "n": curve.get("n", 0)}


def _sig(e: dict[str, float] | None, th: float) -> bool:
    return e is not None and e["hi"] < -th


def _desc(e: dict[str, float] | None) -> str:
    if e is None:
        return "n/a"
    return f"{_f(e['mean'])} [{_f(e['lo'])}, {_f(e['hi'])}] at layer {e['start']} (n={e['n']})"


# ------------------------------------------------------------------------------------------------
# One function per claim: (results, thresholds) -> (verdict, measured text)
# ------------------------------------------------------------------------------------------------
def _c1(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L, ko = flow["n_layers"], flow["knockout"]
    parts, all_sig, any_sig = [], True, False
    for edge in ("image->instruction", "context->instruction"):
        e_all = _strongest(ko[edge]["all"], L, deep=False)
        any_sig |= _sig(e_all, th["effect"])
        for sub in ("follow_image", "follow_text"):
            e = _strongest(ko[edge][sub], L, deep=False)
            all_sig &= _sig(e, th["effect"])
            parts.append(f"{edge} ({sub}): {_desc(e)}")
    verdict = REPRODUCED if all_sig else PARTLY if any_sig else NOT
    return verdict, "strongest shallow INSSD — " + "; ".join(parts)


def _c2(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    c = flow["knockout"]["instruction->last"]["all"]
    deep, shallow = _strongest(c, flow["n_layers"], True), _strongest(c, flow["n_layers"], False)
    if not _sig(deep, th["effect"]):
        v = NOT
    elif shallow is None or deep["mean"] <= shallow["mean"]:  # type: ignore[index]
        v = REPRODUCED
    else:
        v = PARTLY
    return v, f"instruction->last strongest deep INSSD {_desc(deep)}; strongest shallow {_desc(shallow)}"


def _c3(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]
    best: tuple[float, str, int, float, float, int] | None = None
    for key in ("anchor_last", "anchor_mean"):
        cur = flow["ldar"][key]
        for i, (rate, lo, hi) in enumerate(zip(cur["rate"], cur["lo"], cur["hi"])):
            if i > L / 2 and rate is not None and not math.isnan(rate) and (best is None or rate > best[0]):
                best = (rate, key, i, lo, hi, cur["n"])
    if best is None:
        return NOT, "no deep LDAR value"
    rate = best[0]
    v = REPRODUCED if rate >= th["ldar_full"] else PARTLY if rate >= th["ldar_partly"] else NOT
    last = flow["ldar"]["last"]
    return v, (f"highest deep LDAR {_f(rate, 3)} [{_f(best[3], 3)}, {_f(best[4], 3)}] ({best[1]}, hidden state {best[2]}, "
               f"n={best[5]}); at the last position the final-layer agreement is {_f(last['rate'][-1], 3)}")


def _c4(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]
    a, m = flow["dla"]["attn"]["follow_image"], flow["dla"]["mlp"]["follow_image"]
    deep = [i for i in range(L) if i >= L / 2]
    a_sum, m_sum = sum(a["mean"][i] for i in deep), sum(m["mean"][i] for i in deep)
    a_sig = any(a["lo"][i] > 0 for i in deep)
    m_sig = any(m["hi"][i] < 0 for i in deep)
    attn_ok = a_sum > 0 and a_sig
    v = REPRODUCED if attn_ok and m_sum < 0 and m_sig else PARTLY if attn_ok else NOT
    return v, (f"follow-image samples (n={a['n']}), deep layers {deep[0]}-{deep[-1]}: summed attention attribution "
               f"{_f(a_sum)} (a layer significantly > 0: {a_sig}), summed MLP attribution {_f(m_sum)} "
               f"(a layer significantly < 0: {m_sig}), in logits of W_U[instructed] - W_U[other]")


def _c5(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    h = r["03"]
    s = _n(h["top_share_of_score"])
    v = REPRODUCED if s >= th["top_share_full"] else PARTLY if s >= th["top_share_partly"] else NOT
    return v, (f"top {h['k']} of {h['n_layers'] * h['n_heads']} heads hold {_f(s)} of the positive score mass "
               f"(uniform: {_f(h['k'] / (h['n_layers'] * h['n_heads']))}; n={h['n_identify']} identification samples); "
               f"exhaustive vs attribution patching: Spearman {_f(h['spearman'])}, top-5% overlap {_f(h['top_overlap'])}")


def _c6(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    d = b["relative_drop"]
    v = (REPRODUCED if _n(d["mean"]) >= th["block_drop_full"] and _n(d["lo"]) > 0
         else PARTLY if _n(d["lo"]) > 0 else NOT)
    return v, (f"MFR {_f(b['base']['all']['rate'], 3)} -> {_f(b['identified']['all']['rate'], 3)} with the top {b['k']} heads "
               f"blocked (n={b['base']['all']['n']}); relative drop {_f(d['mean'])} [{_f(d['lo'])}, {_f(d['hi'])}]")


def _c7(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    c, b = r["06"], r.get("04")
    drop = c["max_drop_identified"]
    text = (f"largest accuracy drop over {', '.join(c['categories'])}: {_f(drop, 3)} with the identified heads blocked, "
            f"{_f(c['max_drop_random_mean'], 3)} with random heads (mean); n per category "
            f"{min(c['base'][k]['n'] for k in c['categories'])}")
    if b is None or not _n(b["relative_drop"]["lo"]) > 0:
        return NA, text + "; blocking does not degrade modality following here, so preservation is vacuous"
    v = REPRODUCED if _n(drop) <= th["retention_full"] else PARTLY if _n(drop) <= th["retention_partly"] else NOT
    return v, text


def _c8(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    a = r["05"]
    n = a["n_failed"]
    best = a["best"]
    i = a["alphas"].index(best["alpha"]) if best["alpha"] in a["alphas"] else 0
    rnd = a["random"]["recovery_mean"][i] if a["random"]["recovery_mean"] else float("nan")
    rec = best["recovery"]
    text = (f"best recovery {_f(rec['rate'])} [{_f(rec['lo'])}, {_f(rec['hi'])}] at alpha={best['alpha']} "
            f"(n={n} failed samples); random heads at that alpha: {_f(rnd)}; arbitration failures n={a['arbitration']['n']}")
    if n < th["min_failed"]:
        return NA, text
    v = (REPRODUCED if _n(rec["rate"]) >= th["recovery_full"]
         else PARTLY if _n(rec["rate"]) >= th["recovery_partly"] and _n(rec["rate"]) > _n(rnd) else NOT)
    return v, text


def _c9(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    d, rd = _n(b["relative_drop"]["mean"]), b["random_relative_drop"]
    v = REPRODUCED if d > _n(rd["p95"]) and d >= 2 * _n(rd["mean"]) else PARTLY if d > _n(rd["mean"]) else NOT
    return v, (f"relative MFR drop: identified {_f(d)}, random sets mean {_f(rd['mean'])} (sd {_f(rd['sd'])}, "
               f"95th percentile {_f(rd['p95'])}, {b['n_random_sets']} sets of {b['k']} heads)")


def _c10(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L, ko, n_f = flow["n_layers"], flow["knockout"], flow["n"]["failed"]
    d_s = _strongest(ko["instruction->last"]["succeeded"], L, True)
    d_f = _strongest(ko["instruction->last"]["failed"], L, True)

    def shallow(sub: str) -> dict[str, float] | None:
        es = [e for e in (_strongest(ko[x][sub], L, False) for x in ("image->instruction", "context->instruction")) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    s_s, s_f = shallow("succeeded"), shallow("failed")
    text = (f"deep instruction->last: succeeded {_desc(d_s)}, failed {_desc(d_f)}; shallow transfer into the instruction: "
            f"succeeded {_desc(s_s)}, failed {_desc(s_f)}")
    if n_f < th["min_failed"] or d_s is None or d_f is None:
        return NA, text + f" (failed samples: {n_f})"
    deep_ok = d_f["mean"] > 0.5 * d_s["mean"] and d_s["mean"] < 0
    shallow_ok = s_s is not None and s_f is not None and s_f["mean"] <= 0.5 * s_s["mean"] and s_s["mean"] < 0
    return (REPRODUCED if deep_ok and shallow_ok else PARTLY if deep_ok else NOT), text


def _c11(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]

    def strongest_any(curve: dict[str, Any]) -> dict[str, float] | None:
        es = [e for e in (_strongest(curve, L, False), _strongest(curve, L, True)) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    main = strongest_any(flow["knockout"]["image+context->instruction"]["all"])
    con = flow["knockout"].get("image+context->constraint") or flow["controls"]["system"]["image+context->constraint"]
    c_con = strongest_any(con["all"])
    c_sys = strongest_any(flow["controls"]["system"]["image+context->system"]["all"])
    text = (f"image+context->instruction {_desc(main)}; ->constraint {_desc(c_con)}; ->system prompt {_desc(c_sys)}")
    if not _sig(main, th["effect"]):
        return NOT, text
    weaker = [c is None or c["mean"] > 0.5 * main["mean"] for c in (c_con, c_sys)]  # type: ignore[index]
    return (REPRODUCED if all(weaker) else PARTLY if any(weaker) else NOT), text


def _c12(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    st = flow["stability"]
    used = {e: c for e, c in st["corr"].items()
            if max((abs(x) for x in flow["knockout"].get(e, {}).get("all", {}).get("inssd", []) if x == x), default=0) >= th["effect"]}
    if not used:
        return NA, "no edge has an effect of at least the threshold, so there is no pattern to be stable"
    worst = min((min(c), e) for e, c in used.items())
    v = REPRODUCED if worst[0] >= th["stability_full"] else PARTLY if worst[0] >= th["stability_partly"] else NOT
    return v, (f"smallest correlation with the full curve {_f(worst[0])} ({worst[1]}) over fractions "
               f"{st['fractions']} and {len(used)} edges with an effect")


RULES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any], dict[str, float]], tuple[str, str]]]] = {
    "C1": (("02",), _c1), "C2": (("02",), _c2), "C3": (("02",), _c3), "C4": (("02",), _c4),
    "C5": (("03",), _c5), "C6": (("04",), _c6), "C7": (("06",), _c7), "C8": (("05",), _c8),
    "C9": (("04",), _c9), "C10": (("02",), _c10), "C11": (("02",), _c11), "C12": (("02",), _c12),
}
_FILES = {"02": "02_information_flow", "03": "03_head_identification", "04": "04_block_heads",
          "05": "05_amplification", "06": "06_capability_retention"}


def _judge(model: str, cid: str, spec: dict[str, Any], th: dict[str, float],
           results: dict[str, dict[str, Any] | None]) -> Verdict:
    """Claim ``cid``'s verdict by its rule on ``results`` (file key -> document, None when not written)."""
    needs, fn = RULES[cid]
    missing = [_FILES[n] for n in needs if results[n] is None]
    fig = FIGURES.get(cid)
    fig_path = figures_dir(model, create=False) / f"{fig}.png" if fig else None
    if missing:
        verdict_, measured = MISSING, f"no results: {', '.join(missing)}.json was not written (notebook not run or not built)"
    else:
        try:
            verdict_, measured = fn({k: v for k, v in results.items() if v is not None}, th)
        except MissingMeasurement as exc:  # only an absent measurement; a bug in a rule raises
            verdict_, measured = MISSING, (f"results incomplete for this claim ({exc.source} has no {exc.key!r}); "
                                           "rerun the chain")
    return Verdict(cid, spec["statement"], verdict_, measured, spec["rule"],
                   display_path(fig_path) if fig_path is not None and fig_path.exists() else None)


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
    return _judge(model, claim_id, claims["claims"][claim_id], claims["thresholds"], results)


def assess(model: str) -> list[Verdict]:
    """Apply the rules of paper/claims.yaml to the results of ``model``: every claim's verdict, in file order."""
    claims = load_claims()
    results = {k: _load(model, f) for k, f in _FILES.items()}
    return [_judge(model, cid, spec, claims["thresholds"], results) for cid, spec in claims["claims"].items()]


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
        lines.append(f"| {v.claim} | {v.statement} | **{v.verdict}** | {v.measured} | {link(v.figure)} |")
    lines += ["", "## Rules", ""] + [f"- **{v.claim}**: {v.rule}" for v in verdicts] + [""]
    return atomic_write_text(path, "\n".join(lines))
