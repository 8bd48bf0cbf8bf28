"""Token groups: found from character spans, per sample, under left padding, for every architecture."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mfutils.model.groups import Encoded, SegmentNotFoundError, edge_block, encode
from mfutils.model.loading import MLLM, RANDOM_ARCHS
from mfutils.data.prompts import GROUP_NAMES, Prompt

from conftest import WORDS

TEXT_SEGMENTS = ("system", "context", "instruction", "question", "constraint")


def decoded(mm: MLLM, enc: Encoded, b: int, mask: torch.Tensor) -> str:
    return mm.tokenizer.decode(enc.inputs["input_ids"][b][mask[b]])


def check_groups(mm: MLLM, prompts: list[Prompt], enc: Encoded) -> None:
    """Every segment's tokens decode to its text; image, pad, last and other are where they must be."""
    g, ids = enc.groups, enc.inputs["input_ids"]
    assert g.pad.equal(enc.inputs["attention_mask"] == 0)
    assert g.lengths("image").equal((ids == mm.image_token_id).sum(-1))
    assert (g.lengths("image") == 16).all()
    assert g.lengths("last").eq(1).all()
    for b, prompt in enumerate(prompts):
        for name in TEXT_SEGMENTS:
            text = prompt.text(name)
            if text is None:
                assert not g[name][b].any()
            else:
                assert decoded(mm, enc, b, g[name]) == " ".join(text.split())
    # every non-pad position is in a group (or the answer), and in at most one group besides ``last``
    count = sum(g[n].long() for n in GROUP_NAMES if n != "last") + g.answer.long()
    assert count.le(1).all()
    assert (count.bool() | g["last"]).equal(~g.pad)
    assert not (g.union(*GROUP_NAMES) & g.pad).any()


def test_groups_left_padding(mm_arch: MLLM, prompts: list[Prompt]) -> None:
    enc = encode(mm_arch, prompts)
    g = enc.groups
    assert g.pad.any(-1).sum() >= 2, "the batch must be left-padded"
    assert g.pad[:, -1].logical_not().all() and g.pad[:, 0].any()
    check_groups(mm_arch, prompts, enc)
    T = g.shape[1]
    assert g.last_index().eq(T - 1).all()
    assert not g["constraint"][3].any() and g["constraint"][:3].any(-1).all()
    # the template and BOS are "other"; pad positions shift the groups per sample
    assert g["other"].any(-1).all()
    first_ctx = g["context"].long().argmax(-1)
    assert first_ctx.sub(g.pad.sum(-1)).unique().numel() == 1


def test_groups_with_answers(mm_arch: MLLM, prompts: list[Prompt]) -> None:
    answers = ["red", "blue star", "circle", "green"]
    enc = encode(mm_arch, prompts, answers)
    check_groups(mm_arch, prompts, enc)
    g = enc.groups
    for b, answer in enumerate(answers):
        assert decoded(mm_arch, enc, b, g.answer) == answer
        first_answer = int(g.answer[b].long().argmax())
        assert int(g.last_index()[b]) == first_answer - 1
    plain = encode(mm_arch, prompts)
    for b in range(len(prompts)):  # the same tokens predict the answer with and without teacher forcing
        ids, plain_ids = enc.inputs["input_ids"][b], plain.inputs["input_ids"][b]
        assert ids[g["last"][b]].equal(plain_ids[plain.groups["last"][b]])


def test_groups_helpers(mm_arch: MLLM, prompts: list[Prompt]) -> None:
    enc = encode(mm_arch, prompts)
    g = enc.groups
    sub = g.subset([2, 0])
    assert sub["context"].equal(g["context"][[2, 0]]) and sub.pad.equal(g.pad[[2, 0]])
    assert g.subset(1)["question"].equal(g["question"][1:2])
    assert g.to("cpu")["image"].equal(g["image"])
    assert enc.to("cpu").inputs["input_ids"].equal(enc.inputs["input_ids"])
    assert g.union("context", "question").equal(g["context"] | g["question"])
    with pytest.raises(KeyError, match="unknown token group"):
        g["answers"]
    block = edge_block(g, "image", ["instruction", "last"])
    B, T = g.shape
    assert block.shape == (B, T, T)
    dst = g.union("instruction", "last")
    for b in range(B):
        assert block[b].equal(dst[b][:, None] & g["image"][b][None, :])
    # an "image -> instruction" cut: instruction queries lose image keys, image queries keep everything
    assert not block[g["image"]].any()


