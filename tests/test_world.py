"""The synthetic world: deterministic, well-formed, every segment found in every architecture's prompt."""

from __future__ import annotations

import numpy as np
import pytest

from mfutils.model.groups import encode
from mfutils.model.loading import RANDOM_ARCHS, random_model
from mfutils.data.counterparts import counterparts
from mfutils.data.sample import CONFLICT_CATEGORIES, dataset_checksum
from mfutils.data.world import (CATEGORIES, HELDOUT_TEMPLATES, INSTRUCTION_TEMPLATES, SPLITS, VARIANTS, make_sample,
                                make_samples, make_split, vocabulary)


def test_samples_are_deterministic() -> None:
    a, b = make_samples(40, 5, None, variant=None), make_samples(40, 5, None, variant=None)
    assert dataset_checksum(a) == dataset_checksum(b)
    assert dataset_checksum(a) != dataset_checksum(make_samples(40, 6, None, variant=None))
    s = make_sample(5, 17)
    assert np.array_equal(s.prompt.image, a[17].prompt.image) and s.prompt.segments == a[17].prompt.segments


@pytest.mark.parametrize("category", CATEGORIES)
def test_answers_and_conflicts(category: str) -> None:
    for s in make_samples(60, 3, category, variant=None):
        assert s.answer in s.candidates
        if category in CONFLICT_CATEGORIES:
            assert s.image_answer != s.text_answer and s.other_answer in s.candidates
            assert {s.answer, s.other_answer} == {s.image_answer, s.text_answer}
        if category == "follow_image":
            assert s.answer == s.image_answer and s.instructed == "image"
        if category in ("follow_text", "no_instruction"):
            assert s.answer == s.text_answer
        if category == "agree":
            assert s.image_answer == s.text_answer
        has = {n for n, _ in s.prompt.segments}
        assert ("instruction" in has) == (category in ("follow_image", "follow_text", "agree"))
        assert ("context" in has) == (category != "image_only")


def test_training_stream_never_uses_heldout_templates() -> None:
    seen = {s.template for s in make_samples(1500, 0, None, variant=None) if s.template is not None}
    assert seen.isdisjoint(HELDOUT_TEMPLATES)
    assert len(seen) == len(INSTRUCTION_TEMPLATES) - len(HELDOUT_TEMPLATES) >= 12
    held = make_samples(200, 1001, "follow_image", heldout_share=0.5)
    assert 0.3 < np.mean([s.heldout_template for s in held]) < 0.7


def test_instructions_use_the_same_words_in_another_order() -> None:
    for t in INSTRUCTION_TEMPLATES:
        a, b = t.format(M="image", O="text"), t.format(M="text", O="image")
        if "{M}" in t and "{O}" in t:
            assert sorted(a.split()) == sorted(b.split())
        assert [w for w in a.split() if w not in ("image", "text")] == [w for w in b.split() if w not in ("image", "text")]
    assert sum("{M}" in t and "{O}" in t for t in INSTRUCTION_TEMPLATES) >= 5
    assert sum(t.startswith(("do not", "disregard", "ignore")) for t in INSTRUCTION_TEMPLATES) >= 3


def test_splits_are_disjoint_from_training_and_each_other() -> None:
    seeds = [int(v["seed"]) for v in SPLITS.values()]
    assert len(set(seeds)) == len(seeds) and 0 not in seeds
    assert make_split("test", 10)[0].prompt.segments == make_split("test", 10)[0].prompt.segments


