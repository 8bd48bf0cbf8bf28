"""Measures of modality following: margins, INSSD, flip rate, MFR (design section 5).

Public API
----------
Targets                                   per-sample token ids: instructed answers, other answers, candidates
targets_for(mm, samples) -> Targets       from world samples (one token per answer in the tiny world)
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
from typing import Any, Sequence

import torch

from .models import MLLM

__all__ = ["Targets", "targets_for", "margins", "inssd", "flips", "follows", "answer_logits", "EPS"]

EPS = 1e-3


@dataclass(frozen=True)
class Targets:
    """Token ids per sample: ``pos`` (instructed modality's candidate answers), ``neg`` (the other
    modality's), ``cand`` (every candidate answer of the question, for the MFR argmax), and
    ``answer_index`` (position of the instructed answer in ``cand``)."""

    pos: list[list[int]]
    neg: list[list[int]]
    cand: list[list[int]]
    answer_index: list[int]

    def __len__(self) -> int:
        return len(self.pos)

    def subset(self, idx: Sequence[int]) -> "Targets":
        return Targets([self.pos[i] for i in idx], [self.neg[i] for i in idx], [self.cand[i] for i in idx],
                       [self.answer_index[i] for i in idx])


def targets_for(mm: MLLM, samples: Sequence[Any]) -> Targets:
    """Targets of world samples (conflict samples need ``other_answer``; others use the best wrong
    candidate as ``neg`` at scoring time, so ``neg`` lists every wrong candidate)."""
    from .evaluate import candidate_ids

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
        out.append(int(logits[b, c].argmax()) == targets.answer_index[b])
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
