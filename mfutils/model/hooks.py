"""Interventions on the language model of an MLLM: attention knockout, head scaling, capture, logit lens.

Every intervention is a context manager that registers its PyTorch hooks on enter and removes all of them
in ``finally``, also when the body raises; nested ones close in reverse order. Nothing monkey-patches
``forward``; module paths come from the architecture table (``mm.attn(l)``, ``mm.o_proj(l)``, ...). All
work with ``attn_implementation`` ``"sdpa"`` and ``"eager"`` and leave the model bit-identical when they do
nothing (design section 4).

Public API
----------
knockout(mm, block, layers, heads=None)     cut attention edges (query q may not see key k where block[b, q, k])
scale_heads(mm, alphas, positions=None)     multiply heads' outputs by alpha (0 blocks, >1 amplifies)
prefix_trace(mm, inputs, keep_kv=True) -> PrefixTrace   record one clean forward for prefix reuse
PrefixTrace.rerun(start, stop=None, cut=None, rows_from=None, heads=None) -> Tensor[B, V]
                                            rerun only layers >= start (and rows >= rows_from) under the
                                            hooks in force, optionally knocking ``cut`` out in start..stop-1
PrefixTrace.rerun_many(start, stop, cuts) -> Tensor[R, B, V]   several knockouts in one batched rerun
capture(mm, what=("attn", "mlp"))           record per-layer attention / MLP outputs / residual stream
residual_stream(mm, inputs) -> Tensor[L+1, B, T, D]   the residual stream entering each layer, and the last output
logit_lens(mm, hidden) -> Tensor[..., V]    unembed(final_norm(hidden))
active_hooks(mm) -> int                     forward hooks currently on the model (for leak tests)
KnockoutError                               a knockout that would leave a query with no key to attend to
check_head(mm, (layer, head)) -> (int, int) a head index, or ValueError naming the valid ranges

Example::

    with knockout(mm, edge_block(enc.groups, "image", "last"), layers=range(mm.n_layers)):
        logits = mm.model(**enc.inputs).logits
    with scale_heads(mm, {(0, 3): 0.0}), capture(mm) as cap:
        mm.model(**enc.inputs); cap.attn[0]            # [B, T, D]
    trace = prefix_trace(mm, enc)                      # one clean forward
    trace.rerun(3, 4, cut=edge_block(enc.groups, "image", "last"))   # == knockout in layer 3, [B, V]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from mfutils.model.groups import Encoded
from mfutils.model.loading import MLLM

__all__ = ["knockout", "scale_heads", "capture", "Captured", "residual_stream", "logit_lens", "active_hooks",
           "KnockoutError", "PrefixTrace", "prefix_trace", "check_head"]

_MASKED_IMPLEMENTATIONS = ("sdpa", "eager")


class KnockoutError(ValueError):
    """A knockout that would cut every key of some query.

    Such a row is silently wrong: zeros or NaN under sdpa (depending on the kernel), uniform under eager.
    """


@contextmanager
def _hooks(register: Iterable[Any]) -> Iterator[None]:
    """Keep the handles that ``register`` yields; remove them all, newest first, on exit."""
    with ExitStack() as stack:
        for handle in register:
            stack.callback(handle.remove)
        yield


# ------------------------------------------------------------------------------------------------
# Knockout
# ------------------------------------------------------------------------------------------------
def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of an attention mask: True where the query may attend to the key."""
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def _apply_block(mask: torch.Tensor | None, cut: torch.Tensor, layer: int) -> torch.Tensor:
    """``mask`` ([B|1, 1, q, k]: bool True = attend, additive float, or None = causal) with ``cut`` removed.

    ``cut``: BoolTensor [B, 1|H, q, k]. Raises KnockoutError if a query that had a key would have none left.
    """
    if mask is None:  # sdpa's causal fast path (no padding): rebuild the causal mask it stands for
        q_len, k_len = cut.shape[-2:]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=cut.device).tril(k_len - q_len)[None, None]
    before = _allowed(mask)
    stranded = before.any(-1) & ~(before & ~cut).any(-1)          # [B, 1|H, q]
    if stranded.any():
        b, h, q = (int(i) for i in stranded.nonzero()[0])
        head = f", head {h}" if cut.shape[1] > 1 else ""
        raise KnockoutError(
            f"knockout leaves query position {q} of sample {b} with no key to attend to (layer {layer}{head}). "
            "Every query must keep at least one key: never cut a token from itself (remove the diagonal from the "
            "block: block & ~torch.eye(T, dtype=torch.bool)) or from all of its keys."
        )
    if mask.dtype == torch.bool:
        return mask & ~cut
    return mask.masked_fill(cut, torch.finfo(mask.dtype).min)


