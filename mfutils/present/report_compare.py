"""The shipped models side by side: each claim's verdict per model, and a short contrast of what was measured
(depth of the instruction->last effect, the identified heads, the blocking drop), one column per model.

Every number is read from the results documents of ``results/<model>/*.json`` through the same reads as the
claim rules (``rules_flow.c2_windows`` for C2's strongest window, the keys C5 and C6 judge), so the contrast
cannot disagree with the verdicts. A cell whose results file was not written, or lacks the key that holds the
measurement (``MissingMeasurement``), reads "not measured"; any other error is a bug and raises.

Public API
----------
NOT_MEASURED                                 "not measured": the text of a cell without a measurement
ROWS                                         (label, cell function) of the contrast table, in order
Results                                      notebook key ("02".."06") -> results document, None if not written
architecture(results) -> str                 "8 x 8": layers x heads (03; the layers alone from 02)
strongest_knockout(results) -> dict          C2's strongest instruction->last window (A3), with relative depth
knockout_layer(results), knockout_effect(results), identified_heads(results), heads_share(results),
block_drop(results) -> str                   the other cells of ROWS
anchor(model) -> str                         the Markdown anchor of the report's "## Model `<model>`" section
side_by_side(verdicts, statements) -> list[str]   Markdown lines: claim | paper | verdict and headline per model | changes
headline(measured) -> str          the first clause of a rule's measured text: its deciding number, interval and n
contrast_table(results) -> list[str]         Markdown lines: one row of ROWS each, one column per model

Example::

    docs = {"02": read_results("tiny", "02_information_flow"), "03": None, "04": None}
    print(knockout_layer(docs), knockout_effect(docs))      # layer 0 (relative depth 0.00) -0.98 [-1.10, -0.87] ...
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Protocol, Sequence

from mfutils.present.rules_common import MISSING, MissingMeasurement, fmt, num
from mfutils.present.rules_flow import c2_windows

__all__ = ["NOT_MEASURED", "ROWS", "Results", "headline", "architecture", "strongest_knockout", "knockout_layer",
           "knockout_effect", "identified_heads", "heads_share", "block_drop", "anchor", "side_by_side",
           "contrast_table"]

NOT_MEASURED = MISSING
Results = Mapping[str, Any]
_FILES = {"02": "02_information_flow.json", "03": "03_head_identification.json", "04": "04_block_heads.json"}


class _Verdict(Protocol):
    """What ``side_by_side`` reads of a ``report.Verdict``."""

    claim: str
    verdict: str
    original_verdict: str | None

    @property
    def changed(self) -> bool: ...


def _doc(results: Results, key: str) -> Any:
    """The results document of notebook ``key``; ``MissingMeasurement`` when its file was not written."""
    doc = results.get(key)
    if doc is None:
        raise MissingMeasurement(key, _FILES.get(key, key))
    return doc


def architecture(results: Results) -> str:
    """``"<layers> x <heads>"`` from notebook 03; from notebook 02 alone, the layers (heads not measured)."""
    if results.get("03") is not None:
        h = results["03"]
        return f"{h['n_layers']} x {h['n_heads']}"
    return f"{_doc(results, '02')['n_layers']} x ({NOT_MEASURED})"


def strongest_knockout(results: Results) -> dict[str, Any]:
    """The strongest (most negative) window of the instruction->last knockout on all samples, deep or shallow,
    by amendment A3's ratio of means: the two windows C2's rule compares, the stronger one (the deep one on a
    tie, as C2 reads it). Keys of ``rules_common.strongest`` (start, mean, lo, hi, n) plus n_layers, window,
    depth (start / (n_layers - 1)). ``MissingMeasurement`` when there is no window."""
    flow = _doc(results, "02")
    deep, shallow = c2_windows(flow)
    best = deep if shallow is None or (deep is not None and deep["mean"] <= shallow["mean"]) else shallow
    if best is None:
        raise MissingMeasurement("knockout", _FILES["02"])
    L = flow["n_layers"]
    return {**best, "n_layers": L, "window": flow.get("window", 1), "depth": best["start"] / max(L - 1, 1)}


def knockout_layer(results: Results) -> str:
    """``layer s (relative depth d)``: where the strongest instruction->last effect is (its window's start)."""
    e = strongest_knockout(results)
    w = e["window"]
    where = f"layer {e['start']}" if w == 1 else f"layers {e['start']}-{e['start'] + w - 1}"
    half = "deep" if e["start"] >= e["n_layers"] / 2 else "shallow"
    return f"{where} of 0-{e['n_layers'] - 1} (relative depth {fmt(e['depth'])}, {half} half)"


def knockout_effect(results: Results) -> str:
    """``mean [lo, hi] (n=...)``: that window's INSSD (ratio of means) with its bootstrap interval."""
    e = strongest_knockout(results)
    return f"{fmt(e['mean'])} [{fmt(e['lo'])}, {fmt(e['hi'])}] (n={e['n']})"


def identified_heads(results: Results) -> str:
    """The identified heads (layer, head), the top-k set whose score share C5 judges, with k of all heads."""
    h = _doc(results, "03")
    heads = ", ".join(f"({int(x[0])},{int(x[1])})" for x in h["identified"])
    return f"{heads}: top {h['k']} of {h['n_layers'] * h['n_heads']}"


def heads_share(results: Results) -> str:
    """Their share of the positive score mass (the value C5 reads) with its bootstrap interval, and uniform."""
    h = _doc(results, "03")
    s, n_all = num(h["top_share_of_score"]), h["n_layers"] * h["n_heads"]
    if "intervals" in h:
        iv = h["intervals"]["top_share_of_score"]
        text = f"{fmt(s)} [{fmt(num(iv['lo']))}, {fmt(num(iv['hi']))}] (n={iv['n']})"
    else:
        text = f"{fmt(s)} (no interval written)"
    return f"{text}; uniform {fmt(h['k'] / n_all)}"


def block_drop(results: Results) -> str:
    """C6's relative drop of the modality-following rate with the identified heads blocked, with its interval."""
    d = _doc(results, "04")["relative_drop"]
    return f"{fmt(num(d['mean']))} [{fmt(num(d['lo']))}, {fmt(num(d['hi']))}] (n={d['n']})"


ROWS: tuple[tuple[str, Callable[[Results], str]], ...] = (
    ("layers x heads", architecture),
    ("strongest instruction->last knockout: where (C2)", knockout_layer),
    ("its INSSD, ratio of means (A3), 95% interval", knockout_effect),
    ("identified heads (layer, head) (C5)", identified_heads),
    ("their share of the positive score mass (C5), 95% interval", heads_share),
    ("relative MFR drop with them blocked (C6), 95% interval", block_drop),
)


def _cell(fn: Callable[[Results], str], results: Results) -> str:
    try:
        return fn(results)
    except MissingMeasurement:  # only an absent measurement; a bug raises
        return NOT_MEASURED


def anchor(model: str) -> str:
    """The anchor GitHub gives the heading ``## Model `<model>` `` ("model-smol")."""
    return re.sub(r"[^a-z0-9 _-]", "", f"model {model}".lower()).replace(" ", "-")


def headline(measured: str) -> str:
    """The first clause of a rule's measured text (up to its first "; " outside brackets): each rule states its deciding number
    there, with its interval and n; the model's section below the table has the whole text.

    Example: ``headline("drop 0.23 [0.18, 0.30] (n=200); random sets ...")`` -> ``"drop 0.23 [0.18, 0.30] (n=200)"``
    """
    depth = 0
    for i, ch in enumerate(measured):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if depth == 0 and measured.startswith("; ", i):
            return measured[:i].strip()
    return measured.strip()


def side_by_side(verdicts: Mapping[str, Sequence[_Verdict]], statements: Mapping[str, str]) -> list[str]:
    """The claim-by-claim table: claim | paper | one verdict column per model (each linking to its section;
    the original rule's verdict added where an amendment changed it; under it the measurement that decided it,
    ``headline``) | changes (yes where the measured
    verdicts differ, no where they agree, — where fewer than two models have a verdict)."""
    models = list(verdicts)
    lines = ["| claim | paper | " + " | ".join(f"`{m}`" for m in models) + " | changes |",
             "|---|---|" + "---|" * len(models) + "---|"]
    by_claim = {m: {v.claim: v for v in vs} for m, vs in verdicts.items()}
    for cid, statement in statements.items():
        cells, measured = [], set()
        for m in models:
            v = by_claim[m].get(cid)
            if v is None:
                cells.append(f"[{NOT_MEASURED}](#{anchor(m)})")
                continue
            cell = f"[**{v.verdict}**](#{anchor(m)})"
            if v.changed:
                cell += f"<br>(original rule: {v.original_verdict})"
            if v.verdict != NOT_MEASURED and v.measured:
                cell += f"<br>{headline(v.measured)}"
            cells.append(cell)
            if v.verdict != NOT_MEASURED:
                measured.add(v.verdict)
        n_measured = sum(1 for m in models if cid in by_claim[m] and by_claim[m][cid].verdict != NOT_MEASURED)
        changes = "—" if n_measured < 2 else "yes" if len(measured) > 1 else "no"
        lines.append(f"| {cid} | {statement} | " + " | ".join(cells) + f" | {changes} |")
    return lines


def contrast_table(results: Mapping[str, Results]) -> list[str]:
    """The contrast table, one column per model (``results``: model -> its results documents), one row per
    entry of ``ROWS``; a cell without its measurement reads "not measured"."""
    models = list(results)
    lines = ["| | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---|" * len(models)]
    for label, fn in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(fn, results[m]) for m in models) + " |")
    return lines
