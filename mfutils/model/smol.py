"""The embedded MLLM on a pretrained language model: a Llava whose decoder is SmolLM2-135M-Instruct.

A small CLIP vision tower and the Llava projector (both randomly initialised until training) feed 16 image
tokens into the pretrained SmolLM2 decoder (``mfutils.model.pretrained``). The model is the ``"llava"``
architecture of the table (``mfutils.model.archs.ARCHS``): its config comes from ``ArchSpec.tiny_config``
with the LM's text config and ``SMOL_VISION`` as overrides, its processor from ``ArchSpec.tiny_processor``
(64x64 images, patch 16) around the real byte-level BPE tokenizer, with ``<image>`` added as a special token.

The chat template is ChatML, as SmolLM2's own, for image + text content (an image item renders as
``<image>``, items are joined by a newline). Unlike SmolLM2's template it inserts **no default system prompt**
("You are a helpful AI assistant named SmolLM, ...") when the messages have no system turn: a prompt is its
user turn only, so every token outside the segments is template (group ``other``), and the world's system
sentence (C11's control, a ``system`` segment at the start of the user turn, as for every architecture) is the
only system text in the prompt. A system turn is rendered when a system message is given.

Public API
----------
SMOL_VISION                  the CLIP tower's config overrides (hidden 192, 4 layers, 6 heads, 64x64, patch 16)
IMAGE_SIZE                   64 (16 image tokens)
CHAT_TEMPLATE                the ChatML template of the processor and tokenizer (no default system prompt)
smol_tokenizer(base_tokenizer) -> tokenizer   a copy with ``<image>``, left padding and ``CHAT_TEMPLATE``
smol_llava(seed=0, base=None, attn_implementation="sdpa") -> (LlavaForConditionalGeneration, LlavaProcessor)
Skeleton                     a random:<name> model built on a pretrained LM: its architecture and builder
SKELETONS                    name -> Skeleton; ``"smol"`` (``load_model("random:smol")``)

Shapes: ``pixel_values`` [B, 3, 64, 64]; ``input_ids`` [B, T] with 16 ``<image>`` ids per image; logits
[B, T, 49153] (SmolLM2's 49,152 tokens + ``<image>``). The text-only logits equal the plain LM's.

Example::

    model, proc = smol_llava(seed=0)                       # loads the base from its cache (seconds)
    mm = load_model("random:smol")                         # the same, as an MLLM (mfutils.model.loading)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mfutils.model.archs import ARCHS
from mfutils.model.pretrained import SMOLLM2_GGUF, SMOLLM2_SHA256, load_base_lm

__all__ = ["SMOL_VISION", "IMAGE_SIZE", "CHAT_TEMPLATE", "smol_tokenizer", "smol_llava", "Skeleton", "SKELETONS"]

IMAGE_SIZE = 64
# hidden 192 x 4 layers: the tower of the notes' stage-1 alignment run (colour 0.99 / shape 0.94 nearest-token)
SMOL_VISION: dict[str, Any] = {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 4,
                               "num_attention_heads": 6, "image_size": IMAGE_SIZE, "patch_size": 16}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Keys of the LM's config that say nothing about its shape (the rest become the Llava's text config).
_META_KEYS = ("quantization_config", "architectures", "_name_or_path", "transformers_version", "model_type",
              "dtype", "torch_dtype")


def smol_tokenizer(base_tokenizer: Any) -> Any:
    """A copy of SmolLM2's tokenizer with ``<image>`` as a special token (id 49152), left padding and
    ``CHAT_TEMPLATE``; ``base_tokenizer`` is left as it is.

    Example: ``smol_tokenizer(load_base_lm()[0]).convert_tokens_to_ids("<image>")``    # 49152
    """
    image_token = ARCHS["llava"].image_token
    tok = copy.deepcopy(base_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": [image_token]})
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def smol_llava(seed: int = 0, base: tuple[Any, Any] | None = None,
               attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """(LlavaForConditionalGeneration, LlavaProcessor): SmolLM2 as the decoder, a random CLIP tower
    (``SMOL_VISION``) and projector drawn under ``torch.manual_seed(seed)`` inside ``fork_rng`` (the global RNG is
    untouched); eval mode, float32.

    ``base``: a loaded ``(tokenizer, LlamaForCausalLM)`` (default ``load_base_lm()``); its weights are copied,
    never shared. The input and output embeddings stay tied; ``resize_token_embeddings`` adds the ``<image>`` row.

    Example::

        model, proc = smol_llava(seed=0)
        model.model.language_model.layers[0].self_attn.o_proj       # Linear(576 -> 576)
    """
    import transformers

    spec = ARCHS["llava"]
    base_tok, lm = base if base is not None else load_base_lm()
    tok = smol_tokenizer(base_tok)
    proc = spec.tiny_processor(tok, IMAGE_SIZE)
    proc.chat_template = CHAT_TEMPLATE
    text = {k: v for k, v in lm.config.to_dict().items() if k not in _META_KEYS}
    cfg = spec.tiny_config(tok, int(lm.config.num_hidden_layers), IMAGE_SIZE, text=text, vision=SMOL_VISION)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(cfg)
        model.model.language_model.load_state_dict(lm.model.state_dict())
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
        model.resize_token_embeddings(len(tok))       # the <image> row: drawn from the embeddings' mean/covariance
    model.set_attn_implementation(attn_implementation)
    return model.eval(), proc


@dataclass(frozen=True)
class Skeleton:
    """A ``random:<name>`` model built on a pretrained language model: ``arch`` (its row of ``ARCHS``), ``build``
    (``(seed=, attn_implementation=) -> (model, processor)``) and ``info`` (provenance for ``MLLM.info``)."""

    arch: str
    build: Callable[..., tuple[Any, Any]]
    info: dict[str, Any]


SKELETONS: dict[str, Skeleton] = {
    "smol": Skeleton(arch="llava", build=smol_llava,
                     info={"base": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_SHA256, "vision": SMOL_VISION,
                           "trained": False}),
}
