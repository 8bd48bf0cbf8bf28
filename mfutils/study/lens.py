"""Logit lens onto one answer direction, and the Latent Decision Agreement Rate (LDAR, ours).

Design section 5 (claim C3). The paper (arXiv 2602.03677) names LDAR but does not define it publicly;
``ldar`` is our reconstruction.

Public API
----------
direction_rows(mm, pos, neg) -> (Tensor[B, D], Tensor[B])   W_U[pos] - W_U[neg] and the bias difference
lens_diff(mm, hidden, d, b) -> Tensor[..., B, T]            logit-lens difference along those rows
ldar(mm, samples | Prepared, batch_size=64, progress=True, seed=0) -> dict   {"anchor_last" | "anchor_mean" |
        "last" | "random": {"rate", "lo", "hi": [L+1], "n"}, "agree": ...}; "random" (a baseline, ours, A5)
        also has "groups" (RANDOM_GROUPS) and "picked" {group: count}
READS                       ("anchor_last", "anchor_mean", "last", "random")
RANDOM_GROUPS               the groups the random-token baseline draws from

Example::

    r = ldar(mm, make_split("test", 16))
    r["anchor_last"]["rate"]          # [L + 1] agreement per hidden state (0 = embeddings)
    r["random"]["rate"]               # the same lens at one random non-instruction token per sample
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.answers import candidate_ids
from mfutils.measure.prepared import Prepared, samples_of
from mfutils.measure.stats import proportion
from mfutils.model.groups import Encoded, TokenGroups
from mfutils.model.hooks import residual_stream
from mfutils.model.loading import MLLM
from mfutils.study.flow_batches import flow_batches, gather, subset_or_data

__all__ = ["direction_rows", "lens_diff", "ldar", "READS", "RANDOM_GROUPS"]

READS: tuple[str, ...] = ("anchor_last", "anchor_mean", "last", "random")
# The random-token baseline (A5) draws among the prompt's content tokens outside the instruction; never the
# instruction, the answer position ("last", its own baseline), the chat template and BOS ("other"), padding.
RANDOM_GROUPS: tuple[str, ...] = ("system", "image", "context", "question", "constraint")


def direction_rows(mm: MLLM, pos: Sequence[int | Sequence[int]], neg: Sequence[int | Sequence[int]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_U[pos] - W_U[neg] [B, D], bias[pos] - bias[neg] [B]) of the unembedding, one entry per sample.

    An entry may be a list of token ids (MC2 candidate lists): its row is the mean unembedding row of the
    list (ours: the direction between the two sides' average answers). One id gives that id's row exactly.

    Example::

        d, b = direction_rows(mm, [img_id], [txt_id])      # d [1, D], b [1]
    """
    W = mm.unembed.weight
    bias = getattr(mm.unembed, "bias", None)

    def ids(x: int | Sequence[int]) -> list[int]:
        return [int(x)] if isinstance(x, (int, np.integer)) else [int(i) for i in x]

    def mean_rows(t: torch.Tensor, entries: Sequence[int | Sequence[int]]) -> torch.Tensor:
        return torch.stack([t[ids(e)].float().mean(0) for e in entries])

    d = mean_rows(W, pos) - mean_rows(W, neg)
    b = mean_rows(bias, pos) - mean_rows(bias, neg) if bias is not None else torch.zeros(len(pos), device=W.device)
    return d, b


