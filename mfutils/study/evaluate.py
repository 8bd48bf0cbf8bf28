"""Behavioural evaluation on the world: accuracy per category with intervals, and per-sample predictions.

The answer of the model is the argmax of the answer-position logits over the candidate answers of the
asked attribute (8 colours or 6 shapes), each one token in the tiny world.

Public API
----------
EVAL_CATEGORIES                       the categories reported by ``mf eval``
predict(mm, samples, batch_size) -> list[dict]   per-sample prediction, margin, correctness
evaluate(mm, n, seed, batch_size) -> dict        {category: proportion dict (rate, lo, hi, k, n)}
quick_accuracy(mm, n, seed) -> dict[str, float]  the same, rates only (for training curves)

Example::

    evaluate(load_model("tiny"), n=1000, seed=1001)["follow_image"]["rate"]
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from mfutils.model.loading import MLLM
from mfutils.measure.stats import proportion
from mfutils.data.world import Sample, make_samples

__all__ = ["EVAL_CATEGORIES", "predict", "evaluate", "quick_accuracy", "candidate_ids"]

EVAL_CATEGORIES = ("follow_image", "follow_text", "image_only", "text_only", "agree", "no_instruction")


def candidate_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """One token id per answer word, [len(words)]: the word's token when it is one token (the tiny world), else
    the first token of the word as it follows the prompt (``metrics.first_token_ids``; real tokenizers and MC2
    answers). Raises a clear error if two words of the list would get the same id.

    Called once per sample on hot paths, so the lookup of each word list is cached per tokenizer.

    Example::

        candidate_ids(mm, ["red", "green"])          # [id_red, id_green]
    """
    ids = list(_candidate_ids(mm.tokenizer, mm.name, tuple(words)))
    if any(i is None for i in ids):
        from mfutils.measure.metrics import first_token_ids

        resolved = []
        for i, w in zip(ids, words):
            if i is None:
                first = first_token_ids(mm, [w])
                if not first:
                    raise ValueError(f"answer word {w!r} has no known first token for {mm.name!r} (its first piece is "
                                     "the unknown token): it cannot be scored; reword it or drop the sample")
                i = first[0]
            resolved.append(i)
        ids = resolved
    if len(set(ids)) != len(ids):
        dup = [w for w, i in zip(words, ids) if ids.count(i) > 1]
        raise ValueError(f"answer words {dup} start with the same token for {mm.name!r}, so they cannot be told apart "
                         "by the answer position's logits; use words with distinct first tokens")
    return ids  # type: ignore[return-value]


@lru_cache(maxsize=256)
def _candidate_ids(tokenizer: Any, name: str, words: tuple[str, ...]) -> tuple[int | None, ...]:
    ids: list[int | None] = []
    for w in words:
        toks = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        ids.append(int(toks[0]) if len(toks) == 1 else None)     # None: resolved by its first token
    return tuple(ids)


@torch.no_grad()
def predict(mm: MLLM, samples: Sequence[Sample], batch_size: int = 128, progress: bool = False) -> list[dict[str, Any]]:
    """Per-sample answer: ``pred``, ``correct``, ``follows_other`` and the log-odds ``margin`` of the answer
    over the other modality's answer (conflict samples) or over the best wrong candidate."""
    from mfutils.study.train import batch_inputs

    out: list[dict[str, Any]] = []
    mm.model.eval()
    for i in tqdm(range(0, len(samples), batch_size), desc="predict", disable=not progress):
        chunk = samples[i:i + batch_size]
        enc = batch_inputs(mm, chunk)
        logits = mm.model(**enc, logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        for j, s in enumerate(chunk):
            ids = candidate_ids(mm, s.candidates)
            lp = logp[j, ids]
            pred = s.candidates[int(lp.argmax())]
            ans = lp[s.candidates.index(s.answer)]
            if s.other_answer is not None:
                rival = lp[s.candidates.index(s.other_answer)]
            else:
                rival = torch.cat([lp[: s.candidates.index(s.answer)], lp[s.candidates.index(s.answer) + 1:]]).max()
            out.append({"index": s.index, "category": s.category, "attribute": s.attribute, "pred": pred,
                        "answer": s.answer, "other": s.other_answer, "correct": pred == s.answer,
                        "follows_other": s.other_answer is not None and pred == s.other_answer,
                        "margin": float(ans - rival), "heldout_template": s.heldout_template})
    return out


def evaluate(mm: MLLM, n: int = 1000, seed: int = 1001, batch_size: int = 128,
             categories: Sequence[str] = EVAL_CATEGORIES, heldout_share: float = 0.5,
             progress: bool = False) -> dict[str, Any]:
    """Accuracy per category on ``n`` fresh samples each (stream ``seed``), with Wilson 95% intervals.

    Instructed categories use a held-out instruction template for ``heldout_share`` of the samples;
    ``<category>/heldout`` and ``<category>/seen`` split them.
    """
    result: dict[str, Any] = {"model": mm.name, "seed": seed, "n_per_category": n}
    for ci, cat in enumerate(categories):
        samples = make_samples(n, seed, cat, start=ci * 1_000_000, heldout_share=heldout_share)
        preds = predict(mm, samples, batch_size, progress=progress)
        result[cat] = proportion([p["correct"] for p in preds])
        if any(s.template is not None for s in samples):
            for tag, flag in (("heldout", True), ("seen", False)):
                sub = [p["correct"] for p in preds if p["heldout_template"] == flag]
                if sub:
                    result[f"{cat}/{tag}"] = proportion(sub)
        for attr in ("color", "shape"):
            result[f"{cat}/{attr}"] = proportion([p["correct"] for p in preds if p["attribute"] == attr])
    return result


def quick_accuracy(mm: MLLM, n: int = 256, seed: int = 500) -> dict[str, float]:
    """Accuracy rates per category on ``n`` samples each (training-time monitor, no intervals)."""
    res = evaluate(mm, n=n, seed=seed, categories=EVAL_CATEGORIES, heldout_share=0.0)
    return {c: round(float(res[c]["rate"]), 4) for c in EVAL_CATEGORIES}
