"""Training the pretrained-LM default: SmolLM2-135M-Instruct as the decoder of a Llava, in LLaVA's two stages.

Stage (a) aligns the vision tower and projector (both ours, from scratch) with the language model frozen:
  a1. a warm start without any LM forward (ours): the projector's 16 outputs are regressed onto the LM's input
      embeddings of the image's colour word (even tokens) and shape word (odd tokens), plus a small
      cross-entropy over the 14 attribute words; images of every category that has an object;
  a2. the answer loss through the frozen LM on image-only questions (LLaVA's stage 1 trains the projector on
      image -> text through the frozen LM).
Stage (b) instruction-tunes on the world's training mix (the tiny model's mix, variants and text prior):
  LoRA (``mfutils.model.lora``) on every attention and MLP projection of the decoder, with the tower and
  projector still training, and the loss on the answer plus the LM loss on all other text tokens (image tokens
  excluded), as the tiny model.

Only what is trained is shipped (``mfutils.model.smol.save_parts``): tower, projector, the ``<image>`` embedding
row and the adapters, which ``load_smol`` merges into the verified base. The recipe is ``SmolTrainConfig``,
fixed before any mechanistic result of this model was looked at; the card records it.

Public API
----------
SmolTrainConfig                                  the recipe
train_smol(cfg, out_dir, ...) -> dict            train, write the parts and train_log.json atomically

Example::

    train_smol(SmolTrainConfig(a1_steps=5, a2_steps=2, b_steps=2), Path("/tmp/smol"), eval_n=8)
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
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mfutils.data.world import COLORS, SHAPES, TRAIN_MIX, TRAIN_SEED, VARIANT_MIX, make_samples
from mfutils.measure.answers import candidate_ids
from mfutils.model.inputs import batch_inputs
from mfutils.model.loading import MLLM, random_model
from mfutils.model.lora import add_lora, lora_state, merge_lora
from mfutils.model.smol import LORA_TARGETS, save_parts

__all__ = ["SmolTrainConfig", "train_smol"]


@dataclass(frozen=True)
class SmolTrainConfig:
    """The recipe of the pretrained-LM default. Fixed before any mechanistic analysis; see the card."""

    seed: int = TRAIN_SEED
    # stage a1: regression onto word embeddings (no LM forward)
    a1_steps: int = 1200
    a1_batch: int = 64
    a1_lr: float = 1e-3
    a1_ce_weight: float = 0.1
    # stage a2: answer loss through the frozen LM, image-only questions
    a2_steps: int = 120
    a2_batch: int = 16
    a2_lr: float = 3e-4
    # stage b: instruction tuning (LoRA on the decoder + tower + projector), the training mix
    b_steps: int = 500
    b_batch: int = 16
    b_lr: float = 1e-3           # the adapters
    b_vision_lr: float = 1e-4    # tower and projector
    lora_r: int = 8
    lora_alpha: float = 16.0
    lm_weight: float = 1.0       # LM loss on the non-answer text tokens, as the tiny model
    warmup: int = 30
    weight_decay: float = 0.0
    clip: float = 1.0
    eval_every: int = 100


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def _set_lr(opt: torch.optim.Optimizer, step: int, steps: int, warmup: int) -> None:
    for g in opt.param_groups:
        g["lr"] = _lr(step, steps, g["peak"], warmup)


def _vision_params(model: Any) -> list[torch.nn.Parameter]:
    return [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]


def _image_features(mm: MLLM, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, 16, hidden] projector outputs."""
    return torch.stack(list(mm.model.model.get_image_features(pixel_values=pixel_values).pooler_output))


