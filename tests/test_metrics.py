"""Margins, INSSD, flips and MFR: against direct computations."""

from __future__ import annotations

import math

import torch

from mfutils.model.groups import encode
from mfutils.measure.answers import Targets, answer_logits, targets_for
from mfutils.measure.margins import flips, inssd, instructed_wins, margins
from mfutils.model.loading import random_model
from mfutils.data.world import make_samples


def test_margin_is_the_log_odds_of_the_pair_and_unconstrained_is_the_probability_gap() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    t = Targets(pos=[[0]], neg=[[1]], cand=[[0, 1, 2]], answer_index=[0])
    p = torch.softmax(logits, -1)[0]
    assert math.isclose(float(margins(logits, t)), math.log(p[0] / p[1]), rel_tol=1e-6)
    pair = p[0] / (p[0] + p[1])
    assert math.isclose(float(margins(logits, t)), math.log(pair / (1 - pair)), rel_tol=1e-6)
    assert math.isclose(float(margins(logits, t, constrained=False)), float(p[0] - p[1]), rel_tol=1e-6)
    # candidate lists are summed: two negatives count as their total probability
    t2 = Targets(pos=[[0]], neg=[[1, 2]], cand=[[0, 1, 2]], answer_index=[0])
    assert math.isclose(float(margins(logits, t2)), math.log(p[0] / (p[1] + p[2])), rel_tol=1e-6)


def test_inssd_scale_and_flips() -> None:
    m = torch.tensor([2.0, 2.0, 2.0, -1.0])
    m2 = torch.tensor([2.0, 0.0, -2.0, 1.0])
    got = inssd(m, m2, eps=0.0)
    assert got.tolist() == [0.0, -1.0, -2.0, 2.0]
    assert flips(m, m2).tolist() == [False, True, True, True]


def test_follows_is_the_argmax_over_candidates() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 9.0], [0.0, 1.0, 3.0, 9.0]])  # token 3 is not a candidate
    t = Targets(pos=[[1], [1]], neg=[[2], [2]], cand=[[0, 1, 2], [0, 1, 2]], answer_index=[1, 1])
    assert instructed_wins(logits, t).tolist() == [True, False]


def test_answer_logits_find_the_answer_position_with_answers_appended() -> None:
    mm = random_model("llava")
    samples = make_samples(4, 3, ["follow_image", "follow_text"])
    with torch.no_grad():
        plain = answer_logits(mm, encode(mm, [s.prompt for s in samples]))
        forced = answer_logits(mm, encode(mm, [s.prompt for s in samples], answers=[s.answer for s in samples]))
    # causal attention: the answer token appended after the last position cannot change it
    assert torch.allclose(plain, forced, atol=1e-5)
    t = targets_for(mm, samples)
    assert len(t) == 4 and all(len(p) == 1 for p in t.pos)


def test_targets_for_mixes_world_and_candidate_list_samples() -> None:
    """World samples keep their one-token targets; MC2 samples get the candidate-list ones, in order."""
    import numpy as np

    from mfutils.data import mc2
    from mfutils.measure.answers import targets_from_candidates

    mm = random_model("qwen2_vl", n_layers=1)
    world = make_samples(2, 3, ["follow_image", "follow_text"])
    rec = {"image_id": "7", "task": "color", "question": "what color is the object ?", "answer_vision": "red",
           "answer_text": "cyan", "context": "the object is a cyan star ."}
    mc = mc2.record_samples([rec], [np.zeros((64, 64, 3), dtype=np.uint8)])
    mixed = targets_for(mm, [world[0], mc[0], world[1], mc[1]])
    alone_w, alone_m = targets_for(mm, world), targets_from_candidates(mm, mc)
    assert [mixed.pos[i] for i in (0, 2)] == alone_w.pos and [mixed.pos[i] for i in (1, 3)] == alone_m.pos
    assert [mixed.neg[i] for i in (0, 2)] == alone_w.neg and [mixed.neg[i] for i in (1, 3)] == alone_m.neg
    tid = mm.tokenizer.convert_tokens_to_ids
    assert mixed.pos[1] == [tid("red")] and mixed.neg[1] == [tid("cyan")]        # "Red"/"Cyan" are unknown words
    assert mixed.pos[3] == [tid("cyan")] and mixed.answer_set is not None and mixed.answer_set[3] == [0]
    logits = torch.zeros(4, len(mm.tokenizer))
    logits[1, tid("red")] = 3.0
    logits[3, tid("red")] = 3.0
    logits[[0, 2], torch.tensor([alone_w.pos[0][0], alone_w.pos[1][0]])] = 3.0
    assert instructed_wins(logits, mixed).tolist() == [True, True, True, False]


def test_candidate_ids_of_multi_token_words_use_the_first_token() -> None:
    from mfutils.measure.answers import candidate_ids
    from mfutils.measure.answers import first_token_ids

    mm = random_model("llava", n_layers=1)
    assert candidate_ids(mm, ["red", "green"]) == [mm.tokenizer.convert_tokens_to_ids(w) for w in ("red", "green")]
    assert candidate_ids(mm, ["red star", "blue"]) == [first_token_ids(mm, ["red"])[0], first_token_ids(mm, ["blue"])[0]]
    import pytest

    with pytest.raises(ValueError, match=r"answer words \['red star', 'red circle'\] start with the same token"):
        candidate_ids(mm, ["red star", "red circle"])
