"""Architecture adapters: one table of facts per supported MLLM architecture.

Everything in ``mfutils`` that needs to know where a module lives, how many heads a layer has or how a
prompt is rendered asks this table, never the model's class name.

Public API
----------
ArchSpec                       frozen dataclass of module paths and prompt-rendering facts
ARCHS                          dict name -> ArchSpec ("llava", "qwen2_vl", "qwen2_5_vl", "internvl")
spec_for_model_type(t) -> ArchSpec   the adapter for a transformers ``config.model_type``
UnsupportedArchitectureError   raised for a model_type without an adapter (a ValueError)
get_module(root, path) -> nn.Module  resolve a dotted path ("model.language_model.layers")

Example::

    spec = ARCHS["llava"]
    layers = get_module(model, spec.layers)        # nn.ModuleList of decoder layers
    o_proj = get_module(layers[3], spec.o_proj)    # the output projection of layer 3's attention
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

__all__ = ["ArchSpec", "ARCHS", "spec_for_model_type", "get_module", "UnsupportedArchitectureError"]


class UnsupportedArchitectureError(ValueError):
    """A checkpoint whose ``config.model_type`` has no adapter in ``ARCHS``."""


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
    # strings the processor writes around the N expanded image tokens (InternVL: "<img>" ... "</img>")
    image_wrap: tuple[str, str] = ("", "")
    # extra special tokens a processor of this architecture needs on its tokenizer (name -> token)
    tokenizer_specials: tuple[tuple[str, str], ...] = ()
    # the processor class that needs no video processor (no torchvision), when AutoProcessor fails
    processor_class: str | None = None
    # the paper's checkpoint of this architecture (only named in messages: "how to fetch the weights")
    hub_id: str = ""


ARCHS: dict[str, ArchSpec] = {
    # llava-hf LLaVA-1.5 layout. Real checkpoints render with their processor's chat template
    # ("USER: <image>\n{text} ASSISTANT:", images first); ``template`` serves processors without one.
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
        hub_id="llava-hf/llava-1.5-7b-hf",
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
        processor_class="Qwen2VLProcessor",
        hub_id="Qwen/Qwen2-VL-7B-Instruct",
    )),
    # Qwen2.5-VL shares Qwen2-VL's layout and template (the vision tower differs, which no hook touches)
    "qwen2_5_vl": replace(_QWEN2_VL, name="qwen2_5_vl", model_types=("qwen2_5_vl",),
                          model_class="Qwen2_5_VLForConditionalGeneration", processor_class="Qwen2_5_VLProcessor",
                          hub_id="Qwen/Qwen2.5-VL-7B-Instruct"),
    # InternVL3 (transformers' InternVL, "-hf" checkpoints): InternViT + pixel-shuffle projector + Qwen2 decoder.
    # The user text holds one "<IMG_CONTEXT>"; the processor writes "<img>" + N x "<IMG_CONTEXT>" + "</img>".
    "internvl": ArchSpec(
        name="internvl",
        model_types=("internvl",),
        model_class="InternVLForConditionalGeneration",
        layers="model.language_model.layers",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        mlp="mlp",
        final_norm="model.language_model.norm",
        unembed="lm_head",
        image_token="<IMG_CONTEXT>",
        image_placeholder="<IMG_CONTEXT>",
        template="<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
        image_wrap=("<img>", "</img>"),
        tokenizer_specials=(("start_image_token", "<img>"), ("end_image_token", "</img>"),
                            ("context_image_token", "<IMG_CONTEXT>"), ("video_token", "<video>")),
        processor_class="InternVLProcessor",
        hub_id="OpenGVLab/InternVL3-8B-hf",
    ),
}


def spec_for_model_type(model_type: str) -> ArchSpec:
    """Return the adapter serving a transformers ``config.model_type`` (e.g. ``"qwen2_5_vl"``)."""
    for spec in ARCHS.values():
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in ARCHS.values() for t in s.model_types)
    raise UnsupportedArchitectureError(
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
