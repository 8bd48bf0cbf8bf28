"""What counts as an answer: candidate token ids, targets per sample, and the answer-position logits.

Public API
----------
candidate_ids(mm, words) -> list[int]     one token id per answer word, [len(words)] (cached per tokenizer)
first_token_ids(mm, words) -> list[int]   deduplicated first tokens of answers, as they follow the prompt
Targets                                   per-sample token ids: instructed answers, other answers, candidates
targets_for(mm, samples) -> Targets       per sample: candidate lists when the sample has them, else the
                                          world's one-token answers
targets_from_candidates(mm, samples) -> Targets   from ``answer_img_candidate_list`` / ``answer_text_candidate_list``
CandidateOverlapError                     the two sides' candidates share every first token (no binary measure)
answer_logits(mm, enc) -> Tensor[B, V]    logits at the answer position

Example::

    t = targets_for(mm, samples); enc = encode(mm, [s.prompt for s in samples])
    logits = answer_logits(mm, enc)           # [B, V]; margins(logits, t) in mfutils.measure.margins
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch

from mfutils.model.groups import SENTINEL, chat_template, render_chat
from mfutils.model.loading import MLLM

__all__ = ["candidate_ids", "first_token_ids", "Targets", "targets_for", "targets_from_candidates",
           "CandidateOverlapError", "answer_logits"]


@dataclass(frozen=True)
class Targets:
    """Token ids per sample: ``pos`` (instructed modality's candidate answers), ``neg`` (the other
    modality's), ``cand`` (every candidate answer of the question, for the MFR argmax), and
    ``answer_index`` (position of the instructed answer in ``cand``). ``answer_set`` (candidate lists only):
    the positions in ``cand`` that count as the instructed answer (all of ``pos``)."""

    pos: list[list[int]]
    neg: list[list[int]]
    cand: list[list[int]]
    answer_index: list[int]
    answer_set: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.pos)

    def subset(self, idx: Sequence[int]) -> "Targets":
        return Targets([self.pos[i] for i in idx], [self.neg[i] for i in idx], [self.cand[i] for i in idx],
                       [self.answer_index[i] for i in idx],
                       None if self.answer_set is None else [self.answer_set[i] for i in idx])


class CandidateOverlapError(ValueError):
    """Every first token of one side's candidate answers is also a first token of the other side's."""


def candidate_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """One token id per answer word, [len(words)]: the word's token when it is one token (the tiny world), else
    the first token of the word as it follows the prompt (``first_token_ids``; real tokenizers and MC2
    answers). Raises a clear error if two words of the list would get the same id.

    Called once per sample on hot paths, so the lookup of each word list is cached per tokenizer.

    Example::

        candidate_ids(mm, ["red", "green"])          # [id_red, id_green]
    """
    ids = list(_candidate_ids(mm.tokenizer, mm.name, tuple(words)))
    if any(i is None for i in ids):
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


def _answer_prefix(mm: MLLM) -> str:
    """The rendered text that an answer follows (the end of the chat template after the user turn)."""
    if chat_template(mm):
        return render_chat(mm, [{"type": "text", "text": SENTINEL}]).split(SENTINEL, 1)[1]
    return mm.spec.template.format(user=SENTINEL).split(SENTINEL, 1)[1]


@lru_cache(maxsize=4096)
def _first_token(tokenizer: Any, prefix: str, word: str) -> int:
    sep = "" if not prefix or prefix[-1].isspace() else " "
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(prefix + sep + word, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return int(full[len(head)])
    alone = tokenizer(sep + word, add_special_tokens=False)["input_ids"]  # the answer merged into the prompt's end
    if not alone:
        raise ValueError(f"answer {word!r} tokenizes to nothing")
    return int(alone[0])


def first_token_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """Deduplicated ids of the first token of each answer in ``words`` as the model would write it right after
    the prompt (after the template's assistant prefix, with a space unless that prefix ends in whitespace).
    Answers whose first token is the unknown token are left out.

    Example::

        first_token_ids(mm, ["dog", "Dog", "puppy"])      # e.g. [5562, 14777, 41189]
    """
    prefix = _answer_prefix(mm)
    unk = getattr(mm.tokenizer, "unk_token_id", None)
    out: dict[int, None] = {}
    for w in words:
        if not w.strip():
            raise ValueError(f"empty candidate answer in {list(words)!r}")
        tid = _first_token(mm.tokenizer, prefix, w.strip())
        if tid != unk:                        # an unknown word says nothing about either side
            out.setdefault(tid, None)
    return list(out)


def _sides(s: Any) -> tuple[str, str]:
    """("image"|"text" for P+, the other for P-) of a sample with candidate lists."""
    if s.instructed in ("image", "text"):
        side = s.instructed
    elif s.image_answer is not None and s.answer == s.image_answer:
        side = "image"
    elif s.text_answer is not None and s.answer == s.text_answer:
        side = "text"
    else:
        raise ValueError(f"sample {s.index}: cannot tell which side's candidates are the answer {s.answer!r}")
    return side, ("text" if side == "image" else "image")


def targets_from_candidates(mm: MLLM, samples: Sequence[Any]) -> Targets:
    """Targets from candidate lists: P+ sums the first-token probabilities of the instructed side's candidates
    (``answer_img_candidate_list`` or ``answer_text_candidate_list``), P- the other side's (design section 5).

    First tokens are deduplicated within a side; a first token shared by both sides counts for neither (it
    cannot tell them apart). If that leaves a side empty, ``CandidateOverlapError`` names the sample.
    ``cand`` = pos + neg; following (MFR) = the argmax over ``cand`` is one of ``pos`` (``answer_set``).

    Example::

        t = targets_from_candidates(mm, mc2_samples)
        m = margins(answer_logits(mm, encode(mm, [s.prompt for s in mc2_samples])), t)   # [B]
    """
    pos, neg, cand, ai, aset = [], [], [], [], []
    for s in samples:
        lists = {"image": s.answer_img_candidate_list, "text": s.answer_text_candidate_list}
        if lists["image"] is None or lists["text"] is None:
            raise ValueError(f"sample {s.index} has no answer_img_candidate_list / answer_text_candidate_list")
        ids = {k: first_token_ids(mm, v) for k, v in lists.items()}
        shared = set(ids["image"]) & set(ids["text"])
        ids = {k: [i for i in v if i not in shared] for k, v in ids.items()}
        if not ids["image"] or not ids["text"]:
            raise CandidateOverlapError(
                f"sample {s.index} ({(s.meta or {}).get('task', s.category)}): the image-side candidates "
                f"{list(lists['image'])} and the text-side candidates {list(lists['text'])} start with the same "
                f"tokens for {mm.name!r}, so P+ and P- cannot be told apart. Drop the sample "
                "(mfutils.data.mc2.scorable(mm, samples) does) or give candidates with distinct first tokens."
            )
        p_side, n_side = _sides(s)
        pos.append(ids[p_side])
        neg.append(ids[n_side])
        cand.append(ids[p_side] + ids[n_side])
        ai.append(0)
        aset.append(list(range(len(ids[p_side]))))
    return Targets(pos, neg, cand, ai, aset)


def _has_candidate_lists(s: Any) -> bool:
    return getattr(s, "answer_img_candidate_list", None) is not None


def targets_for(mm: MLLM, samples: Sequence[Any]) -> Targets:
    """Targets of a list of samples, per sample: candidate lists when it carries them
    (``targets_from_candidates``), else the world's one-token answers (conflict samples need
    ``other_answer``; others use the best wrong candidate as ``neg`` at scoring time, so ``neg`` lists every
    wrong candidate).

    Example::

        t = targets_for(mm, samples)          # world and MC2 samples alike
    """
    if any(_has_candidate_lists(s) for s in samples):
        parts = [targets_from_candidates(mm, [s]) if _has_candidate_lists(s) else targets_for(mm, [s]) for s in samples]
        return Targets([p.pos[0] for p in parts], [p.neg[0] for p in parts], [p.cand[0] for p in parts],
                       [p.answer_index[0] for p in parts],
                       [p.answer_set[0] if p.answer_set is not None else [p.answer_index[0]] for p in parts])
    pos, neg, cand, ai = [], [], [], []
    for s in samples:
        ids = candidate_ids(mm, s.candidates)
        a = s.candidates.index(s.answer)
        pos.append([ids[a]])
        if s.other_answer is not None:
            neg.append([ids[s.candidates.index(s.other_answer)]])
        else:
            neg.append([i for j, i in enumerate(ids) if j != a])
        cand.append(ids)
        ai.append(a)
    return Targets(pos, neg, cand, ai)


def answer_logits(mm: MLLM, enc: Any, **forward_kwargs: Any) -> torch.Tensor:
    """Logits at the position that predicts the answer (the ``last`` group), [B, V].

    Without appended answers that is the final position (left padding), and only its logits are computed;
    with answers appended (``encode(..., answers=...)``) it is each sample's ``last`` position.

    Example::

        logits = answer_logits(mm, encode(mm, [s.prompt for s in samples]).to(mm.device))   # [B, V]
    """
    if not bool(enc.groups.answer.any()):
        return mm.model(**enc.inputs, logits_to_keep=1, **forward_kwargs).logits[:, -1]
    logits = mm.model(**enc.inputs, **forward_kwargs).logits
    idx = enc.groups.last_index().to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]