def _stage_a1(mm: MLLM, cfg: SmolTrainConfig, log: Callable[[str, int, dict[str, float]], None],
              progress: bool) -> None:
    emb = mm.model.get_input_embeddings().weight.detach()
    col_ids = torch.tensor(candidate_ids(mm, list(COLORS)))
    shp_ids = torch.tensor(candidate_ids(mm, list(SHAPES)))
    words = torch.cat([col_ids, shp_ids])
    e_words = emb[words]                                              # [14, H]
    scale = float(e_words.pow(2).mean())
    opt = torch.optim.AdamW([{"params": _vision_params(mm.model), "peak": cfg.a1_lr}], lr=cfg.a1_lr,
                            weight_decay=cfg.weight_decay)
    col_index = {c: i for i, c in enumerate(COLORS)}
    shp_index = {s: len(COLORS) + i for i, s in enumerate(SHAPES)}
    bar = tqdm(range(cfg.a1_steps), desc="stage a1 (regression)", disable=not progress, mininterval=2.0)
    for step in bar:
        samples = [s for s in make_samples(cfg.a1_batch, cfg.seed, None, start=50_000_000 + step * cfg.a1_batch,
                                           variant=None) if s.image_attrs is not None]
        pix = mm.processor.image_processor([s.prompt.image for s in samples], return_tensors="pt")["pixel_values"]
        feats = _image_features(mm, pix)                              # [B, 16, H]
        lab = torch.tensor([[col_index[s.image_attrs["color"]], shp_index[s.image_attrs["shape"]]]
                            for s in samples])                        # [B, 2]
        per_tok = lab[:, torch.arange(feats.shape[1]) % 2]            # [B, 16]: colour on even, shape on odd
        target = e_words[per_tok]
        mse = (feats - target).pow(2).mean() / scale
        ce = F.cross_entropy((feats @ e_words.t()).flatten(0, 1), per_tok.flatten())
        loss = mse + cfg.a1_ce_weight * ce
        _set_lr(opt, step, cfg.a1_steps, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(_vision_params(mm.model), cfg.clip)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.a1_steps:
            acc = float(((feats @ e_words.t()).argmax(-1) == per_tok).float().mean())
            bar.set_postfix(mse=f"{mse.item():.3f}", nearest=f"{acc:.2f}")
            log("a1", step + 1, {"mse": round(mse.item(), 4), "ce": round(ce.item(), 4), "nearest_acc": round(acc, 4)})


def _lm_losses(mm: MLLM, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer CE at the last position, LM CE on every other non-pad, non-image text token)."""
    ids = enc["input_ids"]
    logits = mm.model(**enc).logits
    pred, target = logits[:, :-1], ids[:, 1:]
    keep = enc["attention_mask"][:, 1:].bool() & (target != mm.image_token_id)
    answer = F.cross_entropy(pred[:, -1], target[:, -1])
    keep[:, -1] = False
    return answer, F.cross_entropy(pred[keep], target[keep])


def _loop(mm: MLLM, stage: str, steps: int, batch: int, start: int, categories: Any, opt: torch.optim.Optimizer,
          params: list[torch.nn.Parameter], cfg: SmolTrainConfig, lm_weight: float,
          log: Callable[[str, int, dict[str, float]], None], progress: bool,
          monitor: Callable[[int], None] | None = None) -> None:
    bar = tqdm(range(steps), desc=f"stage {stage}", disable=not progress, mininterval=2.0)
    running: list[float] = []
    for step in bar:
        samples = make_samples(batch, cfg.seed, categories, start=start + step * batch, variant=None)
        mm.model.train()
        answer, lm = _lm_losses(mm, batch_inputs(mm, samples, with_answer=True))
        loss = answer + lm_weight * lm if lm_weight else answer
        _set_lr(opt, step, steps, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        running.append(answer.item())
        bar.set_postfix(answer_loss=f"{np.mean(running[-20:]):.3f}", lm_loss=f"{lm.item():.3f}")
        if (step + 1) % 20 == 0 or step + 1 == steps:
            log(stage, step + 1, {"answer_loss": round(float(np.mean(running[-20:])), 4), "lm_loss": round(lm.item(), 4)})
        if monitor is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == steps):
            mm.model.eval()
            monitor(step + 1)


def _frozen(params: Iterable[torch.nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(False)


def _check_reload(mm: MLLM, folder: Path) -> None:
    from mfutils.model.loading import load_model

    samples = make_samples(4, 12345, None, variant=None)
    enc = batch_inputs(mm, samples)
    with torch.no_grad():
        want = mm.model(**enc).logits[:, -1]
        got = load_model(str(folder)).model(**enc).logits[:, -1]
    diff = float((want - got).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"the parts written to {folder} reload with logits {diff:.2e} away from the trained model's")


def train_smol(cfg: SmolTrainConfig, out_dir: Path, *, eval_n: int = 32, command: str = "", progress: bool = True,
               log_file: Path | None = None, check_reload: bool = True) -> dict[str, Any]:
    """Train the pretrained-LM default with ``cfg`` and write its parts and ``train_log.json`` to ``out_dir``
    (through a temporary sibling, renamed at the end: an interrupted run leaves nothing half-written). Every
    log point is also appended, as one JSON line, to ``log_file`` when given. Returns the log (a dict)."""
    from mfutils.core.seed import seed_everything
    from mfutils.study.evaluate import quick_accuracy

    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    mm = random_model("smol", seed=cfg.seed)       # the verified base + a random tower and projector
    model = mm.model
    t0 = time.time()
    points: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []

    def log(stage: str, step: int, values: dict[str, float]) -> None:
        point = {"stage": stage, "step": step, "time_s": round(time.time() - t0, 1), **values}
        points.append(point)
        if log_file is not None:
            with open(log_file, "a") as fh:
                fh.write(json.dumps(point) + "\n")

    def monitor(stage: str) -> Callable[[int], None]:
        def run(step: int) -> None:
            accs = quick_accuracy(mm, n=eval_n, seed=cfg.seed + 500)
            curve.append({"stage": stage, "step": step, "time_s": round(time.time() - t0, 1),
                          **{f"acc_{k}": v for k, v in accs.items()}})
            log(stage, step, {f"acc_{k}": v for k, v in accs.items()})
        return run

    _frozen(model.parameters())
    for p in _vision_params(model):
        p.requires_grad_(True)
    _stage_a1(mm, cfg, log, progress)
    wall = {"a1": round(time.time() - t0, 1)}

    vis = _vision_params(model)
    opt = torch.optim.AdamW([{"params": vis, "peak": cfg.a2_lr}], lr=cfg.a2_lr, weight_decay=cfg.weight_decay)
    _loop(mm, "a2", cfg.a2_steps, cfg.a2_batch, 60_000_000, "image_only", opt, vis, cfg, 0.0, log, progress)
    model.eval()
    monitor("a2")(cfg.a2_steps)
    wall["a2"] = round(time.time() - t0 - sum(wall.values()), 1)

    lm_root = model.model.language_model
    wrapped = add_lora(lm_root, LORA_TARGETS, cfg.lora_r, cfg.lora_alpha, seed=cfg.seed)
    lora_params = [p for n, p in lm_root.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW([{"params": lora_params, "peak": cfg.b_lr}, {"params": vis, "peak": cfg.b_vision_lr}],
                            lr=cfg.b_lr, weight_decay=cfg.weight_decay)
    _loop(mm, "b", cfg.b_steps, cfg.b_batch, 0, None, opt, lora_params + vis, cfg, cfg.lm_weight, log, progress,
          monitor=monitor("b"))
    wall["b"] = round(time.time() - t0 - sum(wall.values()), 1)
    total = time.time() - t0

    model.eval()
    adapters = lora_state(lm_root)
    merge_lora(lm_root)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_parts(model, adapters, tmp, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha)
    record = {
        "name": "smol-llava",
        "command": command,
        "config": dataclasses.asdict(cfg),
        "lora_targets": list(LORA_TARGETS),
        "n_adapted_linears": len(wrapped),
        "n_trained_parameters": int(sum(p.numel() for p in vis) + sum(t.numel() for t in adapters.values())),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "train_mix": TRAIN_MIX,
        "variant_mix": VARIANT_MIX,
        "monitor_n": eval_n,
        "curve": curve,
        "log": points,
        "wall_time_s": round(total, 1),
        "wall_time_by_stage_s": wall,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    (tmp / "train_log.json").write_text(json.dumps(record, indent=1))
    if check_reload:                  # the shipped parts must give the trained model's logits
        _check_reload(mm, tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return record
