"""Information flow of modality arbitration: knockout sweeps, saliency, LDAR, attention vs MLP, stability.

The analyses of notebook 02 (design sections 1, 4, 5; claims C1-C4, C10-C12). Computation only; the
figures live in ``mfutils.present.plots_flow``.

Definitions marked (ours) are our reconstruction: the paper (arXiv 2602.03677) publishes only its
abstract. INSSD is ``mfutils.measure.metrics.inssd`` (binary-constraint margin change); LDAR is defined in
``ldar``; the "instruction-compliant subspace" projection in ``dla``.

Public API
----------
EDGES                           edge name -> (source groups, destination groups); "A->B" cuts B queries from A keys
MAIN_EDGES                      the edges of the main sweep (test split)
CONTROL_EDGES                   {"system": edges, "instruction_last": edges}: the C11 controls per split
SALIENCY_PAIRS                  the group pairs of the saliency measure
SUBSETS                         the sample subsets of the JSON document
FRACTIONS                       the data fractions of the stability analysis (C12)
windows(n_layers, k) -> list[(start, stop)]     k consecutive layers sliding over depth
SweepResult                     per-sample margins of a knockout sweep; summaries; save/load (.npz)
knockout_sweep(mm, samples, edges, k, batch_size=64, progress=True, method="prefix", batch_conditions=False)
                                -> SweepResult (prefix reuse by default; "naive" = one forward per condition)
find_failures(mm, samples, batch_size=64, cap=None) -> list[Sample]   conflict samples not followed
saliency(mm, samples, batch_size=16) -> {pair: ndarray [L]}           |A * dL/dA| per layer
ldar(mm, samples, batch_size=64) -> dict        Latent Decision Agreement Rate per hidden state (ours)
DLAResult, dla(mm, samples, batch_size=64) -> DLAResult   attention/MLP direct logit attribution
stability(sweep, fractions=FRACTIONS, seed=0) -> dict     correlation of subset curves with the full one
run_information_flow(mm, model_name, test, failed, system, instruction_last, k) -> dict   notebook 02
write_json(doc, model_name) -> Path             results/<model>/02_information_flow.json (NaN -> null)

Example::

    mm = load_model("random:llava")
    samples = make_split("test", 16)
    sweep = knockout_sweep(mm, samples, ["image->last", "instruction->last"], k=1, progress=False)
    sweep.summary("image->last")["inssd"]          # mean INSSD per window (one per layer here)
    ldar(mm, samples)["anchor_last"]["rate"]        # [L + 1] agreement rates
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mfutils.study.evaluate import candidate_ids
from mfutils.model.groups import edge_cut, encode
from mfutils.model.batching import run_batched
from mfutils.model.hooks import capture, knockout, prefix_trace, residual_stream
from mfutils.measure.metrics import EPS, answer_logits, follows, inssd, margins, targets_for
from mfutils.model.loading import MLLM
from mfutils.core.paths import atomic_output, results_dir
from mfutils.data.prompts import Prompt
from mfutils.measure.stats import proportion, summarize
from mfutils.data.world import Sample

__all__ = [
    "EDGES", "MAIN_EDGES", "CONTROL_EDGES", "SALIENCY_PAIRS", "SUBSETS", "FRACTIONS", "windows", "parse_edge",
    "SweepResult", "SWEEP_METHODS", "knockout_sweep", "find_failures", "saliency", "ldar", "DLAResult", "dla", "stability",
    "run_information_flow", "write_json",
]

Groups = tuple[str, ...]

EDGES: dict[str, tuple[Groups, Groups]] = {
    "image->instruction": (("image",), ("instruction",)),
    "context->instruction": (("context",), ("instruction",)),
    "image->context": (("image",), ("context",)),
    "instruction->last": (("instruction",), ("last",)),
    "image->last": (("image",), ("last",)),
    "context->last": (("context",), ("last",)),
    "question->last": (("question",), ("last",)),
    "image+context->instruction": (("image", "context"), ("instruction",)),
    # C11 controls: the modality cues cut from a format constraint / a system prompt instead
    "image+context->constraint": (("image", "context"), ("constraint",)),
    "image+context->system": (("image", "context"), ("system",)),
}
MAIN_EDGES: tuple[str, ...] = (
    "image->instruction", "context->instruction", "image->context", "instruction->last", "image->last",
    "context->last", "question->last", "image+context->instruction",
)
CONTROL_EDGES: dict[str, tuple[str, ...]] = {
    "system": ("image+context->instruction", "image+context->constraint", "image+context->system"),
    "instruction_last": ("image+context->instruction", "image+context->constraint"),
}
SALIENCY_PAIRS: tuple[str, ...] = (
    "image->instruction", "context->instruction", "instruction->last", "image->last", "context->last",
)
SUBSETS: tuple[str, ...] = ("all", "follow_image", "follow_text", "succeeded", "failed")
FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


def parse_edge(name: str) -> tuple[Groups, Groups]:
    """(source groups, destination groups) of an edge name: ``EDGES[name]``, or parsed as ``"a+b->c"``."""
    if name in EDGES:
        return EDGES[name]
    if name.count("->") != 1:
        raise ValueError(f"edge {name!r} must read 'src->dst' (groups joined by '+'); known: {list(EDGES)}")
    src, dst = name.split("->")
    return tuple(src.split("+")), tuple(dst.split("+"))


def windows(n_layers: int, k: int) -> list[tuple[int, int]]:
    """Windows of ``k`` consecutive layers sliding over depth: ``[(0, k), (1, k + 1), ..., (L - k, L)]``.

    Example::

        windows(4, 2)     # [(0, 2), (1, 3), (2, 4)]
    """
    if not 1 <= k <= n_layers:
        raise ValueError(f"window size k={k} must be between 1 and the number of layers ({n_layers})")
    return [(s, s + k) for s in range(n_layers - k + 1)]


def _batches(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _prompts(samples: Sequence[Sample]) -> list[Prompt]:
    return [s.prompt for s in samples]


# ------------------------------------------------------------------------------------------------
# Knockout sweep
# ------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Per-sample results of a knockout sweep over edges x windows.

    ``edges``: E names; ``windows``: W (start, stop) layer windows; ``base``: [N] instructed margins
    (``metrics.margins``, binary constraint); ``knocked``: [E, W, N] margins under each knockout (NaN where
    the sample lacks the edge's source or destination group); ``follows``: bool [N] (``metrics.follows``);
    ``categories``, ``tags``: str [N] (sample category; where the sample came from, e.g. ``"test"``).

    Example::

        sweep.inssd().shape                          # [E, W, N] per-sample (m' - m) / (|m| + eps)
        sweep.summary("image->last", sweep.categories == "follow_image")
    """

    edges: list[str]
    windows: list[tuple[int, int]]
    base: np.ndarray
    knocked: np.ndarray
    follows: np.ndarray
    categories: np.ndarray
    tags: np.ndarray
    n_layers: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.base.shape[0])

    @property
    def starts(self) -> list[int]:
        return [int(s) for s, _ in self.windows]

    def inssd(self, eps: float = EPS) -> np.ndarray:
        """[E, W, N] per-sample normalised margin change (``metrics.inssd``); NaN where not applicable."""
        return inssd(torch.from_numpy(self.base)[None, None], torch.from_numpy(self.knocked), eps=eps).numpy()

    def flips(self) -> np.ndarray:
        """[E, W, N] float: 1 where the decision between the two modalities changed sign, NaN where n/a."""
        out = (np.sign(self.knocked) != np.sign(self.base)[None, None]).astype(float)
        out[np.isnan(self.knocked)] = np.nan
        return out

    def _mask(self, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return np.ones(len(self), dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise ValueError(f"mask must be bool [{len(self)}], got shape {mask.shape}")
        return mask

    def valid(self, edge: str, mask: np.ndarray | None = None) -> np.ndarray:
        """bool [N]: samples in ``mask`` for which ``edge`` applies (both groups present)."""
        return self._mask(mask) & np.isfinite(self.knocked[self.edges.index(edge)]).all(0)

    def curve(self, edge: str, mask: np.ndarray | None = None, eps: float = EPS) -> np.ndarray:
        """[W] mean INSSD per window over the applicable samples of ``mask`` (NaN if none)."""
        keep = self.valid(edge, mask)
        x = self.inssd(eps)[self.edges.index(edge)][:, keep]
        return x.mean(1) if keep.any() else np.full(len(self.windows), np.nan)

    def summary(self, edge: str, mask: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                eps: float = EPS) -> dict[str, Any]:
        """``{"start", "inssd", "lo", "hi", "flip", "n"}``: per window the mean INSSD with a bootstrap 95%
        interval and the flip rate, over the applicable samples of ``mask``; empty lists when n = 0."""
        keep = self.valid(edge, mask)
        n = int(keep.sum())
        if n == 0:
            return {"start": [], "inssd": [], "lo": [], "hi": [], "flip": [], "n": 0}
        e = self.edges.index(edge)
        x, fl = self.inssd(eps)[e][:, keep], self.flips()[e][:, keep]
        stats = [summarize(row, n_boot=n_boot, seed=seed) for row in x]
        return {"start": self.starts, "inssd": [s["mean"] for s in stats], "lo": [s["lo"] for s in stats],
                "hi": [s["hi"] for s in stats], "flip": [float(r.mean()) for r in fl], "n": n}

    def save(self, path: Path | str) -> Path:
        """Write every array (and the edge/window names) to ``path`` (.npz)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:                       # a kill never leaves a half-written file
            np.savez_compressed(
                tmp, edges=np.array(self.edges), windows=np.array(self.windows, dtype=np.int64).reshape(-1, 2),
                base=self.base, knocked=self.knocked, follows=self.follows, categories=self.categories.astype(str),
                tags=self.tags.astype(str), n_layers=np.int64(self.n_layers), info=np.array(json.dumps(self.info)))
        return path

    @classmethod
    def load(cls, path: Path | str) -> SweepResult:
        """Read a sweep written by ``save``."""
        with np.load(path, allow_pickle=False) as z:
            return cls(edges=[str(e) for e in z["edges"]], windows=[(int(a), int(b)) for a, b in z["windows"]],
                       base=z["base"], knocked=z["knocked"], follows=z["follows"], categories=z["categories"],
                       tags=z["tags"], n_layers=int(z["n_layers"]), info=json.loads(str(z["info"])))


SWEEP_METHODS: tuple[str, ...] = ("prefix", "naive")


def _same_first_row(cuts: Sequence[tuple[torch.Tensor, torch.Tensor]], live: Sequence[int]) -> list[list[int]]:
    """``live`` edge indices grouped by the first query row their cut touches (a batched rerun of a group
    recomputes no more rows than its members' separate reruns would)."""
    groups: dict[int, list[int]] = {}
    for e in live:
        groups.setdefault(int(cuts[e][0].any(-1).any(0).nonzero()[0]), []).append(e)
    return list(groups.values())


@torch.no_grad()
def knockout_sweep(mm: MLLM, samples: Sequence[Sample], edges: Sequence[str], k: int, batch_size: int = 64,
                   progress: bool = True, tags: Sequence[str] | None = None, method: str = "prefix",
                   batch_conditions: bool = False) -> SweepResult:
    """Knock out each edge in each window of ``k`` layers (all heads) and record per-sample margins.

    ``method="prefix"`` (default): one clean forward per batch (``hooks.prefix_trace``) serves every edge
    and window; a knockout starting at layer l recomputes only layers >= l and only the rows from the first
    cut query on (prefix reuse, design section 4). ``method="naive"``: one full forward per (edge, window)
    under ``hooks.knockout`` (the reference; equal results, tested to 1e-4). ``batch_conditions``: with
    prefix reuse, run all edges of one window as one batched rerun (E x B rows, per-row masks): fewer,
    larger calls (edges whose cuts start at the same query row share one rerun); off by default, see
    benchmarks/RESULTS.md for whether it pays on a given machine.
    A sample whose cut removes no existing attention edge (e.g. the source comes after the destination)
    keeps its baseline margin exactly; a sample lacking the edge's source or destination group gets NaN.
    Batches that run out of memory are retried at half the size (``mfutils.model.batching``). Shapes: ``base``
    [N], ``knocked`` [E, W, N] with W = L - k + 1. ``info["forward_equivalents"]``: decoder work in full
    forwards of one batch, summed over batches (machine-independent cost).

    Example::

        sweep = knockout_sweep(mm, samples, MAIN_EDGES, k=1)
        sweep.summary("instruction->last")
    """
    if method not in SWEEP_METHODS:
        raise ValueError(f"method must be one of {SWEEP_METHODS}, got {method!r}")
    edges = list(edges)
    for e in edges:
        parse_edge(e)
    wins = windows(mm.n_layers, k)
    N = len(samples)
    base = np.full(N, np.nan)
    knocked = np.full((len(edges), len(wins), N), np.nan)
    follow = np.zeros(N, dtype=bool)
    targets = targets_for(mm, samples)
    work = {"forwards": 0.0}
    bar = tqdm(total=N, desc="knockout sweep", disable=not progress)

    def run(lo: int, hi: int) -> None:
        part = slice(lo, hi)
        t = targets.subset(list(range(lo, hi)))
        enc = encode(mm, _prompts(samples[part])).to(mm.device)
        groups = enc.groups.to("cpu")
        cuts = [edge_cut(groups, *parse_edge(name)) for name in edges]
        if method == "naive":
            logits = answer_logits(mm, enc).float()
            forwards = 1.0
        else:
            trace = prefix_trace(mm, enc)
            logits = trace.logits
        m = margins(logits, t)
        base[part] = m.cpu().numpy()
        follow[part] = follows(logits, t).cpu().numpy()
        for w, (start, stop) in enumerate(wins):
            live = [e for e, (cut, _) in enumerate(cuts) if bool(cut.any())]
            if method == "naive":
                new = {}
                for e in live:
                    with knockout(mm, cuts[e][0], range(start, stop)):
                        new[e] = answer_logits(mm, enc).float()
                    forwards += 1.0
            elif batch_conditions and len(live) > 1:
                new = {}
                for group in _same_first_row(cuts, live):      # edges whose reruns start at the same row
                    out = trace.rerun_many(start, stop, [cuts[e][0].to(mm.device) for e in group])
                    new.update({e: out[i] for i, e in enumerate(group)})
            else:
                new = {e: trace.rerun(start, stop, cut=cuts[e][0].to(mm.device)) for e in live}
            for e, (cut, valid) in enumerate(cuts):
                touched = cut.any(-1).any(-1)                   # samples whose cut removes something
                m_new = m.clone()
                if e in new:
                    m_new[touched] = margins(new[e], t)[touched]
                m_new[~valid] = float("nan")
                knocked[e, w, part] = m_new.cpu().numpy()
        work["forwards"] += forwards if method == "naive" else trace.work
        bar.update(hi - lo)

    try:
        run_batched(run, N, batch_size, desc="knockout sweep")
    finally:
        bar.close()
    return SweepResult(edges=edges, windows=wins, base=base, knocked=knocked, follows=follow,
                       categories=np.array([s.category for s in samples], dtype=str),
                       tags=np.array(list(tags) if tags is not None else ["all"] * N, dtype=str),
                       n_layers=mm.n_layers, info={"model": mm.name, "k": k, "attn": mm.attn_implementation,
                                                   "method": method, "batch_conditions": bool(batch_conditions),
                                                   "forward_equivalents": float(work["forwards"])})


@torch.no_grad()
def find_failures(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64, cap: int | None = None,
                  progress: bool = False) -> list[Sample]:
    """The conflict samples whose instructed answer is not the model's answer (``metrics.follows`` False),
    in order, at most ``cap`` of them.

    Example::

        failed = find_failures(mm, load_split("tiny", "fail_pool"), cap=200)
    """
    out: list[Sample] = []
    conflict = [s for s in samples if s.other_answer is not None]
    for part in tqdm(_batches(len(conflict), batch_size), desc="find failures", disable=not progress):
        chunk = conflict[part]
        enc = encode(mm, _prompts(chunk)).to(mm.device)
        logits = answer_logits(mm, enc).float()
        ok = follows(logits, targets_for(mm, chunk))
        out.extend(s for s, f in zip(chunk, ok.tolist()) if not f)
        if cap is not None and len(out) >= cap:
            return out[:cap]
    return out


# ------------------------------------------------------------------------------------------------
# Saliency ("Label Words are Anchors", Wang et al. 2023)
# ------------------------------------------------------------------------------------------------
def saliency(mm: MLLM, samples: Sequence[Sample], batch_size: int = 16, pairs: Sequence[str] = SALIENCY_PAIRS,
             progress: bool = True, abs_per_head: bool = False) -> dict[str, np.ndarray]:
    """Information-flow saliency per layer and group pair: {pair: ndarray [L]}, non-negative.

    As in "Label Words are Anchors": I_l = |sum_h A_{h,l} * dL/dA_{h,l}| ([T, T] per sample; with
    ``abs_per_head`` sum_h |A * dL/dA| instead), L = the summed instructed margin (binary constraint);
    S_l(pair) = mean of I_l over the existing edges (query in the destination, key in the source, causal,
    no padding), then averaged over the samples that have both groups. Runs under eager attention with
    ``output_attentions`` (switched inside, the previous implementation restored afterwards).

    Example::

        sal = saliency(mm, samples[:32])
        sal["instruction->last"].shape            # (L,)
    """
    previous = mm.attn_implementation
    L = mm.n_layers
    sums = {p: np.zeros(L) for p in pairs}
    counts = {p: 0 for p in pairs}
    targets = targets_for(mm, samples)

    def grad_on_embeddings(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.detach().requires_grad_(True)

    mm.set_attn_implementation("eager")
    handle = mm.model.get_input_embeddings().register_forward_hook(grad_on_embeddings)
    try:
        for part in tqdm(_batches(len(samples), batch_size), desc="saliency", disable=not progress):
            idx = list(range(len(samples)))[part]
            enc = encode(mm, _prompts(samples[part])).to(mm.device)
            with torch.enable_grad():
                out = mm.model(**enc.inputs, output_attentions=True, logits_to_keep=1)
                loss = margins(out.logits[:, -1], targets.subset(idx)).sum()
                grads = torch.autograd.grad(loss, list(out.attentions))
            groups = enc.groups.to("cpu")
            edges = {p: edge_cut(groups, *parse_edge(p)) for p in pairs}
            for l in range(L):
                prod = out.attentions[l].detach() * grads[l]                   # [B, H, T, T]
                flow = (prod.abs().sum(1) if abs_per_head else prod.sum(1).abs()).float().cpu()
                for p, (cut, valid) in edges.items():
                    n_edges = cut.sum((-1, -2))
                    keep = valid & (n_edges > 0)
                    per_sample = (flow * cut).sum((-1, -2))[keep] / n_edges[keep]
                    sums[p][l] += float(per_sample.sum())
                    if l == 0:
                        counts[p] += int(keep.sum())
    finally:
        handle.remove()
        mm.set_attn_implementation(previous)
    return {p: sums[p] / counts[p] if counts[p] else np.full(L, np.nan) for p in pairs}


# ------------------------------------------------------------------------------------------------
# LDAR (ours)
# ------------------------------------------------------------------------------------------------
def _direction_rows(mm: MLLM, pos: Sequence[int | Sequence[int]], neg: Sequence[int | Sequence[int]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_U[pos] - W_U[neg] [B, D], bias[pos] - bias[neg] [B]) of the unembedding, one entry per sample.

    An entry may be a list of token ids (MC2 candidate lists): its row is the mean unembedding row of the
    list (ours: the direction between the two sides' average answers). One id gives that id's row exactly."""
    W = mm.unembed.weight
    bias = getattr(mm.unembed, "bias", None)

    def ids(x: int | Sequence[int]) -> list[int]:
        return [int(x)] if isinstance(x, (int, np.integer)) else [int(i) for i in x]

    def mean_rows(t: torch.Tensor, entries: Sequence[int | Sequence[int]]) -> torch.Tensor:
        return torch.stack([t[ids(e)].float().mean(0) for e in entries])

    d = mean_rows(W, pos) - mean_rows(W, neg)
    b = mean_rows(bias, pos) - mean_rows(bias, neg) if bias is not None else torch.zeros(len(pos), device=W.device)
    return d, b


def _lens_diff(mm: MLLM, hidden: torch.Tensor, d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logit-lens difference per position: ``(logit_lens(hidden)[..., pos] - [..., neg])`` with the two
    columns per sample given as the row difference ``d`` [B, D] (and bias ``b`` [B]); hidden [..., B, T, D]
    -> [..., B, T]. Avoids materialising [.., T, V] for large vocabularies."""
    normed = mm.final_norm(hidden).float()
    return torch.einsum("...btd,bd->...bt", normed, d) + b[:, None]


@torch.no_grad()
def ldar(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Latent Decision Agreement Rate per hidden state (layer 0 = embeddings ... L = last layer output).

    Our reconstruction (the paper names LDAR but does not define it publicly): at hidden state l the logit
    lens (``hooks.logit_lens``: final norm + unembedding) gives a latent decision
    sign(lens[image_answer] - lens[text_answer]), read at the instruction anchor's last token
    (``anchor_last``), averaged over the anchor's tokens before the sign (``anchor_mean``), and at the
    answer position (``last``). LDAR(l) = share of samples whose latent decision equals the model's final
    decision, sign(logit[image_answer] - logit[text_answer]) at the answer position. Conflict samples with
    an instruction only. Returns ``{"anchor_last" | "anchor_mean" | "last": {"rate", "lo", "hi": [L+1],
    "n": int}}`` with Wilson 95% intervals (``stats.proportion``); ``"agree"`` holds the per-sample
    agreement arrays (bool [L+1, N]) for further analysis.

    Example::

        r = ldar(mm, samples)
        r["anchor_last"]["rate"][-1]          # agreement at the last hidden state
    """
    keep = [s for s in samples if s.other_answer is not None and s.image_answer is not None
            and s.text_answer is not None and s.image_answer != s.text_answer]
    reads = ("anchor_last", "anchor_mean", "last")
    agree: dict[str, list[np.ndarray]] = {r: [] for r in reads}
    for part in tqdm(_batches(len(keep), batch_size), desc="LDAR", disable=not progress):
        chunk = keep[part]
        enc = encode(mm, _prompts(chunk)).to(mm.device)
        g = enc.groups
        anchor = g["instruction"]
        missing = (~anchor.any(-1)).nonzero()
        if len(missing):
            raise ValueError(f"sample {chunk[int(missing[0])].index} has no instruction tokens: LDAR reads the "
                             "latent decision at the instruction anchor")
        img = [candidate_ids(mm, [s.image_answer])[0] for s in chunk]
        txt = [candidate_ids(mm, [s.text_answer])[0] for s in chunk]
        d, b = _direction_rows(mm, img, txt)
        resid = residual_stream(mm, enc)                                     # [L+1, B, T, D]
        diff = _lens_diff(mm, resid, d, b)                                   # [L+1, B, T]
        rows = torch.arange(len(chunk), device=diff.device)
        last = g.last_index().to(diff.device)
        anchor_last = anchor.long().cumsum(-1).argmax(-1).to(diff.device)   # last True position
        final = torch.sign(diff[-1, rows, last])                            # the model's decision
        af = anchor.to(diff.device).float()
        latent = {
            "anchor_last": diff[:, rows, anchor_last],
            "anchor_mean": (diff * af).sum(-1) / af.sum(-1),
            "last": diff[:, rows, last],
        }
        for r in reads:
            agree[r].append((torch.sign(latent[r]) == final[None]).cpu().numpy())
    out: dict[str, Any] = {}
    for r in reads:
        a = np.concatenate(agree[r], axis=1) if agree[r] else np.zeros((mm.n_layers + 1, 0), dtype=bool)
        props = [proportion(a[l]) for l in range(a.shape[0])]
        out[r] = {"rate": [p["rate"] for p in props], "lo": [p["lo"] for p in props],
                  "hi": [p["hi"] for p in props], "n": int(a.shape[1])}
    out["agree"] = {r: (np.concatenate(agree[r], axis=1) if agree[r] else np.zeros((mm.n_layers + 1, 0), bool))
                    for r in reads}
    return out


# ------------------------------------------------------------------------------------------------
# Attention vs MLP: direct logit attribution and the instruction-compliant subspace
# ------------------------------------------------------------------------------------------------
@dataclass
class DLAResult:
    """Per-sample direct logit attribution at the answer position onto W_U[a+] - W_U[a-].

    ``attn``, ``mlp``: [N, L] contributions of each layer's attention / MLP output; ``embed``: [N] of the
    embedding (residual entering layer 0); ``total``: [N] the final logit difference through the same
    linearised norm (= embed + attn.sum(1) + mlp.sum(1)); ``logit_diff``: [N] the model's actual
    logit[a+] - logit[a-] (= total plus the unembedding bias difference, 0 without a bias); ``before``, ``after``: [N, L] projection of the answer-position residual onto the
    unit direction before / after each attention layer; ``categories``: str [N].
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
        summarize}}, "subspace": {split: {"before","after": [L]}}}``."""
        dla_doc: dict[str, Any] = {"attn": {}, "mlp": {}, "embed": {}, "total": {}}
        sub: dict[str, Any] = {}
        for split in splits:
            m = self.categories == split
            for part in ("attn", "mlp"):
                x = getattr(self, part)[m]
                stats = [summarize(x[:, l], n_boot=n_boot, seed=seed) for l in range(x.shape[1])] if m.any() else []
                dla_doc[part][split] = {"mean": [s["mean"] for s in stats], "lo": [s["lo"] for s in stats],
                                        "hi": [s["hi"] for s in stats], "n": int(m.sum())}
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
def dla(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64, progress: bool = True) -> DLAResult:
    """Direct logit attribution of each layer's attention and MLP output at the answer position.

    Contribution of a component c: (W_U[a+] - W_U[a-]) . (g * c / rms(x_L)), with a+ the instructed answer,
    a- the other modality's, g the final norm's weight and x_L the final residual (the norm linearised at
    x_L, so embedding + all attention + all MLP contributions sum exactly to the final logit difference).
    Also the (v2, ours) "instruction-compliant subspace": the residual's projection on the unit direction
    (W_U[a+] - W_U[a-]) / |.| before and after each attention layer. Shapes in ``DLAResult``.

    Example::

        r = dla(mm, samples)
        r.attn.mean(0)             # [L] mean attention contribution per layer
    """
    keep = [s for s in samples if s.other_answer is not None]
    acc: dict[str, list[np.ndarray]] = {k: [] for k in ("attn", "mlp", "embed", "total", "logit_diff", "before", "after")}
    targets = targets_for(mm, keep)
    L = mm.n_layers
    for part in tqdm(_batches(len(keep), batch_size), desc="DLA", disable=not progress):
        t = targets.subset(list(range(len(keep)))[part])
        enc = encode(mm, _prompts(keep[part])).to(mm.device)
        with capture(mm, ("attn", "mlp", "resid")) as cap:
            logits = answer_logits(mm, enc).float()
        rows = torch.arange(len(t), device=logits.device)
        last = enc.groups.last_index().to(logits.device)
        pick = lambda x: x[rows, last].float()                                    # noqa: E731  [B, D]
        d, b = _direction_rows(mm, t.pos, t.neg)                                   # candidate lists: mean rows
        x_final = pick(cap.resid[L])
        f = _rms_scale(mm, x_final)
        attr = lambda c: ((c * f) * d).sum(-1)                                    # noqa: E731  [B]
        attn = torch.stack([attr(pick(cap.attn[l])) for l in range(L)], 1)
        mlp = torch.stack([attr(pick(cap.mlp[l])) for l in range(L)], 1)
        u = d / d.norm(dim=-1, keepdim=True)
        before = torch.stack([(pick(cap.resid[l]) * u).sum(-1) for l in range(L)], 1)
        after = torch.stack([((pick(cap.resid[l]) + pick(cap.attn[l])) * u).sum(-1) for l in range(L)], 1)
        acc["attn"].append(attn.cpu().numpy())
        acc["mlp"].append(mlp.cpu().numpy())
        acc["embed"].append(attr(pick(cap.resid[0])).cpu().numpy())
        acc["total"].append(attr(x_final).cpu().numpy())
        mean_logit = lambda ids: torch.stack([logits[i, list(x)].mean() for i, x in enumerate(ids)])  # noqa: E731
        acc["logit_diff"].append((mean_logit(t.pos) - mean_logit(t.neg)).cpu().numpy())
        acc["before"].append(before.cpu().numpy())
        acc["after"].append(after.cpu().numpy())
    cat = {k: (np.concatenate(v) if v else np.zeros((0, L) if k in ("attn", "mlp", "before", "after") else 0))
           for k, v in acc.items()}
    return DLAResult(**cat, categories=np.array([s.category for s in keep], dtype=str))


# ------------------------------------------------------------------------------------------------
# Stability (C12)
# ------------------------------------------------------------------------------------------------
def stability(sweep: SweepResult, fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_draws: int = 10,
              mask: np.ndarray | None = None, edges: Sequence[str] | None = None) -> dict[str, Any]:
    """Pearson correlation, per edge, of the INSSD curve over windows on a random ``fraction`` of the
    samples (without replacement) with the curve on all of them; mean over ``n_draws`` draws; from the
    stored per-sample results (no model run). NaN where a curve is constant or has fewer than 2 windows.

    Returns ``{"fractions": [...], "corr": {edge: [per fraction]}}``.

    Example::

        stability(sweep, fractions=(0.5, 1.0))["corr"]["instruction->last"]     # [r_0.5, 1.0]
    """
    rng = np.random.default_rng(seed)
    x_all = sweep.inssd()
    corr: dict[str, list[float]] = {}
    for edge in edges or sweep.edges:
        keep = np.flatnonzero(sweep.valid(edge, mask))
        x = x_all[sweep.edges.index(edge)][:, keep]                                # [W, n]
        full = x.mean(1) if keep.size else np.full(x.shape[0], np.nan)
        row = []
        for frac in fractions:
            if not 0 < frac <= 1:
                raise ValueError(f"fractions must be in (0, 1], got {frac}")
            n_sub = max(2, int(round(frac * keep.size)))
            if keep.size < 2 or x.shape[0] < 2 or np.std(full) == 0:
                row.append(math.nan)
                continue
            rs = []
            for _ in range(n_draws if n_sub < keep.size else 1):
                pick = np.sort(rng.choice(keep.size, size=n_sub, replace=False))
                curve = x[:, pick].mean(1)
                rs.append(math.nan if np.std(curve) == 0 else float(np.clip(np.corrcoef(curve, full)[0, 1], -1, 1)))
            row.append(float(np.nanmean(rs)) if np.isfinite(rs).any() else math.nan)
        corr[edge] = row
    return {"fractions": [float(f) for f in fractions], "corr": corr}


# ------------------------------------------------------------------------------------------------
# Notebook 02 in one call
# ------------------------------------------------------------------------------------------------
def subset_masks(sweep: SweepResult) -> dict[str, np.ndarray]:
    """The ``SUBSETS`` of a main sweep: test samples (``all``, by instruction, ``succeeded``) and every
    sample that does not follow its instruction (``failed``: test failures plus the failure pool)."""
    test = sweep.tags == "test"
    return {"all": test, "follow_image": test & (sweep.categories == "follow_image"),
            "follow_text": test & (sweep.categories == "follow_text"), "succeeded": test & sweep.follows,
            "failed": ~sweep.follows}


def run_information_flow(mm: MLLM, model_name: str, test_samples: Sequence[Sample], failed_samples: Sequence[Sample],
                         system_samples: Sequence[Sample], instruction_last_samples: Sequence[Sample], k: int = 1,
                         batch_size: int = 64, seed: int = 0, n_boot: int = 1000,
                         fractions: Sequence[float] = FRACTIONS, saliency_batch_size: int | None = None,
                         progress: bool = True, method: str = "prefix", batch_conditions: bool = False
                         ) -> dict[str, Any]:
    """Every analysis of notebook 02; returns the JSON document (see ``write_json``) and writes the
    per-sample sweeps to ``results/<model>/02_knockout_per_sample{,_system,_instruction_last}.npz``.

    ``failed_samples``: failures from outside the test split (e.g. ``find_failures`` on the fail pool); the
    ``failed`` subset is every sample of the sweep that the model does not follow, test failures included.
    The sweeps use prefix reuse by default (``method``, ``batch_conditions``: see ``knockout_sweep``).

    Example::

        doc = run_information_flow(mm, "tiny", test, failed, system, inst_last, k=1)
        write_json(doc, "tiny")
    """
    out_dir = results_dir(model_name)
    main_samples = list(test_samples) + list(failed_samples)
    tags = ["test"] * len(test_samples) + ["fail_pool"] * len(failed_samples)
    main = knockout_sweep(mm, main_samples, MAIN_EDGES, k, batch_size=batch_size, progress=progress, tags=tags,
                          method=method, batch_conditions=batch_conditions)
    main.save(out_dir / "02_knockout_per_sample.npz")
    masks = subset_masks(main)
    knock = {e: {s: main.summary(e, masks[s], n_boot=n_boot, seed=seed) for s in SUBSETS} for e in MAIN_EDGES}
    controls: dict[str, Any] = {}
    for split, samples in (("system", system_samples), ("instruction_last", instruction_last_samples)):
        sweep = knockout_sweep(mm, list(samples), CONTROL_EDGES[split], k, batch_size=batch_size,
                               progress=progress, tags=[split] * len(samples), method=method,
                               batch_conditions=batch_conditions)
        sweep.save(out_dir / f"02_knockout_per_sample_{split}.npz")
        controls[split] = {e: {"all": sweep.summary(e, n_boot=n_boot, seed=seed)} for e in CONTROL_EDGES[split]}
    test = list(test_samples)
    lda = ldar(mm, test, batch_size=batch_size, progress=progress)
    dres = dla(mm, test, batch_size=batch_size, progress=progress).summary(n_boot=n_boot, seed=seed)
    sal = saliency(mm, test, batch_size=saliency_batch_size or max(1, batch_size // 4), progress=progress)
    return {
        "model": model_name, "n_layers": mm.n_layers, "window": k,
        "n": {"test": len(test_samples), "failed": int(masks["failed"].sum()), "system": len(system_samples),
              "instruction_last": len(instruction_last_samples)},
        "knockout": knock,
        "controls": controls,
        "ldar": {r: lda[r] for r in ("anchor_last", "anchor_mean", "last")},
        "dla": dres["dla"],
        "subspace": dres["subspace"],
        "saliency": {p: v.tolist() for p, v in sal.items()},
        "stability": stability(main, fractions, seed=seed, mask=masks["all"]),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(doc: Mapping[str, Any], model_name: str) -> Path:
    """Write ``doc`` to ``results/<model>/02_information_flow.json`` (NaN and inf as null; atomic).

    Example::

        path = write_json(run_information_flow(...), "tiny")
    """
    path = results_dir(model_name) / "02_information_flow.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False))
    tmp.replace(path)
    return path
