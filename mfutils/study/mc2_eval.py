"""MC2 with a model: which samples it can score, the paper's per-model filter, and MFR on MC2.

The data layer (``mfutils.data.mc2``) builds MC2 samples and splits without a model; this module holds every
MC2 step that runs one. Correctness is ``mfutils.measure.follow.follows`` (the argmax over a sample's
candidates is its answer), the one path of the package.

Public API
----------
scorable(mm, samples) -> (kept, dropped)          the samples mm can score; the others with their cause
filter_for_model(mm, samples) -> (kept, report)   the paper's per-model filter (knows both answers)
model_keep(mm, model_filter=True) -> mc2.Keep     the filter that ``mc2.build_splits(keep=...)`` applies
evaluate_mc2(mm, samples) -> dict     MFR per instruction and single-modality accuracy, with intervals

Example::

    samples, dropped = scorable(mm, record_samples(records[:50], paths[:50]))     # mfutils.data.mc2
    res = evaluate_mc2(mm, samples)                                              # res["follow_image"]["rate"]
"""

from __future__ import annotations

from typing import Any, Sequence

from mfutils.data.mc2 import Keep, counterparts_mc2
from mfutils.data.sample import Sample
from mfutils.measure.answers import UnscorableError, targets_from_candidates
from mfutils.measure.follow import follows
from mfutils.measure.stats import proportion
from mfutils.model.loading import MLLM

__all__ = ["scorable", "filter_for_model", "model_keep", "evaluate_mc2"]


def scorable(mm: MLLM, samples: Sequence[Sample]) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Split ``samples`` into those ``mm`` can score (``targets_from_candidates``: each side has a first token
    that carries content and is not the other side's) and the dropped ones (record, task, cause, reason); the
    cause is one of ``mfutils.measure.answers.UNSCORABLE_CAUSES`` (empty_side, unknown_token, no_content_token,
    shared_first_token).

    Example::

        kept, dropped = scorable(mm, samples)   # dropped: [{"record": 3, "task": "color", "cause": "empty_side", ...}]
    """
    kept, dropped = [], []
    for s in samples:
        try:
            targets_from_candidates(mm, [s])
        except UnscorableError as exc:
            dropped.append({"record": s.index, "task": s.attribute, "cause": exc.cause,
                            "reason": str(exc).split(":", 1)[-1].strip()[:200]})
        else:
            kept.append(s)
    return kept, dropped


def _correct(mm: MLLM, samples: Sequence[Sample], batch_size: int) -> list[bool]:
    """Per sample (input order): does ``mm`` give the sample's answer (``follows``)?"""
    return follows(mm, samples, batch_size=batch_size).tolist() if samples else []


def filter_for_model(mm: MLLM, samples: Sequence[Sample], batch_size: int = 16) -> tuple[list[Sample], dict[str, Any]]:
    """The paper's per-model filter: keep the samples whose record the model answers right both image-only and
    text-only (it knows both answers, so a failure is a failure of arbitration). Returns the kept samples and
    a report (counts per task, the kept record indices).

    Example::

        kept, report = filter_for_model(mm, samples)       # report["kept_records"], report["n_records"]
    """
    records: dict[int, Sample] = {}
    for s in samples:
        records.setdefault(s.index, s)
    reps = list(records.values())
    pairs = [counterparts_mc2(s) for s in reps]
    img_ok = _correct(mm, [p[0] for p in pairs], batch_size)
    txt_ok = _correct(mm, [p[1] for p in pairs], batch_size)
    keep = {s.index for s, a, b in zip(reps, img_ok, txt_ok) if a and b}
    kept = [s for s in samples if s.index in keep]
    per_task: dict[str, dict[str, int]] = {}
    for s, a, b in zip(reps, img_ok, txt_ok):
        t = per_task.setdefault(s.attribute, {"n": 0, "image_only_right": 0, "text_only_right": 0, "kept": 0})
        t["n"] += 1
        t["image_only_right"] += int(a)
        t["text_only_right"] += int(b)
        t["kept"] += int(a and b)
    return kept, {"n_records": len(reps), "n_kept_records": len(keep), "kept_records": sorted(keep),
                  "image_only_right": int(sum(img_ok)), "text_only_right": int(sum(txt_ok)), "per_task": per_task}


def model_keep(mm: MLLM, model_filter: bool = True, batch_size: int = 16) -> Keep:
    """The ``mfutils.data.mc2.Keep`` of ``mm``: drop the probe samples it cannot score (``scorable``) and, with
    ``model_filter``, keep those of the first ``limit`` scorable ones whose record it knows from each modality
    alone (``filter_for_model``; its report without the kept record list).

    Example::

        splits, info = build_splits(records, paths, MC2_SIZES, keep=model_keep(mm))     # mfutils.data.mc2
    """
    def keep(probe: list[Sample], limit: int) -> tuple[list[Sample], list[dict[str, Any]], dict[str, Any] | None]:
        ok, dropped = scorable(mm, probe)
        if not model_filter:
            return ok, dropped, None
        ok, report = filter_for_model(mm, ok[:limit], batch_size=batch_size)
        return ok, dropped, {k: v for k, v in report.items() if k != "kept_records"}

    return keep


def evaluate_mc2(mm: MLLM, samples: Sequence[Sample], batch_size: int = 16) -> dict[str, Any]:
    """MFR per instruction (follow_image, follow_text) on ``samples`` and accuracy on their image-only and
    text-only counterparts, each a proportion dict (rate, lo, hi, k, n; Wilson 95%), and per task.

    Example::

        res = evaluate_mc2(mm, record_samples(records[:50], paths[:50]))    # res["follow_image"]["rate"]
    """
    reps = {s.index: s for s in samples}
    pairs = [counterparts_mc2(s) for s in reps.values()]
    res: dict[str, Any] = {"model": mm.name, "n_records": len(reps), "n_samples": len(samples)}
    groups = {"follow_image": [s for s in samples if s.category == "follow_image"],
              "follow_text": [s for s in samples if s.category == "follow_text"],
              "image_only": [p[0] for p in pairs], "text_only": [p[1] for p in pairs]}
    for cat, ss in groups.items():
        ok = _correct(mm, ss, batch_size)
        res[cat] = proportion(ok)
        for task in sorted({s.attribute for s in ss}):
            res[f"{cat}/{task}"] = proportion([o for s, o in zip(ss, ok) if s.attribute == task])
    return res
