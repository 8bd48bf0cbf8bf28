"""Interventions on the language model of an MLLM: attention knockout, head scaling, capture, logit lens.

Every intervention is a context manager that registers its PyTorch hooks on enter and removes all of them
in ``finally``, also when the body raises; nested ones close in reverse order (``registered`` is the one
mechanism; ``mfutils.model.prefix`` builds prefix reuse on it). Nothing monkey-patches
``forward``; module paths come from the architecture table (``mm.attn(l)``, ``mm.o_proj(l)``, ...). All
work with ``attn_implementation`` ``"sdpa"`` and ``"eager"`` and leave the model bit-identical when they do
nothing.

Public API
----------
knockout(mm, block, layers, heads=None)     cut attention edges (query q may not see key k where block[b, q, k])
scale_heads(mm, alphas, positions=None)     multiply heads' outputs by alpha (0 blocks, >1 amplifies)
capture(mm, what=("attn", "mlp")) -> Captured   record per-layer attention / MLP outputs / residual stream
residual_stream(mm, inputs) -> Tensor[L+1, B, T, D]   the residual stream entering each layer, and the last output
logit_lens(mm, hidden) -> Tensor[..., V]    unembed(final_norm(hidden))
active_hooks(mm) -> int                     forward hooks currently on the model (for leak tests)
KnockoutError                               a knockout that would leave a query with no key to attend to
check_head(mm, (layer, head)) -> (int, int) a head index, or ValueError naming the valid ranges
registered(handles) -> context manager      keep the hook handles an iterable yields; remove them newest first

Example::

    with knockout(mm, edge_block(enc.groups, "image", "last"), layers=range(mm.n_layers)):
        logits = mm.model(**enc.inputs).logits
    with scale_heads(mm, {(0, 3): 0.0}), capture(mm) as cap:
        mm.model(**enc.inputs); cap.attn[0]            # [B, T, D]
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
           "KnockoutError", "check_head", "registered"]

_MASKED_IMPLEMENTATIONS = ("sdpa", "eager")


class KnockoutError(ValueError):
    """A knockout that would cut every key of some query.

    Such a row is silently wrong: zeros or NaN under sdpa (depending on the kernel), uniform under eager.
    """


@contextmanager
def registered(handles: Iterable[Any]) -> Iterator[None]:
    """Keep the hook handles that ``handles`` yields (registering as it goes); remove them all, newest first,
    on exit, also when registering or the body raises.

    Example::

        with registered(mm.attn(l).register_forward_hook(fn) for l in range(mm.n_layers)):
            mm.model(**enc.inputs)
    """
    with ExitStack() as stack:
        for handle in handles:
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

    with registered(mm.attn(l).register_forward_pre_hook(make_hook(l), with_kwargs=True) for l in chosen_layers):
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
    with registered(mm.o_proj(l).register_forward_pre_hook(make_hook(table[l])) for l in scaled_layers):
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

    with registered(register()):
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
