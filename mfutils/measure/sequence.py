"""Full-sequence candidate scoring: the teacher-forced log-probability of every token of each candidate answer.

First-token scoring (``mfutils.measure.answers``) reads one position: a candidate counts through its first token
that carries content, and a word whose first token is a byte fragment or the other side's token is left out.
Full-sequence scoring reads the whole candidate instead: log P(candidate | prompt) = the sum over its tokens, as
the model writes them right after the prompt (``answers.answer_tokens``), of the log-probability of each token
given the prompt and the tokens before it. A side's probability is the sum over its candidates (log-sum-exp), so
words that share a first token or start with a bare space or a byte fragment still count, each as itself. It
costs one forward of the batch per candidate slot (the k-th candidate of every sample together), against one
forward for first-token scoring; the chain's interventions use first-token scoring (paper/METHOD.md says why).

Public API
----------
sequence_logprobs(mm, enc, candidates) -> list[Tensor[K_b]]   log P(candidate | prompt) per sample and candidate
side_words(sample) -> (instructed words, other words)           what P+ and P- sum over
sequence_margins(mm, enc, samples) -> (margin [B], follows [B])  log P+ - log P- and "the best candidate is
                                                                 the instructed side's", full-sequence

Example::

    enc = encode(mm, [s.prompt for s in samples])                   # no appended answers (left padding)
    m, ok = sequence_margins(mm, enc, samples)                      # [B] float, [B] bool
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mfutils.measure.answers import _sides, answer_tokens
from mfutils.model.loading import MLLM

__all__ = ["sequence_logprobs", "side_words", "sequence_margins"]


def _extend(inputs: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``inputs`` with ``ids`` [B, L] appended on the right (``mask`` 1 where a token is real): input_ids,
    attention_mask, and any other per-token tensor of the processor (zeros, e.g. token type ids)."""
    B, T = inputs["input_ids"].shape
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], ids.to(inputs["input_ids"])], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], mask.to(inputs["attention_mask"])], dim=1)
    for k, v in inputs.items():
        if k not in ("input_ids", "attention_mask") and v.dim() == 2 and tuple(v.shape) == (B, T) \
                and not v.is_floating_point():
            out[k] = torch.cat([v, torch.zeros(B, ids.shape[1], dtype=v.dtype, device=v.device)], dim=1)
    return out


@torch.no_grad()
def sequence_logprobs(mm: MLLM, enc: Any, candidates: Sequence[Sequence[str]],
                      **forward_kwargs: Any) -> list[torch.Tensor]:
    """log P(candidate | prompt), summed over the candidate's tokens, per sample: a list of B float tensors
    [K_b] (K_b = ``len(candidates[b])``, on the CPU). ``enc``: ``mfutils.model.groups.encode`` of the B prompts
    without appended answers (left padding: every prompt ends at the last position). A candidate with an unknown
    token gets -inf (probability 0). One forward of the batch per candidate slot k (the k-th candidate of every
    sample, right-padded); ``forward_kwargs`` go to every forward.

    Example::

        lp = sequence_logprobs(mm, encode(mm, prompts), [["wood", "木材"], ["metal", "金属"]])   # [2], [2]
    """
    ids = enc.inputs["input_ids"]
    B = ids.shape[0]
    if len(candidates) != B:
        raise ValueError(f"got {len(candidates)} candidate lists for {B} prompts")
    if bool(enc.groups.answer.any()):
        raise ValueError("sequence_logprobs needs prompts encoded without answers (encode(mm, prompts))")
    toks = [[answer_tokens(mm, w) for w in cs] for cs in candidates]
    unk = getattr(mm.tokenizer, "unk_token_id", None)
    pad = mm.tokenizer.pad_token_id if mm.tokenizer.pad_token_id is not None else 0
    out = [torch.full((len(cs),), float("-inf")) for cs in candidates]
    for k in range(max((len(cs) for cs in candidates), default=0)):
        rows = [toks[b][k] if k < len(toks[b]) else [] for b in range(B)]
        L = max(len(r) for r in rows)
        if L == 0:
            continue
        app = torch.full((B, L), pad, dtype=torch.long)
        real = torch.zeros(B, L, dtype=torch.long)
        for b, r in enumerate(rows):
            app[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            real[b, : len(r)] = 1
        inputs = _extend(enc.inputs, app.to(ids.device), real.to(ids.device))
        # the last L + 1 positions: position T - 1 + j predicts appended token j
        logits = mm.model(**inputs, logits_to_keep=L + 1, **forward_kwargs).logits[:, :L].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, app.to(logits.device)[..., None])[..., 0].cpu()
        per = (logp * real).sum(dim=1)
        for b, r in enumerate(rows):
            if r and unk not in r:
                out[b][k] = per[b]
    return out


def side_words(sample: Any) -> tuple[list[str], list[str]]:
    """The words P+ and P- sum over: the instructed side's and the other side's candidate lists (MC2), or the
    world's answer against the other modality's answer (conflict samples) or every wrong candidate."""
    if getattr(sample, "answer_img_candidate_list", None) is not None:
        lists = {"image": list(sample.answer_img_candidate_list), "text": list(sample.answer_text_candidate_list)}
        p_side, n_side = _sides(sample)
        return lists[p_side], lists[n_side]
    if sample.other_answer is not None:
        return [sample.answer], [sample.other_answer]
    return [sample.answer], [c for c in sample.candidates if c != sample.answer]


def sequence_margins(mm: MLLM, enc: Any, samples: Sequence[Any],
                     **forward_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-sequence margin and decision per sample: ``margin`` [B] = log P+ - log P- with P+ (P-) the summed
    full-sequence probabilities of the instructed (other) side's candidates (the binary constraint: the log-odds
    of the renormalised pair); ``follows`` [B] bool: the single most probable candidate is the instructed side's.
    A side with no scorable candidate gives -inf (margin -inf or +inf, or nan when both sides have none).

    Example::

        m, ok = sequence_margins(mm, encode(mm, [s.prompt for s in samples]), samples)
    """
    words = [side_words(s) for s in samples]
    lp = sequence_logprobs(mm, enc, [p + n for p, n in words], **forward_kwargs)
    margin = torch.empty(len(samples))
    follows = torch.zeros(len(samples), dtype=torch.bool)
    for b, ((p, _), v) in enumerate(zip(words, lp)):
        margin[b] = torch.logsumexp(v[: len(p)], 0) - torch.logsumexp(v[len(p):], 0)
        follows[b] = bool(len(v) and int(torch.argmax(v)) < len(p) and torch.isfinite(v.max()))
    return margin, follows
