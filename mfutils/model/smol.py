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
LORA_TARGETS                 the decoder linears the instruction tuning adapts (``mfutils.model.lora``)
PARTS_FILE, PARTS_RECORD     the shipped trained parts (safetensors) and their record (JSON) in a checkpoint folder
save_parts(model, adapters, folder, lora_r, lora_alpha)   write only what was trained (tower, projector,
                             ``<image>`` row, adapters) and the base it belongs to
is_parts_folder(folder) -> bool                           the folder holds a parts checkpoint
verify_parts(folder)    the parts file against its recorded sha256 (parts.json, else model_card.json):
                        ``PartsIntegrityError`` in one line naming the file, both hashes and the fix
load_parts(folder, attn_implementation="sdpa") -> (model, processor, info)   the verified base + the parts,
                             adapters merged: a plain Llava whose module paths every hook expects

Shapes: ``pixel_values`` [B, 3, 64, 64]; ``input_ids`` [B, T] with 16 ``<image>`` ids per image; logits
[B, T, 49153] (SmolLM2's 49,152 tokens + ``<image>``). The text-only logits equal the plain LM's.

Example::

    model, proc = smol_llava(seed=0)                       # loads the base from its cache (seconds)
    mm = load_model("random:smol")                         # the same, as an MLLM (mfutils.model.loading)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mfutils.core.provenance import sha256_file
from mfutils.model.archs import ARCHS
from mfutils.model.lora import merge_state
from mfutils.model.pretrained import SMOLLM2_GGUF, SMOLLM2_SHA256, load_base_lm

__all__ = ["SMOL_VISION", "IMAGE_SIZE", "CHAT_TEMPLATE", "smol_tokenizer", "smol_llava", "Skeleton", "SKELETONS",
           "LORA_TARGETS", "PARTS_FILE", "PARTS_RECORD", "save_parts", "is_parts_folder", "load_parts",
           "PartsIntegrityError", "expected_parts_sha256", "verify_parts"]

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


LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARTS_FILE = "parts.safetensors"
PARTS_RECORD = "parts.json"
_FORMAT = "mfutils-smol-parts/1"
_ROW = "image_embedding_row"


def save_parts(model: Any, adapters: dict[str, torch.Tensor], folder: Path, lora_r: int, lora_alpha: float) -> Path:
    """Write what training changed into ``folder``: ``PARTS_FILE`` (vision tower, projector, the ``<image>``
    embedding row, the adapters' ``lora_A`` / ``lora_B`` under ``lora.``) and ``PARTS_RECORD`` (the base GGUF and
    its sha256, the adapter rank and alpha). ``model`` is the trained Llava with its adapters already merged (or
    not yet added); ``adapters`` is ``mfutils.model.lora.lora_state`` of its language model. Returns the file."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, mod in (("vision_tower.", model.model.vision_tower), ("multi_modal_projector.",
                                                                       model.model.multi_modal_projector)):
        tensors.update({prefix + k: v.detach().contiguous().clone() for k, v in mod.state_dict().items()})
    image_id = int(model.config.image_token_index)
    tensors[_ROW] = model.get_input_embeddings().weight[image_id].detach().clone()
    tensors.update({"lora." + k: v.contiguous() for k, v in adapters.items()})
    save_file(tensors, str(folder / PARTS_FILE))
    record = {"format": _FORMAT, "base_gguf": SMOLLM2_GGUF, "base_sha256": SMOLLM2_SHA256, "lora_r": lora_r,
              "lora_alpha": lora_alpha, "lora_targets": list(LORA_TARGETS), "vision": SMOL_VISION,
              "image_token_index": image_id, "parts_sha256": sha256_file(folder / PARTS_FILE)}
    (folder / PARTS_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return folder / PARTS_FILE


class PartsIntegrityError(ValueError):
    """The parts file's sha256 differs from the one recorded beside it (truncated, changed or replaced)."""


def expected_parts_sha256(folder: Path) -> tuple[str, str] | None:
    """(sha256, where it is recorded) of ``folder``'s parts: ``PARTS_RECORD``'s ``parts_sha256`` (written by
    ``save_parts``), else the model card's (``model_card.json``, written by ``mf card``); None when neither has one."""
    folder = Path(folder)
    for name in (PARTS_RECORD, "model_card.json"):
        path = folder / name
        if path.is_file():
            sha = json.loads(path.read_text()).get("parts_sha256")
            if sha:
                return str(sha), name
    return None


def verify_parts(folder: Path) -> None:
    """Raise ``PartsIntegrityError`` (one line: the file, both hashes, the size, the fix) when ``folder``'s parts
    file does not hash to the recorded sha256 (``expected_parts_sha256``); nothing is recorded: no check.

    Example: ``verify_parts(Path("checkpoints/smol-llava"))``
    """
    folder = Path(folder)
    want = expected_parts_sha256(folder)
    if want is None:
        return
    path = folder / PARTS_FILE
    got = sha256_file(path)
    if got != want[0]:
        raise PartsIntegrityError(
            f"{path} ({path.stat().st_size:,} bytes) has sha256 {got}, but {want[1]} records {want[0]}: the file is "
            f"truncated or changed; restore it (`git checkout -- {path}`) or retrain (`mf train --model smol`)")


def is_parts_folder(folder: Path) -> bool:
    """True when ``folder`` holds a parts checkpoint (``PARTS_RECORD``) rather than a full transformers one."""
    return (Path(folder) / PARTS_RECORD).is_file()


def load_parts(folder: Path, attn_implementation: str = "sdpa") -> tuple[Any, Any, dict[str, Any]]:
    """(model, processor, info): the base of ``PARTS_RECORD`` (``load_base_lm``, sha256 checked) inside a Llava,
    with the tower, projector and ``<image>`` row of ``PARTS_FILE`` loaded and the adapters merged into the
    decoder's weights; eval mode, float32. Raises ``ValueError`` naming the file when the parts belong to another
    base or model, ``PartsIntegrityError`` when the file does not hash to its recorded sha256 (``verify_parts``).

    Example: ``model, proc, info = load_parts(Path("checkpoints/smol-llava"))``
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    record = json.loads((folder / PARTS_RECORD).read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"{folder / PARTS_RECORD}: format {record.get('format')!r}, expected {_FORMAT!r}")
    if record.get("base_sha256") != SMOLLM2_SHA256:
        raise ValueError(f"{folder / PARTS_RECORD} was trained on a base with sha256 {record.get('base_sha256')}, "
                         f"not the installed {SMOLLM2_GGUF} ({SMOLLM2_SHA256}): retrain it (`mf train --model smol`)")
    if not (folder / PARTS_FILE).is_file():
        raise FileNotFoundError(f"{folder / PARTS_FILE} is missing: restore checkpoints/ from git or retrain "
                                "(`mf train --model smol`)")
    verify_parts(folder)
    tensors = load_file(str(folder / PARTS_FILE))
    model, proc = smol_llava(seed=0, attn_implementation=attn_implementation)
    with torch.no_grad():
        for prefix, mod in (("vision_tower.", model.model.vision_tower),
                            ("multi_modal_projector.", model.model.multi_modal_projector)):
            mod.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        model.get_input_embeddings().weight[int(record["image_token_index"])] = tensors[_ROW]
        adapters = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
        merge_state(model.model.language_model, adapters, float(record["lora_alpha"]) / int(record["lora_r"]))
    info = {"base": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_SHA256, "parts": str(folder / PARTS_FILE),
            "lora_r": record["lora_r"], "lora_alpha": record["lora_alpha"], "trained": True}
    return model.eval(), proc, info
