"""Architecture adapters: one table of facts per supported MLLM architecture.

Everything in ``mfutils`` that needs to know where a module lives, how many heads a layer has or how a
prompt is rendered asks this table, never the model's class name.

Public API
----------
ArchSpec                       frozen dataclass of module paths and prompt-rendering facts
ARCHS                          dict name -> ArchSpec ("llava", "qwen2_vl", "qwen2_5_vl")
spec_for_model_type(t) -> ArchSpec   the adapter for a transformers ``config.model_type``
get_module(root, path) -> nn.Module  resolve a dotted path ("model.language_model.layers")

Example::

    spec = ARCHS["llava"]
    layers = get_module(model, spec.layers)        # nn.ModuleList of decoder layers
    o_proj = get_module(layers[3], spec.o_proj)    # the output projection of layer 3's attention
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

__all__ = ["ArchSpec", "ARCHS", "spec_for_model_type", "get_module"]


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one MLLM architecture (transformers v5 layout).

    Paths are dotted attribute paths: ``layers``, ``final_norm`` and ``unembed`` from the top-level model;
    ``attn``, ``o_proj`` and ``mlp`` from one decoder layer.
    """

    name: str
    model_types: tuple[str, ...]          # transformers config.model_type values served by this adapter
    model_class: str                      # transformers class that loads the checkpoint
    layers: str                           # decoder layers (nn.ModuleList)
    attn: str                             # self-attention module inside one decoder layer
    o_proj: str                           # attention output projection inside one decoder layer
    mlp: str                              # MLP inside one decoder layer
    final_norm: str                       # final norm applied before the unembedding
    unembed: str                          # unembedding (lm_head)
    image_token: str                      # the token string that the processor expands into image tokens
    image_placeholder: str                # what stands for one image in the rendered user text
    template: str                         # fallback chat template with a ``{user}`` slot (no chat_template)
    text_config_attr: str = "text_config"  # where the language model config lives on the top-level config


ARCHS: dict[str, ArchSpec] = {
    # llava-hf LLaVA-1.5 layout: "USER: <image>\n{question} ASSISTANT:"
    "llava": ArchSpec(
        name="llava",
        model_types=("llava",),
        model_class="LlavaForConditionalGeneration",
        layers="model.language_model.layers",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        mlp="mlp",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token="<image>",
        image_placeholder="<image>",
        template="USER: {user} ASSISTANT:",
    ),
    "qwen2_vl": (_QWEN2_VL := ArchSpec(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        model_class="Qwen2VLForConditionalGeneration",
        layers="model.language_model.layers",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        mlp="mlp",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token="<|image_pad|>",
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        template=(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ),
    )),
    # Qwen2.5-VL shares Qwen2-VL's layout and template (the vision tower differs, which no hook touches)
    "qwen2_5_vl": replace(_QWEN2_VL, name="qwen2_5_vl", model_types=("qwen2_5_vl",),
                          model_class="Qwen2_5_VLForConditionalGeneration"),
}


def spec_for_model_type(model_type: str) -> ArchSpec:
    """Return the adapter serving a transformers ``config.model_type`` (e.g. ``"qwen2_5_vl"``)."""
    for spec in ARCHS.values():
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in ARCHS.values() for t in s.model_types)
    raise ValueError(
        f"no architecture adapter for model_type {model_type!r}; supported: {known}. "
        "Add an ArchSpec to mfutils/archs.py for a new architecture."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted attribute path below ``root``; raise a clear error naming the missing part."""
    mod: object = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise AttributeError(
                f"module path {path!r} not found on {type(root).__name__}: no attribute {part!r} "
                f"on {type(mod).__name__}. Is the architecture adapter right for this model?"
            )
        mod = getattr(mod, part)
    assert isinstance(mod, nn.Module), f"{path!r} is not a module"
    return mod
