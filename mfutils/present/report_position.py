"""The "Where the instruction stands" section of paper/REPORT.md: every shipped model's MFR per instruction position
(table and figure), failure kinds, the instruction's effect between twins, head-set overlaps, and C6 / C9 read on the
shifted test split ``test_first`` (A9), all from ``results/<model>/08_instruction_position.json``.

Public API
----------
shifted_readings(doc08, th) -> {claim: (verdict, text)}   C6 (its rule) and C9 (A1's rule) on test_first
position_section(docs, link, th) -> list[str]             the section's Markdown lines

Example::

    lines = position_section({"smol": doc08_smol, "tiny": doc08_tiny}, link, thresholds)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mfutils.present.rules_common import fmt
from mfutils.present.rules_control import c6_original, c9_amended

__all__ = ["shifted_readings", "position_section"]


def shifted_readings(d: dict[str, Any], th: dict[str, float]) -> dict[str, tuple[str, str]]:
    """C6 (its rule) and C9 (A1's rule) applied to notebook 08's blocking on ``test_first`` (A9), with the change
    of the instructed margin beside them; empty where notebook 08 measured nothing."""
    if not d.get("applicable") or "blocking_first" not in d:
        return {}
    r = {"04": d["blocking_first"]}
    mg = d["blocking_first"]["margins"]
    margin = (f"; instructed margin change {fmt(mg['change']['value'])} [{fmt(mg['change']['lo'])}, "
              f"{fmt(mg['change']['hi'])}] log-odds (paired bootstrap, n={mg['n']}); flips {mg['flips']['k']} of "
              f"{mg['flips']['n']} followed samples")
    return {cid: (v, text + margin) for cid, fn in (("C6", c6_original), ("C9", c9_amended))
            for v, text in [fn(r, th)]}


def _cell(e: dict[str, Any]) -> str:
    return f"{fmt(e['rate'], 3)} [{fmt(e['lo'], 3)}, {fmt(e['hi'], 3)}] (n={e['n']})"


def position_section(docs: dict[str, dict[str, Any] | None], link: Callable[[str | None], str],
                     th: dict[str, float], figures: dict[str, str | None]) -> list[str]:
    """The Markdown lines of the section, one block per model with a notebook 08 document (``figures``: model ->
    the path of its ``08_position_mfr`` figure, or None)."""
    lines = ["## Where the instruction stands", "",
             "The instruction rendered at four positions (`mfutils.data.world.POSITIONS`): first (before the image), "
             "after the image, standard (after the context) and last (after the question and the constraint); training "
             "saw only standard and last. MFR on each position's pool (Wilson 95%), failures split into arbitration "
             "(both single-modality counterparts answered right) and perception failures. From each model's "
             "`08_instruction_position.json`; rules: claims.yaml A8 and A9.", ""]
    for model, d in docs.items():
        lines += [f"### `{model}`", ""]
        if d is None:
            lines += ["Not measured: notebook 08 has not run for this model.", ""]
            continue
        if not d["applicable"]:
            lines += [f"Not measured: {d['why']}.", ""]
            continue
        beh = d["behaviour"]["positions"]
        lines += ["| position | follow-image MFR | follow-text MFR | failures | arbitration | perception |",
                  "|---|---|---|---|---|---|"]
        for p, e in beh.items():
            f = e["failures"]
            lines.append(f"| {p} | {_cell(e['follow_image'])} | {_cell(e['follow_text'])} | {f['n']} of {e['n']} | "
                         f"{f['arbitration']} | {f['perception']} |")
        eff = d["effect"]["per_position"]
        lines += ["", "Instruction effect between twins (log-odds, bootstrap 95%; A9): " + "; ".join(
            f"{p}: S {fmt(e['S']['mean'])} [{fmt(e['S']['lo'])}, {fmt(e['S']['hi'])}], S_direct "
            f"{fmt(e['S_direct']['mean'])} [{fmt(e['S_direct']['lo'])}, {fmt(e['S_direct']['hi'])}], B "
            f"{fmt(e['B']['mean'])} [{fmt(e['B']['lo'])}, {fmt(e['B']['hi'])}] (n={e['n_pairs']} pairs)"
            for p, e in eff.items()) + "."]
        heads = d["heads"]["positions"]
        lines += ["", "Top-5% heads by attribution score per position, shared with the standard position's top set: " +
                  "; ".join(f"{p}: {e['overlap_standard']['shared']} of {e['overlap_standard']['k']} "
                            f"(n={e['n']} identification samples)" for p, e in heads.items()
                            if e.get("overlap_standard")) + "."]
        for cid, (v, text) in shifted_readings(d, th).items():
            lines += ["", f"{cid} on `test_first` (A9): **{v}**: {text}."]
        lines += ["", f"Figure: {link(figures.get(model))}", ""]
    return lines
