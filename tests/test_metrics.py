"""Margins, INSSD, flips and MFR: against direct computations."""

from __future__ import annotations

import math

import torch

from mfutils.groups import encode
from mfutils.metrics import Targets, answer_logits, flips, follows, inssd, margins, targets_for
from mfutils.models import random_model
from mfutils.world import make_samples


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
    assert follows(logits, t).tolist() == [True, False]


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
