"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's linear layers: added for training, merged for analysis.

The pretrained-LM default (``mfutils.model.smol``) is instruction-tuned with LoRA: each adapted ``nn.Linear``
``W`` becomes ``W x + (alpha / r) B A x`` with ``A`` [r, in] (small random) and ``B`` [out, r] (zeros), so an
adapter that has not trained yet leaves the logits bit-identical. For analysis the adapter is **merged**
(``W <- W + (alpha / r) B A``) and the wrapper removed, so the model is a plain transformers model again and every
hook of ``mfutils.model.hooks`` sees the module paths it expects. This module is ours (no ``peft``): a wrapper,
a state dict of the ``A``/``B`` pairs, and the merge.

Public API
----------
LoRALinear                                  an ``nn.Linear`` plus a trainable low-rank update
add_lora(root, targets, r, alpha, seed) -> list[str]   wrap the linears of ``root`` whose name ends in a target
lora_state(root) -> dict[str, Tensor]       ``{"<path>.lora_A": [r, in], "<path>.lora_B": [out, r]}``
merge_lora(root) -> int                     fold every wrapper of ``root`` into its linear; returns how many
merge_state(root, state, alpha_over_r)      add a saved ``lora_state`` into the plain linears of ``root``

Example::

    names = add_lora(model.model.language_model, ("q_proj", "v_proj"), r=8, alpha=16, seed=0)
    ...train...
    state = lora_state(model.model.language_model); merge_lora(model.model.language_model)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["LoRALinear", "add_lora", "lora_state", "merge_lora", "merge_state"]


class LoRALinear(nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T``; ``base`` is frozen, ``A`` and ``B`` train."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base = base
        self.scale = float(alpha) / r
        a = torch.empty(r, base.in_features)
        bound = 1.0 / base.in_features ** 0.5          # nn.Linear's default bound, as peft's kaiming-uniform A
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())

    def delta(self) -> torch.Tensor:
        """The weight update ``scale * B A`` [out, in]."""
        return self.scale * (self.lora_B @ self.lora_A)


def _targets(root: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    out = []
    for name, mod in root.named_modules():
        for child_name, child in mod.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and any(full.endswith(t) for t in targets):
                out.append((full, mod, child_name, child))
    return out


def add_lora(root: nn.Module, targets: Sequence[str], r: int, alpha: float, seed: int = 0) -> list[str]:
    """Wrap every ``nn.Linear`` under ``root`` whose path ends in one of ``targets`` in a ``LoRALinear``
    (``A`` drawn from a generator seeded with ``seed``; the global RNG is untouched). Returns the wrapped paths.
    Raises if nothing matches (a misspelt target would otherwise train nothing)."""
    gen = torch.Generator().manual_seed(seed)
    found = _targets(root, targets)
    if not found:
        raise ValueError(f"no linear layer under {type(root).__name__} ends in any of {tuple(targets)}")
    for _, parent, child_name, child in found:
        setattr(parent, child_name, LoRALinear(child, r, alpha, gen))
    return [full for full, *_ in found]


def lora_state(root: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of ``root`` as ``{"<path>.lora_A": A, "<path>.lora_B": B}`` (detached copies)."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in root.named_modules():
        if isinstance(mod, LoRALinear):
            out[f"{name}.lora_A"] = mod.lora_A.detach().clone()
            out[f"{name}.lora_B"] = mod.lora_B.detach().clone()
    return out


@torch.no_grad()
def merge_lora(root: nn.Module) -> int:
    """Fold every ``LoRALinear`` under ``root`` into its base linear (``W += scale B A``) and put the plain
    linear back in its place. Returns the number merged."""
    merged = 0
    for name, mod in list(root.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                child.base.weight += child.delta().to(child.base.weight.dtype)
                setattr(mod, child_name, child.base)
                merged += 1
    return merged


@torch.no_grad()
def merge_state(root: nn.Module, state: dict[str, torch.Tensor], alpha_over_r: float) -> int:
    """Add a saved ``lora_state`` into the plain linears of ``root``: ``W += alpha_over_r * B @ A`` for each
    ``<path>.lora_A`` / ``<path>.lora_B`` pair. Raises on a path that is not a linear of ``root`` or a pair whose
    shapes do not fit (a state from another model). Returns the number of linears changed."""
    paths = sorted({k.rsplit(".", 1)[0] for k in state})
    modules = dict(root.named_modules())
    for path in paths:
        lin = modules.get(path)
        a, b = state.get(f"{path}.lora_A"), state.get(f"{path}.lora_B")
        if not isinstance(lin, nn.Linear) or a is None or b is None:
            raise ValueError(f"adapter entry {path!r} names no linear layer of {type(root).__name__} "
                             "(or lacks its lora_A / lora_B): the adapter belongs to another model")
        if b.shape[0] != lin.out_features or a.shape[1] != lin.in_features or a.shape[0] != b.shape[1]:
            raise ValueError(f"adapter {path!r} has shapes A {tuple(a.shape)}, B {tuple(b.shape)}, which do not fit "
                             f"the linear {lin.in_features} -> {lin.out_features}: the adapter belongs to another model")
        lin.weight += (alpha_over_r * (b.to(lin.weight) @ a.to(lin.weight)))
    return len(paths)
