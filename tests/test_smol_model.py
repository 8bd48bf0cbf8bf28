"""The pretrained-LM model: LoRA adapters (added, merged, saved), parts checkpoints, and the shipped ``smol``.

The LoRA tests run on a tiny random Llava (milliseconds); the parts round trip on ``random:smol`` (the base from
its cache, seconds); the shipped model's tests on ``checkpoints/smol-llava`` (about a minute).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mfutils.core.paths import checkpoint_dir
from mfutils.core.provenance import sha256_file
from mfutils.data.world import make_samples
from mfutils.model.inputs import batch_inputs
from mfutils.model.loading import MLLM, load_model
from mfutils.model.lora import LoRALinear, add_lora, lora_state, merge_lora, merge_state
from mfutils.model.smol import LORA_TARGETS, PARTS_FILE, PARTS_RECORD, load_parts, save_parts

CK = checkpoint_dir("smol-llava")


@torch.no_grad()
def _last_logits(mm: MLLM, samples: Any) -> torch.Tensor:
    return mm.model(**batch_inputs(mm, samples)).logits[:, -1]


def _perturb(root: torch.nn.Module, seed: int = 0) -> None:
    """Give every adapter a nonzero B, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in root.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=gen) * 0.02)


@pytest.fixture()
def tiny_llava() -> MLLM:
    return load_model("random:llava")


def test_fresh_adapters_leave_logits_bit_identical(tiny_llava: MLLM) -> None:
    samples = make_samples(4, 5, None, variant=None)
    before = _last_logits(tiny_llava, samples)
    names = add_lora(tiny_llava.model.model.language_model, LORA_TARGETS, r=4, alpha=8)
    assert len(names) == tiny_llava.n_layers * len(LORA_TARGETS)
    assert torch.equal(_last_logits(tiny_llava, samples), before)


def test_merge_equals_the_adapted_model_and_the_saved_state(tiny_llava: MLLM) -> None:
    samples = make_samples(4, 6, None, variant=None)
    base_state = {k: v.clone() for k, v in tiny_llava.model.state_dict().items()}
    root = tiny_llava.model.model.language_model
    add_lora(root, ("q_proj", "down_proj"), r=4, alpha=8, seed=3)
    _perturb(root)
    adapted = _last_logits(tiny_llava, samples)
    state = lora_state(root)
    assert merge_lora(root) == 2 * tiny_llava.n_layers
    assert not any(isinstance(m, LoRALinear) for m in root.modules())
    merged = _last_logits(tiny_llava, samples)
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert not torch.allclose(merged, _fresh_logits(base_state, samples), atol=1e-4)   # the adapters did something
    # the saved state added into a fresh copy of the base gives the same weights, bit for bit
    fresh = load_model("random:llava")
    fresh.model.load_state_dict(base_state)
    merge_state(fresh.model.model.language_model, state, alpha_over_r=8 / 4)
    for k, v in tiny_llava.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[k], v), k


def _fresh_logits(state: dict[str, torch.Tensor], samples: Any) -> torch.Tensor:
    mm = load_model("random:llava")
    mm.model.load_state_dict(state)
    return _last_logits(mm, samples)


def test_bad_targets_and_foreign_states_are_clear_errors(tiny_llava: MLLM) -> None:
    root = tiny_llava.model.model.language_model
    with pytest.raises(ValueError, match="no linear layer"):
        add_lora(root, ("qproj",), r=4, alpha=8)
    with pytest.raises(ValueError, match="another model"):
        merge_state(root, {"layers.0.self_attn.q_proj.lora_A": torch.zeros(4, 7),
                           "layers.0.self_attn.q_proj.lora_B": torch.zeros(9, 4)}, 2.0)
    with pytest.raises(ValueError, match="another model"):
        merge_state(root, {"nowhere.lora_A": torch.zeros(1, 1), "nowhere.lora_B": torch.zeros(1, 1)}, 2.0)