def test_counterparts_keep_the_image_and_the_context() -> None:
    s = make_split("test", 2)[0]
    img, txt = counterparts(s)
    assert np.array_equal(img.prompt.image, s.prompt.image) and img.answer == s.image_answer
    assert txt.prompt.text("context") == s.prompt.text("context") and txt.answer == s.text_answer
    assert img.prompt.text("context") is None and txt.prompt.text("instruction") is None


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_every_segment_is_found_and_every_word_is_in_the_vocabulary(arch: str) -> None:
    mm = random_model(arch)
    samples = [make_sample(9, i, c, variant=v) for i, (c, v) in
               enumerate((c, v) for c in CATEGORIES for v in VARIANTS)]
    enc = encode(mm, [s.prompt for s in samples])
    assert not (enc.inputs["input_ids"] == mm.tokenizer.unk_token_id).any()
    for i, s in enumerate(samples):
        for name, text in s.prompt.segments:
            ids = enc.inputs["input_ids"][i][enc.groups[name][i]]
            if name == "image":
                assert bool((ids == mm.image_token_id).all()) and len(ids) == 16
            else:
                assert mm.tokenizer.decode(ids).split() == text.split()
    assert set(vocabulary()) <= set(mm.tokenizer.get_vocab())


def test_images_show_the_object_and_text_only_images_are_empty() -> None:
    s = make_samples(2, 1, "image_only")
    assert s[0].prompt.image.shape == (64, 64, 3) and s[0].prompt.image.dtype == np.uint8
    assert not np.array_equal(s[0].prompt.image, s[1].prompt.image)
    # the object is bright on a dark background; a text-only image is background only
    assert s[0].prompt.image.max() > 120
    assert make_samples(1, 1, "text_only")[0].prompt.image.max() < 120


def test_heldout_templates_use_only_words_seen_in_training() -> None:
    # a word never seen in training has an untrained embedding: held-out paraphrases must be new
    # combinations of known words, or they test nothing about reading the instruction
    seen = {w for i, t in enumerate(INSTRUCTION_TEMPLATES) if i not in HELDOUT_TEMPLATES for w in t.split()}
    for i in HELDOUT_TEMPLATES:
        assert set(INSTRUCTION_TEMPLATES[i].split()) <= seen, INSTRUCTION_TEMPLATES[i]
        assert INSTRUCTION_TEMPLATES[i] not in [t for j, t in enumerate(INSTRUCTION_TEMPLATES) if j != i]


# ---- property: any seed renders a valid sample whose segments are all found ---------------------
from hypothesis import given, settings
from hypothesis import strategies as st

_MODELS: dict[str, object] = {}


@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 10**6), category=st.sampled_from(CATEGORIES),
       variant=st.sampled_from(VARIANTS), arch=st.sampled_from(RANDOM_ARCHS), heldout=st.booleans())
@settings(max_examples=40, deadline=None)
def test_any_seed_renders_a_valid_sample(seed: int, index: int, category: str, variant: str, arch: str,
                                         heldout: bool) -> None:
    s = make_sample(seed, index, category, variant=variant, heldout=heldout)
    assert s.prompt.image.shape == (64, 64, 3) and s.prompt.image.dtype == np.uint8
    assert s.answer in s.candidates and s.category == category and s.variant == variant
    if s.conflict:
        assert s.other_answer in s.candidates and s.other_answer != s.answer
    mm = _MODELS.setdefault(arch, random_model(arch, n_layers=1))
    enc = encode(mm, [s.prompt])  # type: ignore[arg-type]
    for name, text in s.prompt.segments:
        ids = enc.inputs["input_ids"][0][enc.groups[name][0]]
        if name == "image":
            assert len(ids) == 16
        else:
            assert mm.tokenizer.decode(ids).split() == text.split()  # type: ignore[attr-defined]


def test_counterparts_dispatch_on_the_source() -> None:
    from mfutils.data.mc2 import counterparts_mc2, record_samples
    from mfutils.data.world import counterparts_world

    s = make_split("test", 2)[0]
    assert [x.prompt.segments for x in counterparts(s)] == [x.prompt.segments for x in counterparts_world(s)]
    rec = {"image_id": "1", "task": "color", "question": "what color ?", "answer_vision": "red",
           "answer_text": "blue", "context": "a blue star ."}
    m = record_samples([rec], [np.zeros((8, 8, 3), dtype=np.uint8)])[0]
    got, want = counterparts(m), counterparts_mc2(m)
    assert [x.prompt.segments for x in got] == [x.prompt.segments for x in want]
    assert (got[0].answer, got[1].answer) == ("red", "blue") and got[1].prompt.image.shape == (336, 336, 3)