def lens_diff(mm: MLLM, hidden: torch.Tensor, d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logit-lens difference per position: ``logit_lens(hidden)[..., pos] - [..., neg]`` with the two
    columns per sample given as the row difference ``d`` [B, D] (and bias ``b`` [B]); hidden [..., B, T, D]
    -> [..., B, T]. Avoids materialising [..., T, V] for large vocabularies.

    Example::

        diff = lens_diff(mm, residual_stream(mm, enc), *direction_rows(mm, img, txt))   # [L+1, B, T]
    """
    normed = mm.final_norm(hidden).float()
    return torch.einsum("...btd,bd->...bt", normed, d) + b[:, None]


@torch.no_grad()
def ldar(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64, progress: bool = True,
         seed: int = 0) -> dict[str, Any]:
    """Latent Decision Agreement Rate per hidden state (layer 0 = embeddings ... L = last layer output).

    Our reconstruction: at hidden state l the logit lens (``hooks.logit_lens``: final norm + unembedding)
    gives a latent decision sign(lens[image_answer] - lens[text_answer]), read at the instruction anchor's
    last token (``anchor_last``), averaged over the anchor's tokens before the sign (``anchor_mean``), and
    at the answer position (``last``). LDAR(l) = share of samples whose latent decision equals the model's
    final decision, sign(logit[image_answer] - logit[text_answer]) at the answer position. Baseline (ours,
    amendment A5): the same lens at one random token per sample (``random``), drawn uniformly among the
    positions of ``RANDOM_GROUPS`` (content outside the instruction; not the answer position, the template,
    BOS or padding) by ``numpy.random.default_rng([seed, i])``, i the sample's input position (so the draw
    does not depend on the batching); ``random["picked"]`` counts the groups drawn. Conflict samples
    with an instruction only (input order); a list runs in consecutive batches of ``batch_size``, a
    ``Prepared`` of such samples in its own (``mfutils.study.flow_batches``). Returns
    ``{"anchor_last" | "anchor_mean" | "last" | "random": {"rate", "lo", "hi": [L+1], "n": int}}`` with Wilson 95%
    intervals (``stats.proportion``); ``"agree"`` holds the per-sample agreement arrays (bool [L+1, N]).

    Example::

        r = ldar(mm, samples)
        r["anchor_last"]["rate"][-1]          # agreement at the last hidden state
    """
    keep = [s for s in samples_of(samples) if s.other_answer is not None and s.image_answer is not None
            and s.text_answer is not None and s.image_answer != s.text_answer]

    def draw(index: list[int], g: TokenGroups) -> tuple[torch.Tensor, list[str]]:
        """One random allowed position per sample of the batch, [B], and the group each lies in."""
        allowed = g.union(*RANDOM_GROUPS) & ~g["instruction"] & ~g["last"] & ~g.pad & ~g.answer
        picks, names = [], []
        for b, i in enumerate(index):
            where = allowed[b].nonzero()[:, 0].cpu().numpy()
            if not where.size:
                raise ValueError(f"sample {keep[i].index} has no token in {RANDOM_GROUPS} outside the instruction "
                                 "for the random-token LDAR baseline")
            pos = int(where[np.random.default_rng([seed, i]).integers(where.size)])
            picks.append(pos)
            names.append(next(n for n in RANDOM_GROUPS if bool(g[n][b, pos])))
        return torch.tensor(picks), names

    def run(index: list[int], enc: Encoded, _: object) -> dict[str, Any]:
        chunk = [keep[i] for i in index]
        g = enc.groups
        anchor = g["instruction"]
        missing = (~anchor.any(-1)).nonzero()
        if len(missing):
            raise ValueError(f"sample {chunk[int(missing[0])].index} has no instruction tokens: LDAR reads the "
                             "latent decision at the instruction anchor")
        img = [candidate_ids(mm, [s.image_answer])[0] for s in chunk]
        txt = [candidate_ids(mm, [s.text_answer])[0] for s in chunk]
        d, b = direction_rows(mm, img, txt)
        resid = residual_stream(mm, enc)                                     # [L+1, B, T, D]
        diff = lens_diff(mm, resid, d, b)                                    # [L+1, B, T]
        rows = torch.arange(len(chunk), device=diff.device)
        last = g.last_index().to(diff.device)
        anchor_last = anchor.long().cumsum(-1).argmax(-1).to(diff.device)   # last True position
        final = torch.sign(diff[-1, rows, last])                            # the model's decision
        rand, picked = draw(index, g)
        af = anchor.to(diff.device).float()
        latent = {
            "anchor_last": diff[:, rows, anchor_last],
            "anchor_mean": (diff * af).sum(-1) / af.sum(-1),
            "last": diff[:, rows, last],
            "random": diff[:, rows, rand.to(diff.device)],
        }
        return {**{r: (torch.sign(latent[r]) == final[None]).cpu().numpy() for r in READS}, "picked": picked}

    done = flow_batches(mm, subset_or_data(samples, keep), batch_size, run, "LDAR", progress=progress,
                        targets=False, fills=())
    agree = {r: (gather([(i, p[r]) for i, p in done], axis=1) if done
                 else np.zeros((mm.n_layers + 1, 0), dtype=bool)) for r in READS}
    out: dict[str, Any] = {}
    for r in READS:
        props = [proportion(agree[r][l]) for l in range(agree[r].shape[0])]
        out[r] = {"rate": [p["rate"] for p in props], "lo": [p["lo"] for p in props],
                  "hi": [p["hi"] for p in props], "n": int(agree[r].shape[1])}
    picked = [name for _, p in done for name in p["picked"]]
    out["random"].update(groups=list(RANDOM_GROUPS), picked={n: picked.count(n) for n in RANDOM_GROUPS})
    out["agree"] = agree
    return out
