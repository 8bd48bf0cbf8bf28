"""Training the embedded default model: a tiny Llava (CLIP vision tower + Llama decoder) on the world.

The recipe is fixed in ``TrainConfig`` and recorded in the model card; ``python -m mfutils train``
(``make retrain``) runs it. Loss: cross-entropy on the answer plus a language-model loss on every other
text token (real MLLMs start from a language model that predicts every token), image tokens excluded.

Public API
----------
TrainConfig                        the recipe (model size, optimiser, schedule, data mix seed)
build_tiny_model(cfg) -> MLLM      a randomly initialised tiny Llava with the world's tokenizer
train(cfg, out_dir, ...) -> dict   train, evaluate, write the checkpoint folder and its model card

Example::

    cfg = TrainConfig(steps=30)
    summary = train(cfg, Path("/tmp/tiny"), eval_n=64)
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mfutils.model.inputs import batch_inputs
from mfutils.model.loading import MLLM
from mfutils.model.tiny import tiny_parts
from mfutils.model.archs import ARCHS
from mfutils.data.world import IMAGE_SIZE, TRAIN_MIX, TRAIN_SEED, VARIANT_MIX, make_samples, vocabulary

__all__ = ["TrainConfig", "build_tiny_model", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe of the default model. Chosen before any mechanistic analysis; see the card."""

    seed: int = TRAIN_SEED
    steps: int = 1800
    batch_size: int = 64
    lr: float = 6e-4             # 1.5e-3 stalls the vision path of this model size (measured on a prototype)
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip: float = 1.0
    lm_weight: float = 1.0       # weight of the language-model loss on the non-answer text tokens
    eval_every: int = 200
    # model
    n_layers: int = 8
    hidden: int = 192
    n_heads: int = 8
    intermediate: int = 512
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 512
    image_size: int = IMAGE_SIZE
    patch_size: int = 16


def build_tiny_model(cfg: TrainConfig) -> MLLM:
    """A randomly initialised tiny Llava of the recipe's size (seeded by ``cfg.seed``), from ``ARCHS["llava"]``."""
    import transformers

    spec = ARCHS["llava"]
    _, proc, config = tiny_parts(
        spec.name, vocabulary(), n_layers=cfg.n_layers, image_size=cfg.image_size,
        text=dict(hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_heads, max_position_embeddings=256, tie_word_embeddings=False),
        vision=dict(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                    num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                    patch_size=cfg.patch_size),
    )
    torch.manual_seed(cfg.seed)                     # the global RNG, as the recipe always seeded it
    model = getattr(transformers, spec.model_class)(config)
    model.set_attn_implementation("sdpa")
    return MLLM(model=model, processor=proc, spec=spec, name="tiny")


def _loss(mm: MLLM, enc: dict[str, torch.Tensor], lm_weight: float) -> tuple[torch.Tensor, float, float]:
    ids = enc["input_ids"]
    logits = mm.model(**enc).logits                     # [B, T, V]
    pred, target = logits[:, :-1], ids[:, 1:]
    keep = enc["attention_mask"][:, 1:].bool() & (target != mm.image_token_id)
    answer_loss = F.cross_entropy(pred[:, -1], target[:, -1])
    keep[:, -1] = False
    lm_loss = F.cross_entropy(pred[keep], target[keep])
    return answer_loss + lm_weight * lm_loss, answer_loss.item(), lm_loss.item()


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, out_dir: Path, *, eval_n: int = 256, command: str = "",
          progress: bool = True, on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the tiny model with ``cfg`` and write the checkpoint and its model card to ``out_dir``.

    The folder is written to a temporary sibling and renamed at the end, so an interrupted run never
    leaves a half-written checkpoint. Returns the card (a dict).
    """
    from mfutils.study.evaluate import evaluate, quick_accuracy

    from mfutils.core.seed import seed_everything

    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    mm = build_tiny_model(cfg)
    model = mm.model
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    curve: list[dict[str, Any]] = []
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, mininterval=2.0)
    running: list[float] = []
    for step in bar:
        samples = make_samples(cfg.batch_size, cfg.seed, None, start=step * cfg.batch_size, variant=None)
        model.train()
        enc = batch_inputs(mm, samples, with_answer=True)
        loss, a_loss, l_loss = _loss(mm, enc, cfg.lm_weight)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        running.append(a_loss)
        bar.set_postfix(answer_loss=f"{np.mean(running[-20:]):.3f}", lm_loss=f"{l_loss:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            accs = quick_accuracy(mm, n=eval_n, seed=cfg.seed + 500)
            point = {"step": step + 1, "time_s": round(time.time() - t0, 1), "answer_loss": float(np.mean(running[-cfg.eval_every:])),
                     "lm_loss": l_loss, **{f"acc_{k}": v for k, v in accs.items()}}
            curve.append(point)
            if on_eval:
                on_eval(point)
            bar.write(json.dumps(point))
    wall = time.time() - t0
    model.eval()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    mm.processor.save_pretrained(tmp)
    card = {
        "name": "tiny-llava",
        "command": command,
        "config": dataclasses.asdict(cfg),
        "n_parameters": int(n_params),
        "train_mix": TRAIN_MIX,
        "variant_mix": VARIANT_MIX,
        "curve": curve,
        "loss_curve": [round(x, 4) for x in running],
        "wall_time_s": round(wall, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    (tmp / "train_log.json").write_text(json.dumps(card, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return card
