"""Token groups: which positions of an encoded batch belong to the image, the context, the instruction, ...

Groups are found from the character spans of each prompt segment in the rendered text (tokenizer offset
mapping), never from hard-coded positions, and are per sample, since left padding shifts positions
(paper/METHOD.md). The same code serves the tiny model and every real architecture in ``mfutils.model.archs``.

Public API
----------
encode(mm, prompts, answers=None) -> Encoded    render, process and find the token groups of a batch
Encoded                 ``inputs`` (pass as ``mm.model(**enc.inputs)``), ``groups``, ``texts``
TokenGroups             per-sample bool masks [B, T] for every name in ``mfutils.data.prompts.GROUP_NAMES``
edge_block(groups, src, dst) -> BoolTensor[B, T, T]   the attention edges dst-query -> src-key to cut
edge_cut(groups, src, dst) -> (BoolTensor[B, T, T], BoolTensor[B])   those that exist (causal, no padding, no
                                                      self-edge), and whether both groups are present
render_prompt(mm, prompt) -> str                     the rendered text (what training and evaluation feed)
chat_template(mm) -> str | None                      the processor's chat template (None: ``spec.template``)
render_chat(mm, content) -> str                      one user turn rendered by that chat template
SENTINEL                                             a character no prompt holds, to locate the user text
load_image(image) -> image                           a file path opened as RGB PIL; arrays pass through
SegmentNotFoundError    a segment whose text is missing from the rendered prompt (or maps to no token)

Example::

    enc = encode(mm, prompts)
    logits = mm.model(**enc.inputs).logits                       # [B, T, V]
    block = edge_block(enc.groups, "image", "last")              # cut last -> image, for mfutils.model.hooks.knockout
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mfutils.model.loading import MLLM
from mfutils.data.prompts import GROUP_NAMES, Prompt

__all__ = ["encode", "Encoded", "TokenGroups", "edge_block", "edge_cut", "SegmentNotFoundError", "render_prompt",
           "load_image", "SENTINEL", "chat_template", "render_chat"]

# Marks the start of the user turn when a template is rendered to locate it (never part of a real prompt).
SENTINEL = "\x00"


class SegmentNotFoundError(ValueError):
    """A prompt segment that is not in the rendered text, or that no token covers."""


@dataclass
class TokenGroups:
    """Per-sample token groups of a left-padded batch.

    ``masks[name]``: BoolTensor [B, T] for every name in ``GROUP_NAMES`` (all False where a prompt lacks
    the segment). ``pad``: BoolTensor [B, T], the padding. ``answer``: BoolTensor [B, T], the appended
    answer tokens (teacher forcing; all False without answers); they belong to no group, not even ``other``.
    Only ``last`` may overlap another group (when the prompt ends inside a segment).

    Example::

        g = enc.groups
        g["image"].sum(-1)            # image tokens per sample, LongTensor [B]
        g.union("context", "question")
    """

    masks: dict[str, torch.Tensor]
    pad: torch.Tensor
    answer: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        """BoolTensor [B, T] of group ``name``."""
        if name not in self.masks:
            raise KeyError(f"unknown token group {name!r}; groups are {list(self.masks)}")
        return self.masks[name]

    def union(self, *names: str) -> torch.Tensor:
        """BoolTensor [B, T]: positions in any of ``names``."""
        if not names:
            raise ValueError("union() needs at least one group name")
        out = self[names[0]].clone()
        for n in names[1:]:
            out |= self[n]
        return out

    def lengths(self, name: str) -> torch.Tensor:
        """LongTensor [B]: the number of tokens of group ``name`` in each sample."""
        return self[name].sum(-1)

    def last_index(self) -> torch.Tensor:
        """LongTensor [B]: the position that predicts the answer in each sample."""
        return self["last"].long().argmax(-1)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        return tuple(self.pad.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> TokenGroups:
        """A copy with every mask on ``device``."""
        return TokenGroups({k: v.to(device) for k, v in self.masks.items()}, self.pad.to(device),
                           self.answer.to(device))

    def subset(self, idx: Any) -> TokenGroups:
        """The groups of the samples ``idx`` (int list, slice, LongTensor or BoolTensor [B]); T is kept."""
        if isinstance(idx, int):
            idx = [idx]
        return TokenGroups({k: v[idx] for k, v in self.masks.items()}, self.pad[idx], self.answer[idx])


@dataclass
class Encoded:
    """A processed batch: ``inputs`` (the full processor output, tensors), ``groups``, ``texts`` (rendered)."""

    inputs: dict[str, torch.Tensor]
    groups: TokenGroups
    texts: list[str]

    def to(self, device: torch.device | str) -> Encoded:
        """A copy with inputs and groups on ``device``."""
        return Encoded({k: v.to(device) for k, v in self.inputs.items()}, self.groups.to(device), self.texts)


def edge_block(groups: TokenGroups, src: str | Sequence[str], dst: str | Sequence[str]) -> torch.Tensor:
    """BoolTensor [B, T, T], True at [b, q, k] where query q is in ``dst`` and key k is in ``src``.

    This is the knockout convention "src -> dst": information stops flowing from the ``src`` tokens into
    the ``dst`` tokens, i.e. ``dst`` queries may not attend to ``src`` keys.

    Example::

        block = edge_block(enc.groups, "image", "instruction")   # instruction queries cannot see image keys
        block = edge_block(enc.groups, ["context", "image"], "last")
    """
    s = groups.union(*([src] if isinstance(src, str) else src))
    d = groups.union(*([dst] if isinstance(dst, str) else dst))
    return d[:, :, None] & s[:, None, :]


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
def chat_template(mm: MLLM) -> str | None:
    """The processor's chat template, or None when it has none (then ``mm.spec.template`` renders)."""
    return getattr(mm.processor, "chat_template", None) or None


