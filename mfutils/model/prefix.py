"""Prefix reuse: record one clean forward of a batch, then rerun only the layers and rows an intervention
can change.

An intervention whose first affected layer is l leaves the residual stream entering l unchanged; one that
touches only query rows >= p leaves every row < p unchanged (causal attention). ``PrefixTrace.rerun``
starts from the recorded input of layer l, recomputes rows >= p against the recorded keys and values, and
equals a full forward under the same hooks (tested). Hooks are registered through
``mfutils.model.hooks.registered`` and removed before returning, also on errors.

Public API
----------
prefix_trace(mm, inputs, keep_kv=True, last=None) -> PrefixTrace   record one clean forward for prefix reuse
PrefixTrace.logits -> Tensor[B, V]          the clean answer logits
PrefixTrace.rerun(start, stop=None, cut=None, rows_from=None, heads=None) -> Tensor[B, V]
                                            rerun only layers >= start (and rows >= rows_from) under the
                                            hooks in force, optionally knocking ``cut`` out in start..stop-1
PrefixTrace.rerun_many(start, stop, cuts) -> Tensor[R, B, V]   several knockouts in one batched rerun

Example::

    trace = prefix_trace(mm, enc)                      # one clean forward
    trace.rerun(3, 4, cut=edge_block(enc.groups, "image", "last"))   # == knockout in layer 3, [B, V]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mfutils.model.groups import Encoded
from mfutils.model.hooks import active_hooks, knockout, logit_lens, registered
from mfutils.model.loading import MLLM

__all__ = ["PrefixTrace", "prefix_trace"]


class _RecordingCache:
    """Stands in for the KV cache in the clean forward: keeps each layer's keys and values (after rotary)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states


