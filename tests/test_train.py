"""Training: a few steps of the real recipe lower the loss; the checkpoint folder is written whole."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mfutils.model.loading import load_model
from mfutils.study.train import TrainConfig, train


def test_thirty_steps_lower_the_loss_and_write_a_loadable_checkpoint(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TrainConfig(), steps=30, warmup=5, batch_size=32, eval_every=30)
    out = tmp_path / "tiny"
    card = train(cfg, out, eval_n=16, progress=False)
    losses = card["loss_curve"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert not (tmp_path / "tiny.tmp").exists()
    assert json.loads((out / "train_log.json").read_text())["config"]["steps"] == 30
    mm = load_model(str(out))
    assert mm.n_layers == cfg.n_layers and mm.n_heads == cfg.n_heads


def test_the_recipe_builds_its_llava_from_the_architecture_table() -> None:
    from mfutils.model.archs import ARCHS
    from mfutils.study.train import build_tiny_model

    cfg = TrainConfig()
    mm = build_tiny_model(cfg)
    text, vision = mm.model.config.text_config, mm.model.config.vision_config
    assert mm.spec is ARCHS["llava"] and type(mm.model).__name__ == ARCHS["llava"].model_class
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (cfg.n_layers, cfg.hidden,
                                                                                 cfg.intermediate)
    assert text.num_attention_heads == text.num_key_value_heads == cfg.n_heads
    assert text.max_position_embeddings == 256 and not text.tie_word_embeddings
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.patch_size) == (cfg.vision_hidden, cfg.vision_intermediate, cfg.vision_layers, cfg.vision_heads,
                                   cfg.patch_size)
    assert mm.model.config.image_seq_length == (cfg.image_size // cfg.patch_size) ** 2