def render_chat(mm: MLLM, content: list[dict[str, str]]) -> str:
    """One user turn of ``content`` items (``{"type": "image"}`` / ``{"type": "text", "text": ...}``) rendered by
    the processor's chat template, with the generation prompt.

    Example: ``render_chat(mm, [{"type": "text", "text": SENTINEL}]).index(SENTINEL)`` (where user text starts).
    """
    out = mm.processor.apply_chat_template([{"role": "user", "content": content}],
                                           add_generation_prompt=True, tokenize=False)
    return out if isinstance(out, str) else out[0]


def _render(mm: MLLM, prompt: Prompt) -> tuple[str, int]:
    """The rendered text of ``prompt`` and the character where the user turn starts."""
    if chat_template(mm):
        # consecutive text segments go into one text item, joined by a space: chat templates concatenate
        # text items as they are (Qwen, InternVL) or append a space to each (llava-hf)
        content: list[dict[str, str]] = []
        for name, text in prompt.segments:
            if name == "image":
                content.append({"type": "image"})
            elif content and content[-1]["type"] == "text":
                content[-1]["text"] += " " + text
            else:
                content.append({"type": "text", "text": text})
        return render_chat(mm, content), render_chat(mm, [{"type": "text", "text": SENTINEL}]).index(SENTINEL)
    user = " ".join(mm.spec.image_placeholder if name == "image" else text for name, text in prompt.segments)
    return mm.spec.template.format(user=user), mm.spec.template.format(user=SENTINEL).index(SENTINEL)


def render_prompt(mm: MLLM, prompt: Prompt) -> str:
    """The full prompt text of ``prompt`` in ``mm``'s chat template (one image placeholder, no answer)."""
    return _render(mm, prompt)[0]


def _segment_spans(mm: MLLM, prompt: Prompt, text: str, start: int, sample: int) -> dict[str, tuple[int, int]]:
    """Character span of each segment in ``text``, searched from ``start``: the image placeholder first (a chat
    template may put images before all text, as llava-hf's does), then the text segments in order, never
    inside the image placeholder."""
    spans: dict[str, tuple[int, int]] = {}
    img = text.find(mm.spec.image_token, start)
    ph_lo, ph_hi = img, img + len(mm.spec.image_token)
    ph, i = mm.spec.image_placeholder, mm.spec.image_placeholder.find(mm.spec.image_token)
    if img >= 0 and i >= 0 and text.startswith(ph, img - i):  # the whole placeholder ("<|vision_end|>" holds "is")
        ph_lo, ph_hi = img - i, img - i + len(ph)
    cursor = start
    for name, seg in prompt.segments:
        if name == "image":
            needle, pos = mm.spec.image_token, img
        else:
            needle = seg
            pos = _find_whole(text, needle, cursor) if needle else -1
            while pos >= 0 and pos < ph_hi and pos + len(needle) > ph_lo:
                pos = _find_whole(text, needle, pos + 1)
        if pos < 0:
            raise SegmentNotFoundError(
                f"segment {name!r} of sample {sample} ({needle!r}) not found in the rendered prompt after "
                f"character {cursor}: {text!r}. Every segment must appear verbatim, non-empty and in order in "
                "the rendered text; check the segment text and the chat template (processor.chat_template or "
                "ArchSpec.template) that renders it."
            )
        spans[name] = (pos, pos + len(needle))
        if name != "image":
            cursor = pos + len(needle)
    return spans


def _find_whole(text: str, needle: str, start: int) -> int:
    """First occurrence of ``needle`` at or after ``start`` that does not begin or end inside a word."""
    pos = text.find(needle, start)
    while pos >= 0:
        before = text[pos - 1] if pos > 0 else " "
        after = text[pos + len(needle)] if pos + len(needle) < len(text) else " "
        if not (needle[0].isalnum() and before.isalnum()) and not (needle[-1].isalnum() and after.isalnum()):
            return pos
        pos = text.find(needle, pos + 1)
    return -1