def test_parts_round_trip_on_the_pretrained_base(tmp_path: Path) -> None:
    mm = load_model("random:smol")
    root = mm.model.model.language_model
    add_lora(root, LORA_TARGETS, r=2, alpha=4, seed=1)
    _perturb(root, seed=2)
    with torch.no_grad():                                   # a "trained" projector
        mm.model.model.multi_modal_projector.linear_1.weight.mul_(1.5)
    state = lora_state(root)
    merge_lora(root)
    samples = make_samples(3, 7, None, variant=None)
    want = _last_logits(mm, samples)
    save_parts(mm.model, state, tmp_path, lora_r=2, lora_alpha=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTS_RECORD, PARTS_FILE]
    loaded = load_model(str(tmp_path))
    assert loaded.n_layers == 30 and loaded.n_heads == 9
    assert torch.allclose(_last_logits(loaded, samples), want, atol=1e-5)
    # parts of another base are refused, naming the fix
    record = json.loads((tmp_path / PARTS_RECORD).read_text())
    (tmp_path / PARTS_RECORD).write_text(json.dumps({**record, "base_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="retrain"):
        load_parts(tmp_path)


def test_missing_parts_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    if not CK.exists():
        pytest.skip("no shipped smol checkpoint")
    shutil.copy(CK / PARTS_RECORD, folder / PARTS_RECORD)
    with pytest.raises(FileNotFoundError, match="restore checkpoints"):
        load_parts(folder)


# ---- the shipped model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def card() -> dict:
    path = CK / "model_card.json"
    assert path.exists(), f"{path} is missing: the shipped smol model must come with its card (mf train --model smol)"
    return json.loads(path.read_text())


def test_shipped_parts_match_the_card(card: dict) -> None:
    parts = CK / PARTS_FILE
    assert sha256_file(parts) == card["parts_sha256"]
    total = sum(p.stat().st_size for p in CK.iterdir() if p.is_file())
    assert parts.stat().st_size <= 25 * 2**20 and total <= 25 * 2**20 + 2**20
    for key in ("command", "config", "wall_time_s", "wall_time_by_stage_s", "base", "heldout", "machine",
                "follow_image_failures", "design_notes"):
        assert key in card, key
    assert card["wall_time_s"] <= 90 * 60
    assert card["heldout_eval"]["n_per_category"] == 1000 and card["heldout_eval"]["seed"] != card["train_seed"]
    assert (CK / "MODEL_CARD.md").exists() and (CK / "training_curve.png").exists()


def test_card_meets_the_issue_targets(card: dict) -> None:
    from mfutils.present.card_smol import TARGETS

    for cat, target in TARGETS.items():
        assert card["heldout"][cat]["rate"] >= target, (cat, card["heldout"][cat])


def test_shipped_model_meets_its_targets_at_a_small_n(card: dict) -> None:
    from mfutils.present.card_smol import TARGETS
    from mfutils.study.evaluate import evaluate

    mm = load_model("smol")
    assert (mm.n_layers, mm.n_heads) == (30, 9)
    res = evaluate(mm, n=60, seed=card["heldout_eval"]["seed"] + 7, categories=tuple(TARGETS), batch_size=30)
    for cat, target in TARGETS.items():
        # 60 fresh samples: the rate's Wilson interval must reach the target (not significantly below it)
        assert res[cat]["hi"] >= target, (cat, res[cat])


def test_head_board_is_30_by_9_on_the_shipped_model(card: dict) -> None:
    from mfutils.data.world import make_split
    from mfutils.measure.follow import follows
    from mfutils.model.hooks import active_hooks
    from mfutils.present.widgets.board import head_board

    mm = load_model("smol")
    batch = make_split("test", 12)
    scores = torch.zeros(mm.n_layers, mm.n_heads)
    scores[29, 8], scores[0, 0] = 1.0, 0.5
    hb = head_board(mm, scores, batch[:2], batch, identified=[(29, 8), (0, 0)])
    shown = [w for w in hb.grid.children if w in hb.buttons.values()]
    assert len(shown) == 30 * 9
    hb.buttons[(29, 8)].click()                               # block the head: the readout is follows' count
    assert hb.state == {(29, 8): "blocked"}
    assert hb.mfr["k"] == int(follows(mm, batch, heads=[(29, 8)], alpha=0.0).sum())
    hb.reset()
    assert hb.mfr == hb.base_mfr and active_hooks(mm) == 0
