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