segment_words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@st.composite
def prompt_batches(draw: st.DrawFn) -> list[Prompt]:
    batch = []
    for i in range(draw(st.integers(1, 3))):
        names = draw(st.lists(st.sampled_from(TEXT_SEGMENTS), unique=True, max_size=5))
        segments = [(n, draw(segment_words)) for n in names]
        segments.insert(draw(st.integers(0, len(segments))), ("image", ""))
        image = np.full((64, 64, 3), 40 * i, dtype=np.uint8)
        batch.append(Prompt(segments=tuple(segments), image=image))
    return batch


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
@settings(max_examples=25, deadline=None)
@given(batch=prompt_batches())
def test_groups_property(tiny_models: Callable[[str, str], MLLM], arch: str, batch: list[Prompt]) -> None:
    mm = tiny_models(arch, "sdpa")
    check_groups(mm, batch, encode(mm, batch))


CHAT_TEMPLATE = (
    "USER:{% for c in messages[0]['content'] %} {% if c['type'] == 'image' %}PLACEHOLDER"
    "{% elif 'star' not in c['text'] %}{{ c['text'] }}{% endif %}{% endfor %} ASSISTANT:"
)


def test_groups_chat_template(mm_arch: MLLM, prompts: list[Prompt], monkeypatch: pytest.MonkeyPatch) -> None:
    template = CHAT_TEMPLATE.replace("PLACEHOLDER", mm_arch.spec.image_placeholder)
    monkeypatch.setattr(mm_arch.processor, "chat_template", template, raising=False)
    clean = [p for p in prompts if "star" not in " ".join(t for _, t in p.segments)]
    enc = encode(mm_arch, clean)
    assert enc.texts[0].startswith("USER: ")
    check_groups(mm_arch, clean, enc)


def test_segment_dropped_by_template(mm_arch: MLLM, prompts: list[Prompt], monkeypatch: pytest.MonkeyPatch) -> None:
    template = CHAT_TEMPLATE.replace("PLACEHOLDER", mm_arch.spec.image_placeholder)
    monkeypatch.setattr(mm_arch.processor, "chat_template", template, raising=False)
    image = prompts[0].image
    ok = Prompt((("image", ""), ("context", "a red circle ."), ("question", "what color ?")), image)
    dropped = Prompt((("image", ""), ("context", "a blue star ."), ("question", "what shape ?")), image)
    with pytest.raises(SegmentNotFoundError, match=r"segment 'context' of sample 1 .*a blue star"):
        encode(mm_arch, [ok, dropped])


@pytest.mark.parametrize("text", ["", " "])
def test_empty_segment(mm_arch: MLLM, prompts: list[Prompt], text: str) -> None:
    bad = Prompt((("image", ""), ("context", "red"), ("instruction", text)), prompts[0].image)
    with pytest.raises(SegmentNotFoundError, match="segment 'instruction' of sample 2"):
        encode(mm_arch, [prompts[0], prompts[1], bad])


def test_segment_search_skips_the_image_placeholder_and_partial_words() -> None:
    # found by hypothesis: "is" right after Qwen's image placeholder matched inside "<|vision_end|>"
    from mfutils.model.loading import random_model
    from mfutils.data.prompts import Prompt

    words = ["the", "is", "this", "island"]
    for arch in ("qwen2_vl", "llava"):
        mm = random_model(arch, words=words)
        img = np.zeros((64, 64, 3), dtype=np.uint8)
        p = Prompt(segments=(("context", "this island"), ("image", ""), ("instruction", "is"), ("question", "the")), image=img)
        enc = encode(mm, [p])
        ids = enc.inputs["input_ids"][0]
        assert mm.tokenizer.decode(ids[enc.groups["instruction"][0]]).split() == ["is"]
        assert mm.tokenizer.decode(ids[enc.groups["context"][0]]).split() == ["this", "island"]
