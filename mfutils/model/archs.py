"""Architecture adapters: one table of facts per supported MLLM architecture.

Everything in ``mfutils`` that needs to know where a module lives, how many heads a layer has, how a
prompt is rendered or how a tiny model of an architecture is built asks this table, never the model's
class name.

Public API
----------
ArchSpec                       frozen dataclass of module paths, prompt-rendering facts and tiny-model factories
ArchSpec.tiny_processor(tokenizer, image_size) -> processor   offline processor, image_size square -> 16 tokens
ArchSpec.tiny_config(tokenizer, n_layers, image_size, text=None, vision=None) -> config   a tiny model's config
ARCHS                          dict name -> ArchSpec ("llava", "qwen2_vl", "qwen2_5_vl", "internvl")
spec_for_model_type(t) -> ArchSpec   the adapter for a transformers ``config.model_type``
UnsupportedArchitectureError   raised for a model_type without an adapter (a ValueError)
get_module(root, path) -> nn.Module  resolve a dotted path ("model.language_model.layers")
without_video(processor_class) -> type   that processor class without its video processor (no torchvision)

Example::

    spec = ARCHS["llava"]
    layers = get_module(model, spec.layers)        # nn.ModuleList of decoder layers
    o_proj = get_module(layers[3], spec.o_proj)    # the output projection of layer 3's attention
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch.nn as nn

__all__ = ["ArchSpec", "ARCHS", "spec_for_model_type", "get_module", "UnsupportedArchitectureError",
           "without_video"]

TinyProcessor = Callable[[Any, int], Any]          # (tokenizer, image_size) -> processor
TinyConfig = Callable[..., Any]                    # (tokenizer, n_layers, image_size, text=, vision=) -> config
Overrides = Mapping[str, Any] | None


class UnsupportedArchitectureError(ValueError):
    """A checkpoint whose ``config.model_type`` has no adapter in ``ARCHS``."""


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one MLLM architecture (transformers v5 layout).

    Paths are dotted attribute paths: ``layers``, ``final_norm`` and ``unembed`` from the top-level model;
    ``attn``, ``o_proj`` and ``mlp`` from one decoder layer. Their defaults are the transformers v5 layout,
    which every supported architecture shares.

    ``tiny_processor(tokenizer, image_size)``: the processor of a tiny model (offline, no torchvision), images
    ``image_size`` square -> 16 image tokens. ``tiny_config(tokenizer, n_layers, image_size, text=None,
    vision=None)``: the transformers config of a tiny model; ``text`` / ``vision`` override keyword arguments
    of its text / vision config (``mfutils.study.train`` sizes the shipped model this way).
    """

    name: str
    model_types: tuple[str, ...]          # transformers config.model_type values served by this adapter
    model_class: str                      # transformers class that loads the checkpoint
    image_token: str                      # the token string that the processor expands into image tokens
    image_placeholder: str                # what stands for one image in the rendered user text
    template: str                         # fallback chat template with a ``{user}`` slot (no chat_template)
    tiny_processor: TinyProcessor         # the processor of a tiny model of this architecture
    tiny_config: TinyConfig               # the config of a tiny model of this architecture
    layers: str = "model.language_model.layers"       # decoder layers (nn.ModuleList)
    attn: str = "self_attn"                           # self-attention module inside one decoder layer
    o_proj: str = "self_attn.o_proj"                  # attention output projection inside one decoder layer
    mlp: str = "mlp"                                  # MLP inside one decoder layer
    final_norm: str = "model.language_model.norm"     # final norm applied before the unembedding
    unembed: str = "lm_head"                          # unembedding (lm_head)
    text_config_attr: str = "text_config"  # where the language model config lives on the top-level config
    # strings the processor writes around the N expanded image tokens (InternVL: "<img>" ... "</img>")
    image_wrap: tuple[str, str] = ("", "")
    # extra special tokens a processor of this architecture needs on its tokenizer (name -> token)
    tokenizer_specials: tuple[tuple[str, str], ...] = ()
    # the processor class that needs no video processor (no torchvision), when AutoProcessor fails
    processor_class: str | None = None
    # the paper's checkpoint of this architecture (only named in messages: "how to fetch the weights")
    hub_id: str = ""


def without_video(base: type) -> type:
    """``base`` (a Qwen or InternVL processor class) without a video processor: needed when torchvision is
    absent (the video processors need it; see the notes). Images are processed by the PIL image processors.

    Example: ``without_video(transformers.Qwen2VLProcessor).from_pretrained(path)``.
    """

    class _NoVideo(base):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    _NoVideo.__name__ = base.__name__
    _NoVideo.__qualname__ = base.__qualname__
    return _NoVideo


# ------------------------------------------------------------------------------------------------
# Tiny-model factories (transformers is imported on call, so reading the table stays cheap)
# ------------------------------------------------------------------------------------------------
def _text(tok: Any, n_layers: int, text: Overrides, **rope: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny language model's config; ``rope``: extra rotary parameters (M-RoPE)."""
    return {
        "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": n_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, **rope}, **(text or {}),
    }


def _llava_processor(tok: Any, image_size: int) -> Any:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size}, do_center_crop=False,
    )
    return LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=image_size // 4,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
    )


