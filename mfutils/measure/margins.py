"""Measures on answer logits: the instructed margin, INSSD, flips, instructed wins (design section 5).

Public API
----------
EPS                                               1e-3, the INSSD denominator's floor
margins(logits, targets, constrained=True) -> Tensor[B]   log P+ - log P- (or P+ - P- unconstrained)
inssd(m, m_new, eps=EPS) -> Tensor[B]             per-sample normalised margin change (mean it for INSSD)
flips(m, m_new) -> BoolTensor[B]                  the decision between the two modalities changed sign
instructed_wins(logits, targets) -> BoolTensor[B] argmax over the candidates is the instructed answer (MFR)

``logits``: [B, V] answer-position logits (``mfutils.measure.answers.answer_logits``); ``targets``:
``mfutils.measure.answers.Targets`` of the same B samples. Whole-model "does it follow?" flags over a sample
set are ``mfutils.measure.follow.follows``.

Example::

    m = margins(answer_logits(mm, enc), targets_for(mm, samples))     # [B]
    ok = instructed_wins(answer_logits(mm, enc), targets_for(mm, samples))
"""

from __future__ import annotations

import torch

from mfutils.measure.answers import Targets

__all__ = ["EPS", "margins", "inssd", "flips", "instructed_wins"]

EPS = 1e-3


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

    Example::

        m = margins(logits, targets)          # [B], positive: the instructed side wins the pair
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    lp_pos, lp_neg = _gather_lse(logp, targets.pos), _gather_lse(logp, targets.neg)
    if constrained:
        return lp_pos - lp_neg
    return lp_pos.exp() - lp_neg.exp()


def inssd(m: torch.Tensor, m_new: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample normalised change of the instructed margin, (m' - m) / (|m| + eps), [B] -> [B].

    INSSD (ours, within the paper's binary-constraint description) is the mean of this over samples:
    0 no effect, -1 the margin is erased, below -1 the decision flips toward the other modality,
    positive the intervention strengthens following.

    Example: ``inssd(m, m_knocked).mean()``.
    """
    return (m_new - m) / (m.abs() + eps)


def flips(m: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """True where the pairwise decision (sign of the margin) changed, [B] -> BoolTensor [B].

    Example: ``flips(m, m_knocked).float().mean()``.
    """
    return torch.sign(m) != torch.sign(m_new)


def instructed_wins(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """True where the argmax over the question's candidates is the instructed answer (MFR numerator),
    [B, V] -> BoolTensor [B] (on the CPU).

    Example: ``instructed_wins(answer_logits(mm, enc), targets).float().mean()``.
    """
    out = []
    for b in range(logits.shape[0]):
        c = torch.tensor(targets.cand[b], device=logits.device)
        best = int(logits[b, c].argmax())
        out.append(best in targets.answer_set[b] if targets.answer_set is not None else best == targets.answer_index[b])
    return torch.tensor(out, dtype=torch.bool)