class _PrefixCache:
    """A read-only KV cache: the clean keys/values of the rows before the recomputed ones, prepended."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _repeat_rows(x: Any, B: int, R: int, key: str = "") -> Any:
    """``x`` with its batch axis (size B) repeated R times, condition-major (row r * B + b); size-1 axes broadcast."""
    if R == 1:
        return x
    if isinstance(x, tuple):
        return tuple(_repeat_rows(v, B, R, key) for v in x)
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return x
    axis = 1 if key == "position_ids" and x.dim() == 3 else 0     # M-RoPE position ids: [3, B, T]
    if x.shape[axis] != B:
        return x
    reps = [1] * x.dim()
    reps[axis] = R
    return x.repeat(*reps)


@dataclass
class PrefixTrace:
    """One clean forward of a batch, recorded so that interventions rerun only what they can change.

    An intervention whose first affected layer is l (a knockout in layers l.., a head of layer l scaled)
    leaves the residual stream entering l unchanged; one that touches only query rows >= p leaves every
    row < p unchanged in every layer (causal attention). ``rerun`` therefore starts from the recorded input
    of layer l and recomputes rows >= p only, against the recorded keys and values of rows < p, passing the
    recorded attention mask, rotary / M-RoPE position embeddings and position ids of each layer (sliced to
    the recomputed rows). Tested equal to full forwards under ``knockout`` / ``scale_heads`` (<= 1e-4 in
    float32) on Llava, Qwen2-VL and Qwen2.5-VL, under sdpa and eager.

    ``hidden[l]``: [B, T, D] entering layer l (``hidden[L]``: the last layer's output); ``kwargs[l]``: the
    keyword arguments the model passed to layer l; ``keys[l]``/``values[l]``: [B, kv_heads, T, head_dim]
    (empty unless ``keep_kv``); ``last``: LongTensor [B], the answer positions; ``work``: decoder work done so
    far in forward-equivalents of this batch (1 for the clean forward, plus layers x rows x conditions
    recomputed / (L x T) per rerun): a machine-independent cost figure.

    Example::

        trace = prefix_trace(mm, enc)
        with scale_heads(mm, {(5, 2): 0.0}):
            logits = trace.rerun(5)                           # [B, V], layers 5.. recomputed
    """

    mm: MLLM
    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last: torch.Tensor
    work: float = 1.0

    @property
    def batch_size(self) -> int:
        return int(self.hidden[0].shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.hidden[0].shape[1])

    def answer_logits(self, h: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """[B', V] float: ``logit_lens`` at the answer position of ``h`` ([B', q, D], rows from ``offset``;
        B' a multiple of B for batched conditions)."""
        idx = (self.last - offset).to(h.device)
        if bool((idx < 0).any()):
            raise ValueError(f"rows_from={offset} starts after an answer position ({int(self.last.min())}): the "
                             "answer logits would not be recomputed; pass rows_from <= trace.last.min()")
        R = h.shape[0] // self.batch_size
        at_last = h[torch.arange(h.shape[0], device=h.device), idx.repeat(R)]
        return logit_lens(self.mm, at_last).float()

    @property
    def logits(self) -> torch.Tensor:
        """[B, V] clean answer logits (equal to the model's own: same forward)."""
        return self.answer_logits(self.hidden[-1])

    def _check_range(self, start: int, stop: int | None) -> int:
        L = self.mm.n_layers
        stop = L if stop is None else int(stop)
        if not (0 <= start < L and start < stop <= L):
            raise ValueError(f"layer window [{start}, {stop}) out of range: the model has {L} layers, so "
                             f"0 <= start < stop <= {L} (a window of k layers needs k <= {L})")
        return stop

    def rerun(self, start: int, stop: int | None = None, cut: torch.Tensor | None = None,
              rows_from: int | None = None, heads: Sequence[int] | None = None) -> torch.Tensor:
        """[B, V] answer logits with layers ``start..L-1`` recomputed under the hooks in force.

        ``cut``: optional BoolTensor [B, T, T] knocked out (``knockout``, query heads ``heads``) in layers
        ``start..stop-1`` (``stop`` defaults to L). ``rows_from``: first recomputed row; default the first
        query row that ``cut`` touches (0 without a cut). Hooks that change rows before ``rows_from`` (e.g.
        ``scale_heads`` at every position) need ``rows_from=0``.

        Example::

            trace.rerun(2, 3, cut=edge_block(enc.groups, "image", "last"))   # knockout in layer 2 only
        """
        return self.rerun_many(start, stop, [cut] if cut is not None else None, rows_from, heads)[0]

    def rerun_many(self, start: int, stop: int | None, cuts: Sequence[torch.Tensor] | None,
                   rows_from: int | None = None, heads: Sequence[int] | None = None) -> torch.Tensor:
        """[R, B, V]: ``rerun`` for R cuts ([B, T, T] each) in ONE batched rerun of R * B rows.

        Equal to R separate ``rerun`` calls (tested); faster where per-call overhead dominates. With
        ``cuts=None`` it is a single plain rerun (R = 1).

        Example::

            trace.rerun_many(3, 4, [cut_a, cut_b])       # [2, B, V]
        """
        stop = self._check_range(start, stop)
        B, T = self.batch_size, self.seq_len
        R = len(cuts) if cuts else 1
        block = None
        if cuts:
            shapes = {tuple(c.shape) for c in cuts}
            if shapes != {(B, T, T)}:
                raise ValueError(f"each cut must be a BoolTensor [B, T, T] = [{B}, {T}, {T}], got {sorted(shapes)}")
            block = torch.cat(list(cuts)) if R > 1 else cuts[0]
            if rows_from is None:
                rows = block.any(-1).any(0).nonzero()
                if len(rows) == 0:                          # nothing to cut
                    if active_hooks(self.mm) == 0:            # ... and nothing else in force: the clean logits
                        return self.logits[None].expand(R, -1, -1).clone()
                    block, rows_from = None, 0                # other hooks (scale_heads) in force: rerun
                else:
                    rows_from = int(rows[0])
        p0 = 0 if rows_from is None else int(rows_from)
        if not 0 <= p0 <= int(self.last.min()):
            raise ValueError(f"rows_from={p0} must lie in 0..{int(self.last.min())} (the first answer position)")
        if block is not None and bool(block[:, :p0].any()):
            raise ValueError(f"the cut removes edges of query rows before rows_from={p0}, which would not be "
                             "recomputed: leave rows_from=None (the first cut query) or lower it")
        if p0 > 0 and not self.keys:
            raise ValueError("rows_from > 0 needs the clean keys and values: record with prefix_trace(..., keep_kv=True)")
        h = _repeat_rows(self.hidden[start][:, p0:], B, R)
        device = h.device
        self.work += R * (self.mm.n_layers - start) * (T - p0) / (self.mm.n_layers * T)
        with ExitStack() as stack:
            if block is not None:
                stack.enter_context(knockout(self.mm, block, range(start, stop), heads=heads))
            for l in range(start, self.mm.n_layers):
                kw = {k: _repeat_rows(v, B, R, k) for k, v in self.kwargs[l].items()}
                mask = kw.get("attention_mask")
                if p0 > 0:
                    if mask is None:    # sdpa's causal fast path: rebuild the causal rows it stands for
                        mask = torch.ones(T - p0, T, dtype=torch.bool, device=device).tril(p0)[None, None]
                    else:
                        mask = mask[..., p0:, :]
                    kw["attention_mask"] = mask
                    pe = kw.get("position_embeddings")
                    if pe is not None:
                        kw["position_embeddings"] = tuple(x[..., p0:, :] for x in pe)
                    if isinstance(kw.get("position_ids"), torch.Tensor):
                        kw["position_ids"] = kw["position_ids"][..., p0:]
                    kw["past_key_values"] = _PrefixCache(_repeat_rows(self.keys[l][..., :p0, :], B, R),
                                                         _repeat_rows(self.values[l][..., :p0, :], B, R))
                else:
                    kw["past_key_values"] = None
                kw["use_cache"] = False
                h = _layer_output(self.mm.layers[l](h, **kw))
        return self.answer_logits(h, offset=p0).unflatten(0, (R, B))


@torch.no_grad()
def prefix_trace(mm: MLLM, inputs: Encoded | Mapping[str, torch.Tensor], keep_kv: bool = True,
                 last: torch.Tensor | None = None) -> PrefixTrace:
    """Run the clean forward of ``inputs`` once and record what ``PrefixTrace.rerun`` needs.

    Records, with forward pre-hooks removed before returning (also on errors), the input hidden state
    [B, T, D] and keyword arguments of every decoder layer, the last layer's output and, with ``keep_kv``,
    every layer's keys and values. ``last``: LongTensor [B] answer positions (default
    ``inputs.groups.last_index()``, else T - 1). Memory: (L + 1) * B * T * D hidden states plus
    2 * L * B * T * kv_heads * head_dim keys/values.

    Example::

        trace = prefix_trace(mm, enc)
        trace.logits                                   # [B, V] clean answer logits
    """
    model_inputs = inputs.inputs if isinstance(inputs, Encoded) else inputs
    L = mm.n_layers
    hidden: dict[int, torch.Tensor] = {}
    kwargs: dict[int, dict[str, Any]] = {}
    cache = _RecordingCache()

    def pre(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            if args:
                hidden[layer], rest = args[0], args[1:]
                if rest:
                    raise TypeError(f"decoder layer {layer} got {len(rest)} extra positional arguments: prefix "
                                    "reuse passes layer arguments by keyword only; this architecture is not supported")
            else:
                kw = dict(kw)
                hidden[layer] = kw.pop("hidden_states")
            kw = dict(kw)
            kwargs[layer] = {k: v for k, v in kw.items() if k not in ("past_key_values", "use_cache")}
            kw["past_key_values"] = cache if keep_kv else None
            kw["use_cache"] = False
            return (hidden[layer],), kw

        return hook

    def post(module: nn.Module, args: Any, output: Any) -> None:
        hidden[L] = _layer_output(output)

    def register() -> Iterator[Any]:
        for l in range(L):
            yield mm.layers[l].register_forward_pre_hook(pre(l), with_kwargs=True)
        yield mm.layers[L - 1].register_forward_hook(post)

    with registered(register()):
        mm.model(**model_inputs, use_cache=False, logits_to_keep=1)
    if keep_kv and len(cache.keys) != L:
        raise RuntimeError(f"the clean forward recorded keys of {len(cache.keys)} of {L} layers: the attention "
                           "modules do not use the KV-cache interface that prefix reuse relies on")
    if last is None:
        if isinstance(inputs, Encoded):
            last = inputs.groups.last_index()
        else:
            last = torch.full((hidden[0].shape[0],), hidden[0].shape[1] - 1, dtype=torch.long)
    return PrefixTrace(mm=mm, hidden=[hidden[l] for l in range(L + 1)], kwargs=[kwargs[l] for l in range(L)],
                       keys=[cache.keys[l] for l in range(L)] if keep_kv else [],
                       values=[cache.values[l] for l in range(L)] if keep_kv else [],
                       last=last.to(hidden[0].device))