def _llava_config(tok: Any, n_layers: int, image_size: int, text: Overrides = None, vision: Overrides = None) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vis = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
           "image_size": image_size, "patch_size": image_size // 4, **(vision or {})}
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vis), text_config=LlamaConfig(**_text(tok, n_layers, text)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(vis["image_size"] // vis["patch_size"]) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )


def _qwen_processor(processor_class: str) -> TinyProcessor:
    def build(tok: Any, image_size: int) -> Any:
        import transformers

        patch = image_size // 8
        ip = transformers.Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                                   min_pixels=image_size * image_size,
                                                   max_pixels=image_size * image_size)
        return without_video(getattr(transformers, processor_class))(image_processor=ip, tokenizer=tok)

    return build


def _qwen_config(config_class: str, vision_of: Callable[[int], dict[str, Any]]) -> TinyConfig:
    """The tiny-config factory of a Qwen-VL architecture; ``vision_of(patch)``: its vision config."""

    def build(tok: Any, n_layers: int, image_size: int, text: Overrides = None, vision: Overrides = None) -> Any:
        import transformers

        tid = tok.convert_tokens_to_ids
        return getattr(transformers, config_class)(
            vision_config={**vision_of(image_size // 8), **(vision or {})},
            text_config=_text(tok, n_layers, text, mrope_section=[2, 3, 3]),
            image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
            vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        )

    return build


def _internvl_processor(tok: Any, image_size: int) -> Any:
    # InternVL's image processor is GotOcr2's; its PIL variant needs no torchvision. One 448-style tile
    # per image (no crop_to_patches), patch image_size/8 -> 8x8 patches, pixel shuffle 0.5 -> 16 tokens.
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor

    ip = GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, crop_to_patches=False)
    return without_video(InternVLProcessor)(image_processor=ip, tokenizer=tok, image_seq_length=16)


def _internvl_config(tok: Any, n_layers: int, image_size: int, text: Overrides = None,
                     vision: Overrides = None) -> Any:
    from transformers import InternVLConfig

    return InternVLConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": image_size, "patch_size": image_size // 8, **(vision or {})},
        text_config={**_text(tok, n_layers, text), "model_type": "qwen2"},
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=16, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
ARCHS: dict[str, ArchSpec] = {
    # One row per architecture: identity; prompt rendering; tiny-model factories; loading and provenance.
    # llava-hf LLaVA-1.5 layout. Real checkpoints render with their processor's chat template
    # ("USER: <image>\n{text} ASSISTANT:", images first); ``template`` serves processors without one.
    "llava": ArchSpec(
        name="llava", model_types=("llava",), model_class="LlavaForConditionalGeneration",
        image_token="<image>", image_placeholder="<image>", template="USER: {user} ASSISTANT:",
        tiny_processor=_llava_processor, tiny_config=_llava_config,
        hub_id="llava-hf/llava-1.5-7b-hf",
    ),
    "qwen2_vl": (_QWEN2_VL := ArchSpec(
        name="qwen2_vl", model_types=("qwen2_vl",), model_class="Qwen2VLForConditionalGeneration",
        image_token="<|image_pad|>", image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        template=("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                  "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        tiny_processor=_qwen_processor("Qwen2VLProcessor"),
        tiny_config=_qwen_config("Qwen2VLConfig", lambda patch: dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=patch,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3)),
        processor_class="Qwen2VLProcessor", hub_id="Qwen/Qwen2-VL-7B-Instruct",
    )),
    # Qwen2.5-VL shares Qwen2-VL's layout and template (the vision tower differs, which no hook touches)
    "qwen2_5_vl": replace(
        _QWEN2_VL, name="qwen2_5_vl", model_types=("qwen2_5_vl",), model_class="Qwen2_5_VLForConditionalGeneration",
        tiny_processor=_qwen_processor("Qwen2_5_VLProcessor"),
        tiny_config=_qwen_config("Qwen2_5_VLConfig", lambda patch: dict(
            depth=2, hidden_size=32, num_heads=2, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2,
            intermediate_size=64, out_hidden_size=64, window_size=4 * patch, fullatt_block_indexes=[1],
            in_channels=3)),
        processor_class="Qwen2_5_VLProcessor", hub_id="Qwen/Qwen2.5-VL-7B-Instruct",
    ),
    # InternVL3 (transformers' InternVL, "-hf" checkpoints): InternViT + pixel-shuffle projector + Qwen2 decoder.
    # The user text holds one "<IMG_CONTEXT>"; the processor writes "<img>" + N x "<IMG_CONTEXT>" + "</img>".
    "internvl": ArchSpec(
        name="internvl", model_types=("internvl",), model_class="InternVLForConditionalGeneration",
        image_token="<IMG_CONTEXT>", image_placeholder="<IMG_CONTEXT>", image_wrap=("<img>", "</img>"),
        template="<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
        tokenizer_specials=(("start_image_token", "<img>"), ("end_image_token", "</img>"),
                            ("context_image_token", "<IMG_CONTEXT>"), ("video_token", "<video>")),
        tiny_processor=_internvl_processor, tiny_config=_internvl_config,
        processor_class="InternVLProcessor", hub_id="OpenGVLab/InternVL3-8B-hf",
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
        "Add an ArchSpec to mfutils/model/archs.py for a new architecture."
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
