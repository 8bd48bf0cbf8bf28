"""Attention vs MLP: direct logit attribution at the answer position, and the instruction-compliant subspace.

Design section 5 (claim C4). Each layer's attention and MLP output is projected, through the final norm
linearised at the final residual, onto the unembedding direction W_U[a+] - W_U[a-] (instructed answer
minus the other modality's); the parts sum exactly to the final logit difference.

Public API
----------
DLAResult       attn, mlp, before, after [N, L]; embed, total, logit_diff [N]; categories str [N]; summary()
                (per layer, and summed over the deep layers, with bootstrap intervals)
dla(mm, samples | Prepared, batch_size=64, progress=True) -> DLAResult      conflict samples only

Example::

    r = dla(mm, make_split("test", 16))
    r.attn.mean(0)                     # [L] mean attention contribution per layer
    r.summary()["dla"]["mlp"]["follow_image"]["mean"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets, answer_logits
from mfutils.measure.prepared import Prepared, samples_of
from mfutils.measure.stats import summarize
from mfutils.model.groups import Encoded
from mfutils.model.hooks import capture
from mfutils.model.loading import MLLM
from mfutils.study.flow_batches import flow_batches, gather, subset_or_data
from mfutils.study.lens import direction_rows

__all__ = ["DLAResult", "dla"]

_PER_LAYER = ("attn", "mlp", "before", "after")
_FIELDS = ("attn", "mlp", "embed", "total", "logit_diff", "before", "after")


@dataclass
class DLAResult:
    """Per-sample direct logit attribution at the answer position onto W_U[a+] - W_U[a-].

    ``attn``, ``mlp``: [N, L] contributions of each layer's attention / MLP output; ``embed``: [N] of the
    embedding (residual entering layer 0); ``total``: [N] the final logit difference through the same
    linearised norm (= embed + attn.sum(1) + mlp.sum(1)); ``logit_diff``: [N] the model's actual
    logit[a+] - logit[a-] (= total plus the unembedding bias difference, 0 without a bias); ``before``,
    ``after``: [N, L] projection of the answer-position residual onto the unit direction before / after
    each attention layer; ``categories``: str [N].
    """

    attn: np.ndarray
    mlp: np.ndarray
    embed: np.ndarray
    total: np.ndarray
    logit_diff: np.ndarray
    before: np.ndarray
    after: np.ndarray
    categories: np.ndarray

    def summary(self, n_boot: int = 1000, seed: int = 0,
                splits: Sequence[str] = ("follow_image", "follow_text")) -> dict[str, Any]:
        """``{"dla": {"attn"|"mlp": {split: {"mean","lo","hi": [L], "n"}}, "embed"|"total": {split:
        summarize}, "deep_sum": {"layers": [first, last], "attn"|"mlp": {split: summarize}}}, "subspace":
        {split: {"before","after": [L]}}}``.

        ``deep_sum`` (claim C4): per sample the attribution summed over the deep layers (l >= L / 2), its mean
        over samples with a bootstrap 95% interval and n (``stats.summarize``); the mean equals the sum of
        the per-layer means.
        """
        L = self.attn.shape[1]
        deep = [l for l in range(L) if l >= L / 2]
        dla_doc: dict[str, Any] = {"attn": {}, "mlp": {}, "embed": {}, "total": {},
                                   "deep_sum": {"layers": [deep[0], deep[-1]] if deep else [], "attn": {}, "mlp": {}}}
        sub: dict[str, Any] = {}
        for split in splits:
            m = self.categories == split
            for part in ("attn", "mlp"):
                x = getattr(self, part)[m]
                stats = [summarize(x[:, l], n_boot=n_boot, seed=seed) for l in range(x.shape[1])] if m.any() else []
                dla_doc[part][split] = {"mean": [s["mean"] for s in stats], "lo": [s["lo"] for s in stats],
                                        "hi": [s["hi"] for s in stats], "n": int(m.sum())}
                dla_doc["deep_sum"][part][split] = summarize(x[:, deep].sum(1), n_boot=n_boot, seed=seed)
            for part in ("embed", "total"):
                dla_doc[part][split] = summarize(getattr(self, part)[m], n_boot=n_boot, seed=seed)
            sub[split] = {"before": self.before[m].mean(0).tolist() if m.any() else [],
                          "after": self.after[m].mean(0).tolist() if m.any() else []}
        return {"dla": dla_doc, "subspace": sub}


def _rms_scale(mm: MLLM, x: torch.Tensor) -> torch.Tensor:
    """[..., D] factor f with final_norm(x) == x * f (an RMSNorm: weight / rms(x)); checked numerically."""
    norm = mm.final_norm
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    xf = x.float()
    f = norm.weight.float() * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if not torch.allclose(xf * f, norm(x).float(), atol=1e-4, rtol=1e-3):
        raise NotImplementedError(f"the final norm {type(norm).__name__} is not an RMSNorm (weight * x / rms(x)); "
                                  "the linearised direct logit attribution needs one")
    return f


@torch.no_grad()
def dla(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64, progress: bool = True) -> DLAResult:
    """Direct logit attribution of each layer's attention and MLP output at the answer position.

    Contribution of a component c: (W_U[a+] - W_U[a-]) . (g * c / rms(x_L)), with a+ the instructed answer,
    a- the other modality's, g the final norm's weight and x_L the final residual (the norm linearised at
    x_L, so embedding + all attention + all MLP contributions sum exactly to the final logit difference).
    Also the (v2, ours) "instruction-compliant subspace": the residual's projection on the unit direction
    (W_U[a+] - W_U[a-]) / |.| before and after each attention layer. Conflict samples only (input order); a
    list runs in consecutive batches of ``batch_size``, a ``Prepared`` of such samples in its own
    (``mfutils.study.flow_batches``). Shapes in ``DLAResult``.

    Example::

        r = dla(mm, samples)
        r.attn.mean(0)             # [L] mean attention contribution per layer
    """
    keep = [s for s in samples_of(samples) if s.other_answer is not None]
    L = mm.n_layers

    def run(index: list[int], enc: Encoded, t: Targets) -> dict[str, np.ndarray]:
        with capture(mm, ("attn", "mlp", "resid")) as cap:
            logits = answer_logits(mm, enc).float()
        rows = torch.arange(len(t), device=logits.device)
        last = enc.groups.last_index().to(logits.device)
        pick = lambda x: x[rows, last].float()                                    # noqa: E731  [B, D]
        d, _ = direction_rows(mm, t.pos, t.neg)                                    # candidate lists: mean rows
        x_final = pick(cap.resid[L])
        f = _rms_scale(mm, x_final)
        attr = lambda c: ((c * f) * d).sum(-1)                                    # noqa: E731  [B]
        u = d / d.norm(dim=-1, keepdim=True)
        mean_logit = lambda ids: torch.stack([logits[i, list(x)].mean() for i, x in enumerate(ids)])  # noqa: E731
        out = {
            "attn": torch.stack([attr(pick(cap.attn[l])) for l in range(L)], 1),
            "mlp": torch.stack([attr(pick(cap.mlp[l])) for l in range(L)], 1),
            "embed": attr(pick(cap.resid[0])),
            "total": attr(x_final),
            "logit_diff": mean_logit(t.pos) - mean_logit(t.neg),
            "before": torch.stack([(pick(cap.resid[l]) * u).sum(-1) for l in range(L)], 1),
            "after": torch.stack([((pick(cap.resid[l]) + pick(cap.attn[l])) * u).sum(-1) for l in range(L)], 1),
        }
        return {k: v.cpu().numpy() for k, v in out.items()}

    done = flow_batches(mm, subset_or_data(samples, keep), batch_size, run, "DLA", progress=progress, fills=())
    cat = {k: (gather([(i, p[k]) for i, p in done]) if done else np.zeros((0, L) if k in _PER_LAYER else 0))
           for k in _FIELDS}
    return DLAResult(**cat, categories=np.array([s.category for s in keep], dtype=str))
