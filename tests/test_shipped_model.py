"""The shipped default model: its weights match the card, it loads, and it meets its card on a slice."""

from __future__ import annotations

import json

import pytest

from mfutils.present.card import RETRAIN_TOLERANCE
from mfutils.study.evaluate import EVAL_CATEGORIES, evaluate
from mfutils.model.loading import load_model
from mfutils.core.paths import checkpoint_dir
from mfutils.core.provenance import sha256_file

CK = checkpoint_dir()


@pytest.fixture(scope="module")
def card() -> dict:
    path = CK / "model_card.json"
    assert path.exists(), f"{path} is missing: the shipped model must come with its card (make retrain writes both)"
    return json.loads(path.read_text())


def test_weights_match_the_card(card: dict) -> None:
    assert sha256_file(CK / "model.safetensors") == card["weights_sha256"]
    assert (CK / "model.safetensors").stat().st_size <= 25 * 2**20
    for key in ("command", "train_seed", "git_commit", "train_mix", "curve", "wall_time_s", "machine", "heldout"):
        assert key in card, key
    assert card["heldout_eval"]["seed"] != card["train_seed"]
    assert (CK / "MODEL_CARD.md").exists() and (CK / "training_curve.png").exists()


def test_card_meets_the_issue_targets(card: dict) -> None:
    h = card["heldout"]
    assert h["follow_text"]["rate"] >= 0.95 and h["follow_image"]["rate"] >= 0.85
    assert h["image_only"]["rate"] >= 0.90 and h["text_only"]["rate"] >= 0.97
    assert card["follow_image_failures"]["count"] >= 40


def test_loads_and_meets_its_card_on_a_slice(card: dict) -> None:
    mm = load_model("tiny")
    assert mm.n_layers == 8
    res = evaluate(mm, n=200, seed=card["heldout_eval"]["seed"], categories=EVAL_CATEGORIES)
    for cat in EVAL_CATEGORIES:
        # a 200-sample slice of the card's own held-out stream: within its tolerance plus sampling slack
        assert res[cat]["rate"] >= card["heldout"][cat]["rate"] - RETRAIN_TOLERANCE - 0.05, cat