@contextmanager
def knockout(mm: MLLM, block: torch.Tensor, layers: Iterable[int],
             heads: Sequence[int] | None = None) -> Iterator[None]:
    """Cut attention edges in ``layers``: query q of sample b may not attend to key k where ``block[b, q, k]``.

    ``block``: BoolTensor [B, T, T] over the full sequence (see ``mfutils.model.groups.edge_block``); ``heads``:
    query heads to cut (default all). Works by rewriting the ``attention_mask`` that the decoder layer passes
    to self-attention, in a forward pre-hook. Attention must see all T keys; it may see only the last q <= T
    queries (a rerun of the trailing rows against cached keys, as ``PrefixTrace.rerun`` does), in which case
    the last q rows of ``block`` apply. Raises KnockoutError during the forward if some query would be left
    with no key.

    Example::

        with knockout(mm, edge_block(enc.groups, "image", "last"), layers=[1, 2]):
            out = mm.model(**enc.inputs)
    """
    impl = mm.attn_implementation
    if impl not in _MASKED_IMPLEMENTATIONS:
        raise ValueError(
            f"knockout rewrites the attention mask, which attn_implementation {impl!r} does not take as a tensor; "
            f"use one of {_MASKED_IMPLEMENTATIONS} (mm.set_attn_implementation('sdpa'))."
        )
    if block.dtype != torch.bool or block.dim() != 3 or block.shape[1] != block.shape[2]:
        raise ValueError(f"block must be a BoolTensor [B, T, T], got {block.dtype} {tuple(block.shape)}")
    chosen_layers = sorted(set(int(l) for l in layers))
    bad = [l for l in chosen_layers if not 0 <= l < mm.n_layers]
    if bad:
        raise ValueError(f"knockout layers {bad} out of range: the model has {mm.n_layers} layers, valid layers are "
                         f"0..{mm.n_layers - 1}; a window of k layers must fit inside them (k <= {mm.n_layers})")
    block = block.to(mm.device)[:, None]                          # [B, 1, T, T]
    if heads is not None:
        heads = [int(h) for h in heads]
        if not heads or any(not 0 <= h < mm.n_heads for h in heads):
            raise ValueError(f"knockout heads must be a non-empty subset of 0..{mm.n_heads - 1} (the model has "
                             f"{mm.n_heads} query heads per layer), got {list(heads)}")
        chosen = torch.zeros(mm.n_heads, dtype=torch.bool, device=block.device)
        chosen[list(heads)] = True
        block = block & chosen[None, :, None, None]               # [B, H, T, T]

    def make_hook(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            mask = kwargs.get("attention_mask")
            B, q_len = hidden.shape[:2]
            k_len = q_len if mask is None else mask.shape[-1]
            T = block.shape[-1]
            if B != block.shape[0] or k_len != T or q_len > T or (mask is None and q_len != T):
                raise ValueError(
                    f"layer {layer}: the knockout block covers {block.shape[0]} samples x {T} "
                    f"positions, but attention sees {B} samples, {q_len} queries and {k_len} keys. Build the "
                    "block from the same batch and run a full forward (no KV-cache decoding)."
                )
            cut = block[..., T - q_len:, :].to(hidden.device)
            if cut.any():
                kwargs["attention_mask"] = _apply_block(mask, cut, layer)
            return args, kwargs

        return hook

    with _hooks(mm.attn(l).register_forward_pre_hook(make_hook(l), with_kwargs=True) for l in chosen_layers):
        yield


# ------------------------------------------------------------------------------------------------
# Head scaling
# ------------------------------------------------------------------------------------------------
def _alpha_table(mm: MLLM, alphas: Mapping[tuple[int, int], float] | torch.Tensor) -> torch.Tensor:
    """FloatTensor [n_layers, n_heads] from a dict {(layer, head): alpha} or a tensor of that shape."""
    shape = (mm.n_layers, mm.n_heads)
    if isinstance(alphas, torch.Tensor):
        if tuple(alphas.shape) != shape:
            raise ValueError(f"alphas must have shape [n_layers, n_heads] = {list(shape)}, got {list(alphas.shape)}")
        table = alphas.detach().float().cpu()
    else:
        table = torch.ones(shape)
        for (layer, head), alpha in alphas.items():
            check_head(mm, (layer, head))
            table[int(layer), int(head)] = float(alpha)
    bad = (~torch.isfinite(table) | (table < 0)).nonzero()
    if len(bad):
        l, h = (int(i) for i in bad[0])
        raise ValueError(f"alpha {float(table[l, h])} for head ({l}, {h}) is not allowed: alpha must be finite and "
                         ">= 0 (0 blocks the head, 1 leaves it unchanged, > 1 amplifies it)")
    return table


def check_head(mm: MLLM, head: tuple[int, int]) -> tuple[int, int]:
    """``(layer, head)`` as ints, or ValueError naming the valid ranges.

    Example: ``check_head(mm, (3, 1))``.
    """
    layer, h = (int(x) for x in head)
    if not (0 <= layer < mm.n_layers and 0 <= h < mm.n_heads):
        raise ValueError(f"head ({layer}, {h}) out of range: the model has {mm.n_layers} layers x {mm.n_heads} heads, "
                         f"so valid heads are (layer 0..{mm.n_layers - 1}, head 0..{mm.n_heads - 1})")
    return layer, h


@contextmanager
def scale_heads(mm: MLLM, alphas: Mapping[tuple[int, int], float] | torch.Tensor,
                positions: torch.Tensor | None = None) -> Iterator[None]:
    """Multiply attention heads' outputs by alpha (0 = block, 1 = unchanged, >1 = amplify).

    ``alphas``: {(layer, head): alpha} or FloatTensor [n_layers, n_heads]; each alpha finite and >= 0
    (ValueError otherwise, and for a head out of range). ``positions``: optional BoolTensor [B, T] (or
    [B, q] for a rerun of the last q rows); only there are heads scaled. Scales the head's slice of the input to ``o_proj``
    (viewed as [..., n_heads, head_dim]; under GQA these are query heads); layers whose alphas are all 1 get no hook.

    Example::

        with scale_heads(mm, {(0, 3): 0.0, (2, 1): 2.5}, positions=enc.groups["last"]):
            out = mm.model(**enc.inputs)
    """
    table = _alpha_table(mm, alphas)
    n_heads, head_dim = mm.n_heads, mm.head_dim
    if positions is not None and positions.dtype != torch.bool:
        raise ValueError(f"positions must be a BoolTensor [B, T], got {positions.dtype}")

    def make_hook(alpha: torch.Tensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            factor = alpha.to(device=x.device, dtype=x.dtype).expand(*x.shape[:-1], n_heads)   # [..., H]
            if positions is not None:
                pos = positions
                if pos.dim() == 2 and pos.shape[0] == x.shape[0] and x.dim() == 3 and x.shape[1] < pos.shape[1]:
                    pos = pos[:, pos.shape[1] - x.shape[1]:]             # a rerun of the trailing rows
                if tuple(pos.shape) != tuple(x.shape[:-1]):
                    raise ValueError(f"positions has shape {list(positions.shape)} but the attention output "
                                     f"is {list(x.shape[:-1])} [B, T]")
                factor = torch.where(pos.to(x.device)[..., None], factor, torch.ones_like(factor))
            scaled = x.unflatten(-1, (n_heads, head_dim)) * factor[..., None]
            return (scaled.flatten(-2), *args[1:])

        return hook

    scaled_layers = [l for l in range(mm.n_layers) if bool((table[l] != 1).any())]
    with _hooks(mm.o_proj(l).register_forward_pre_hook(make_hook(table[l])) for l in scaled_layers):
        yield


# ------------------------------------------------------------------------------------------------
# Capture, residual stream, logit lens
# ------------------------------------------------------------------------------------------------
@dataclass
class Captured:
    """What ``capture`` recorded in the latest forward, keyed by layer.

    ``attn[l]``, ``mlp[l]``: Tensor [B, T, D], the attention and MLP outputs of layer l (what each adds to
    the residual stream). ``resid[l]``: Tensor [B, T, D], the residual stream entering layer l, and for
    l = n_layers the last layer's output (before the final norm).
    """

    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    resid: dict[int, torch.Tensor] = field(default_factory=dict)


_CAPTURABLE = ("attn", "mlp", "resid")


@contextmanager
def capture(mm: MLLM, what: Sequence[str] = ("attn", "mlp")) -> Iterator[Captured]:
    """Record per-layer outputs during forwards inside the context (each forward overwrites the last).

    ``what``: any of ``"attn"`` (attention output, ``self_attn(...)[0]``), ``"mlp"`` and ``"resid"``
    (residual stream, see ``Captured``). Tensors are stored as the model produced them (no copy).

    Example::

        with capture(mm) as cap:
            mm.model(**enc.inputs)
        cap.attn[3][:, -1]                    # layer 3's attention output at the last position, [B, D]
    """
    unknown = set(what) - set(_CAPTURABLE)
    if unknown:
        raise ValueError(f"cannot capture {sorted(unknown)}; choose from {_CAPTURABLE}")
    cap = Captured()

    def store(into: dict[int, torch.Tensor], layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            into[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def store_input(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cap.resid[layer] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    def register() -> Iterator[Any]:
        for l in range(mm.n_layers):
            if "attn" in what:
                yield mm.attn(l).register_forward_hook(store(cap.attn, l))
            if "mlp" in what:
                yield mm.mlp(l).register_forward_hook(store(cap.mlp, l))
            if "resid" in what:
                yield mm.layers[l].register_forward_pre_hook(store_input(l), with_kwargs=True)
        if "resid" in what:
            yield mm.layers[mm.n_layers - 1].register_forward_hook(store(cap.resid, mm.n_layers))

    with _hooks(register()):
        yield cap


@torch.no_grad()
def residual_stream(mm: MLLM, inputs: Encoded | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Tensor [L+1, B, T, D]: the residual stream entering each layer, then the last layer's output.

    Unlike ``output_hidden_states=True`` (whose last entry transformers 5 replaces by the final-normed
    state), every entry here is un-normed, so ``logit_lens(mm, residual_stream(mm, enc)[-1])`` equals the
    logits.

    Example::

        resid = residual_stream(mm, enc)               # [L+1, B, T, D]
        lens = logit_lens(mm, resid)                   # [L+1, B, T, V]
    """
    model_inputs = inputs.inputs if isinstance(inputs, Encoded) else inputs
    with capture(mm, ("resid",)) as cap:
        mm.model(**model_inputs, logits_to_keep=1)
    return torch.stack([cap.resid[l] for l in range(mm.n_layers + 1)])


def logit_lens(mm: MLLM, hidden: torch.Tensor) -> torch.Tensor:
    """Tensor [..., V]: ``unembed(final_norm(hidden))`` for residual-stream states ``hidden`` [..., D].

    Example::

        logit_lens(mm, residual_stream(mm, enc)[2]).argmax(-1)   # layer-2 predictions, [B, T]
    """
    return mm.unembed(mm.final_norm(hidden))


def active_hooks(mm: MLLM) -> int:
    """The number of forward hooks and pre-hooks on the modules of ``mm.model``.

    Not counted: the output-capturing hooks that transformers 5 installs, once and for good, on the first
    forward with ``output_hidden_states`` or ``output_attentions`` (inactive otherwise).

    Example::

        n = active_hooks(mm)
        with knockout(mm, block, [0]): assert active_hooks(mm) == n + 1
    """
    return sum(
        not getattr(fn, "__module__", "").startswith("transformers.")
        for module in mm.model.modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        for fn in hooks.values()
    )


# ------------------------------------------------------------------------------------------------
# Prefix reuse
# ------------------------------------------------------------------------------------------------
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

    with _hooks(register()):
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
