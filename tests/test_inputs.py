"""Processor inputs of world samples (mfutils.model.inputs): the rendered prompt, with the answer on request."""

from __future__ import annotations

from mfutils.data.world import make_samples
from mfutils.model.groups import render_prompt
from mfutils.model.inputs import batch_inputs, render_text
from mfutils.model.loading import random_model


def test_batch_inputs_render_the_prompt_and_append_the_answer() -> None:
    mm = random_model("llava", n_layers=1)
    samples = make_samples(3, 0, None)
    assert render_text(mm, samples[0], False) == render_prompt(mm, samples[0].prompt)
    assert render_text(mm, samples[0], True) == f"{render_prompt(mm, samples[0].prompt)} {samples[0].answer}"
    plain, with_answer = batch_inputs(mm, samples), batch_inputs(mm, samples, with_answer=True)
    assert with_answer["input_ids"].shape[1] == plain["input_ids"].shape[1] + 1     # one-token answers
    answer_ids = [mm.tokenizer.convert_tokens_to_ids(s.answer) for s in samples]
    assert with_answer["input_ids"][:, -1].tolist() == answer_ids
    assert plain["attention_mask"][:, -1].all()                                      # left padding