# ------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------
def encode(mm: MLLM, prompts: Sequence[Prompt], answers: Sequence[str] | None = None) -> Encoded:
    """Render, process (left padding) and find the token groups of a batch of prompts.

    ``answers`` (one per prompt) are appended after a space for teacher forcing; ``last`` is still the
    position that predicts the answer. ``enc.inputs`` holds every tensor the processor returns ([B, T]
    ``input_ids`` and ``attention_mask``, pixel values, and e.g. Qwen's ``image_grid_thw``). Sets the
    tokenizer's ``padding_side`` to ``"left"``.

    Example::

        enc = encode(mm, prompts, answers=["red", "star"])
        out = mm.model(**enc.inputs)
        out.logits[torch.arange(len(prompts)), enc.groups.last_index()]   # [B, V] answer logits
    """
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    rendered = [_render(mm, p) for p in prompts]
    prompt_texts = [t for t, _ in rendered]
    texts = prompt_texts if answers is None else [f"{t} {a}" for t, a in zip(prompt_texts, answers)]
    mm.tokenizer.padding_side = "left"
    batch = mm.processor(text=texts, images=[load_image(p.image) for p in prompts], return_tensors="pt", padding=True)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
    B, T = ids.shape
    masks = {name: torch.zeros(B, T, dtype=torch.bool) for name in GROUP_NAMES}
    answer = torch.zeros(B, T, dtype=torch.bool)
    for b, (prompt, (prompt_text, user_start)) in enumerate(zip(prompts, rendered)):
        spans = _segment_spans(mm, prompt, texts[b], user_start, b)
        positions = attn[b].nonzero().squeeze(-1)            # left padding: the sample's tokens, in order
        sample_ids = ids[b, positions]
        is_image = sample_ids == mm.image_token_id
        # the processor expands the one image token string into N copies (InternVL: wrapped in <img>..</img>):
        # shift the spans after it
        lo, hi = spans["image"]
        wrap_lo, wrap_hi = mm.spec.image_wrap
        image_text = wrap_lo + mm.spec.image_token * int(is_image.sum()) + wrap_hi
        shift = len(image_text) - (hi - lo)
        expanded = texts[b][:lo] + image_text + texts[b][hi:]
        starts, ends = _offsets(mm, expanded, sample_ids, b)
        for name, (s_lo, s_hi) in spans.items():
            if name == "image":
                member = is_image
            else:
                delta = shift if s_lo >= hi else 0
                last_char = ends - 1                          # zero-length tokens (BOS) belong to no segment
                member = (ends > starts) & (last_char >= s_lo + delta) & (last_char < s_hi + delta)
            if not member.any():
                raise SegmentNotFoundError(
                    f"segment {name!r} of sample {b} ({texts[b][s_lo:s_hi]!r}) maps to no token of the rendered "
                    f"prompt {texts[b]!r}. Give the segment non-empty text that the tokenizer keeps."
                )
            masks[name][b, positions[member]] = True
        prompt_end = len(prompt_text) + shift
        last = int(((ends > starts) & (starts < prompt_end)).nonzero()[-1])
        if int(ends[last]) > prompt_end:
            raise ValueError(
                f"sample {b}: the last prompt token {expanded[int(starts[last]):int(ends[last])]!r} runs into the "
                "appended answer, so no position predicts the answer alone. Change the answer's leading text."
            )
        masks["last"][b, positions[last]] = True
        if answers is not None:
            answer[b, positions[last + 1:]] = True
    grouped = answer.clone()
    for name in GROUP_NAMES:
        grouped |= masks[name]
    masks["other"] = attn & ~grouped
    return Encoded(inputs=inputs, groups=TokenGroups(masks, ~attn, answer), texts=texts)


def load_image(image: Any) -> Any:
    """A prompt's image as the processor takes it: a file path (``str`` / ``PathLike``, e.g. a COCO file) is
    opened as an RGB PIL image; arrays and PIL images pass through."""
    import os

    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            return im.convert("RGB")
    return image


def _offsets(mm: MLLM, expanded: str, sample_ids: torch.Tensor, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Character (start, end) of each token of ``expanded``, LongTensors [n_tokens], after checking that the
    tokenizer reproduces the processor's ids ``sample_ids`` for it."""
    tok = mm.tokenizer(expanded, return_offsets_mapping=True)
    if tok["input_ids"] != sample_ids.tolist():
        raise ValueError(
            f"sample {sample}: tokenizing the image-expanded text does not reproduce the processor's input_ids "
            f"({len(tok['input_ids'])} vs {len(sample_ids)} tokens) for {expanded!r}. Token groups rely on the "
            "processor expanding the image token into N copies in place; check the processor and tokenizer."
        )
    offsets = torch.tensor(tok["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    return offsets[:, 0], offsets[:, 1]


def edge_cut(groups: "TokenGroups", src: Sequence[str], dst: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cut [B, T, T], valid [B]): the attention edges of ``edge_block`` that exist (causal, neither end
    padding, not a token to itself), and whether both groups are present in each sample.

    Example::

        cut, valid = edge_cut(enc.groups, ["image"], ["last"])     # for mfutils.model.hooks.knockout
    """
    B, T = groups.shape
    block = edge_block(groups, list(src), list(dst))
    real = ~groups.pad
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    block = block & causal & real[:, :, None] & real[:, None, :] & ~torch.eye(T, dtype=torch.bool)
    valid = groups.union(*src).any(-1) & groups.union(*dst).any(-1)
    return block, valid
