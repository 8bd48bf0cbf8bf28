"""Measures of modality following: margins, INSSD, flip rate, MFR (design section 5).

Public API
----------
Targets                                   per-sample token ids: instructed answers, other answers, candidates
targets_for(mm, samples) -> Targets       per sample: candidate lists when the sample has them, else the
                                          world's one-token answers
targets_from_candidates(mm, samples) -> Targets   from ``answer_img_candidate_list`` / ``answer_text_candidate_list``
first_token_ids(mm, words) -> list[int]   deduplicated first tokens of answers, as they follow the prompt
CandidateOverlapError                     the two sides' candidates share every first token (no binary measure)
margins(logits, targets, constrained=True) -> Tensor[B]
inssd(m, m_new, eps=1e-3) -> Tensor[B]    per-sample normalised margin change (mean it for INSSD)
flips(m, m_new) -> BoolTensor[B]          the decision between the two modalities changed sign
follows(logits, targets) -> BoolTensor[B] argmax over the candidates is the instructed answer (MFR)
answer_logits(mm, enc) -> Tensor[B, V]    logits at the answer position

Example::

    t = targets_for(mm, samples); enc = encode(mm, [s.prompt for s in samples])
    m = margins(answer_logits(mm, enc), t)        # log P+ - log P- per sample
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch

from mfutils.model.loading import MLLM

__all__ = ["Targets", "targets_for", "targets_from_candidates", "first_token_ids", "CandidateOverlapError",
           "margins", "inssd", "flips", "follows", "answer_logits", "EPS"]

EPS = 1e-3


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


def _answer_prefix(mm: MLLM) -> str:
    """The rendered text that an answer follows (the end of the chat template after the user turn)."""
    from mfutils.model.groups import _SENTINEL, _chat_template, _render_chat

    if _chat_template(mm):
        return _render_chat(mm, [{"type": "text", "text": _SENTINEL}]).split(_SENTINEL, 1)[1]
    return mm.spec.template.format(user=_SENTINEL).split(_SENTINEL, 1)[1]


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
    from mfutils.study.evaluate import candidate_ids

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


def _gather_lse(logp: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    width = max(len(x) for x in ids)
    idx = torch.tensor([x + [x[0]] * (width - len(x)) for x in ids], device=logp.device)
    valid = torch.tensor([[True] * len(x) + [False] * (width - len(x)) for x in ids], device=logp.device)
    vals = logp.gather(1, idx).masked_fill(~valid, float("-inf"))
    return torch.logsumexp(vals, dim=1)


def margins(logits: torch.Tensor, targets: Targets, constrained: bool = True) -> torch.Tensor:
    """Margin of the instructed modality at the answer position, [B, V] logits -> [B].

    Reconstruction (ours; the paper's exact formula is not public): P+ and P- are the summed
    probabilities of the instructed and the other modality's candidate answers. With the binary
    distribution constraint (default) they are renormalised over the pair and the margin is the
    log-odds of the pair, log P+ - log P-. Unconstrained: the raw probability difference P+ - P-,
    which counts probability mass leaking to unrelated tokens.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    lp_pos, lp_neg = _gather_lse(logp, targets.pos), _gather_lse(logp, targets.neg)
    if constrained:
        return lp_pos - lp_neg
    return lp_pos.exp() - lp_neg.exp()


def inssd(m: torch.Tensor, m_new: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample normalised change of the instructed margin, (m' - m) / (|m| + eps).

    INSSD (ours, within the paper's binary-constraint description) is the mean of this over samples:
    0 no effect, -1 the margin is erased, below -1 the decision flips toward the other modality,
    positive the intervention strengthens following.
    """
    return (m_new - m) / (m.abs() + eps)


def flips(m: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """True where the pairwise decision (sign of the margin) changed."""
    return torch.sign(m) != torch.sign(m_new)


def follows(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """True where the argmax over the question's candidates is the instructed answer (MFR numerator)."""
    out = []
    for b in range(logits.shape[0]):
        c = torch.tensor(targets.cand[b], device=logits.device)
        best = int(logits[b, c].argmax())
        out.append(best in targets.answer_set[b] if targets.answer_set is not None else best == targets.answer_index[b])
    return torch.tensor(out, dtype=torch.bool)


def answer_logits(mm: MLLM, enc: Any, **forward_kwargs: Any) -> torch.Tensor:
    """Logits at the position that predicts the answer (the ``last`` group), [B, V].

    Without appended answers that is the final position (left padding), and only its logits are computed;
    with answers appended (``encode(..., answers=...)``) it is each sample's ``last`` position.
    """
    if not bool(enc.groups.answer.any()):
        return mm.model(**enc.inputs, logits_to_keep=1, **forward_kwargs).logits[:, -1]
    logits = mm.model(**enc.inputs, **forward_kwargs).logits
    idx = enc.groups.last_index().to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]
