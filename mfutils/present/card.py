"""The model card of a trained tiny checkpoint: provenance, recipe and reasons, held-out accuracy.

Public API
----------
write_card(folder, n=1000, seed=1001) -> dict   evaluate the checkpoint in ``folder`` and write
                                                model_card.json, MODEL_CARD.md, training_curve.{png,pdf}
DESIGN_NOTES                                    the recipe's choices and their reasons (in the card)
RETRAIN_TOLERANCE                               how close a retrain must come, per category accuracy

Example::

    card = write_card(Path("checkpoints/tiny-llava"))
    card["heldout"]["follow_image"]["rate"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mfutils.core.paths import display_path
from mfutils.core.provenance import git_commit, sha256_file

__all__ = ["write_card", "DESIGN_NOTES", "RETRAIN_TOLERANCE"]

RETRAIN_TOLERANCE = 0.03  # absolute, on each category's held-out accuracy

DESIGN_NOTES = """\
Chosen before any mechanistic analysis of this model, for realism, and not retuned afterwards:

- Architecture: transformers' Llava (CLIP vision tower, 2 layers, hidden 128, patch 16 on 64x64 images ->
  16 image tokens; Llama decoder, 8 layers, hidden 192, 8 heads of 24, MLP 512; untied unembedding).
  Eight decoder layers so that "shallow" and "deep" are distinct.
- Loss: cross-entropy on the answer plus a language-model loss (weight 1) on every other text token,
  because real MLLMs start from a language model that predicts every token. Image tokens carry no loss.
- Prototype lesson (recorded as required): a first prototype (8 layers, loss on the final position
  only, 3 instruction templates, 48-token prompts) took a shortcut: the answer position read the
  instruction words directly in layer 0, nothing flowed into the instruction tokens, and it failed on
  only 2 of 1,024 samples, leaving nothing to amplify. Real MLLMs are not trained like that, which is
  why this recipe adds the language-model loss, 16 instruction paraphrases (4 held out for evaluation),
  contexts of 1-4 sentences with distractors, and a text prior.
- Instructions: 16 paraphrases of different lengths and word orders, with synonyms (image / picture /
  photo; text / context / description) and negated forms ("do not rely on the text"); follow-image and
  follow-text instructions use the same words in a different order. Templates 12-15 are held out.
- Text prior: text-side data dominates the mix (follow_text 0.25 + no_instruction 0.10 + text_only 0.15
  against follow_image 0.18 + image_only 0.15; agree 0.17), and with no instruction the answer is the
  text's, as real MLLMs default to the text. No labels are noisy: every training answer is correct.
- Held-out paraphrases (v0 -> v1): the first full training run (v0, same recipe) held out 4 paraphrases
  containing words that occur nowhere in training ("disregard", "according", "wins", ...). Their
  embeddings stay untrained, so v0 scored 0.71 (follow-image) and 0.78 (follow-text) on held-out
  paraphrases against 0.92 and 1.00 on seen ones (n about 500 each, seed 1001). A real MLLM knows such
  words from pre-training; ours cannot. The held-out paraphrases were rewritten as new combinations and
  orders of training words (tests/test_world.py checks this) and the model retrained with the recipe
  unchanged. No mechanistic analysis of v0 was looked at before this change.
- Optimiser: AdamW, peak lr 6e-4 (1.5e-3 stalled the vision path of a prototype of this size), betas
  (0.9, 0.98), weight decay 0.01, 100 warm-up steps, cosine decay, gradient clip 1.0, batch 64.
  The step count was set from the measured step time so that `make retrain` fits in 30 minutes on 2 cores.
"""


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['k']}/{r['n']})"


def write_card(folder: Path, n: int = 1000, seed: int = 1001) -> dict[str, Any]:
    """Evaluate the checkpoint in ``folder`` on ``n`` held-out samples per category (stream ``seed``) and
    write ``model_card.json``, ``MODEL_CARD.md`` and the training-curve figure beside the weights."""
    from mfutils.study.evaluate import EVAL_CATEGORIES, evaluate
    from mfutils.model.loading import load_model
    from mfutils.present.plots import plot_training_curve, save_figure
    from mfutils.data.world import HELDOUT_TEMPLATES

    folder = Path(folder)
    log_path = folder / "train_log.json"
    if not log_path.exists():
        raise FileNotFoundError(f"{display_path(log_path)} is missing: write_card needs the log that `mf train` writes")
    log = json.loads(log_path.read_text())
    if seed in (log["config"]["seed"], log["config"]["seed"] + 500):
        raise ValueError(f"held-out seed {seed} is the training or monitor stream; pick another")
    mm = load_model(str(folder))
    res = evaluate(mm, n=n, seed=seed, progress=True)
    fails = res["follow_image"]["n"] - res["follow_image"]["k"]
    card: dict[str, Any] = {
        **{k: v for k, v in log.items() if k != "curve"},
        "git_commit": git_commit(),
        "train_seed": log["config"]["seed"],
        "heldout_eval": {"seed": seed, "n_per_category": n, "heldout_template_share": 0.5,
                         "heldout_templates": list(HELDOUT_TEMPLATES)},
        "heldout": {k: v for k, v in res.items() if isinstance(v, dict)},
        "follow_image_failures": {"count": fails, "conflict_samples": 2 * n,
                                  "note": "follow-image conflict samples answered wrongly, out of follow-image + follow-text conflict samples"},
        "retrain_tolerance": RETRAIN_TOLERANCE,
        "weights_sha256": sha256_file(folder / "model.safetensors"),
        "weights_bytes": (folder / "model.safetensors").stat().st_size,
        "design_notes": DESIGN_NOTES,
        "curve": log["curve"],
    }
    save_figure(plot_training_curve(log["curve"]), "training_curve", folder=folder)
    (folder / "model_card.json").write_text(json.dumps(card, indent=1))
    rows = "\n".join(f"| {c} | {_fmt(res[c])} | {_fmt(res[c + '/color'])} | {_fmt(res[c + '/shape'])} |"
                     for c in EVAL_CATEGORIES)
    held = "\n".join(f"| {c} | {_fmt(res[c + '/seen'])} | {_fmt(res[c + '/heldout'])} |"
                     for c in EVAL_CATEGORIES if c + "/heldout" in res)
    cfg = log["config"]
    md = f"""# Model card: tiny-llava (the embedded default model)

A tiny multimodal LLM of a real architecture (transformers `LlavaForConditionalGeneration`: CLIP vision
tower + Llama decoder), trained from scratch on CPU by this repository's own code on the synthetic
modality-conflict world of `mfutils.data.world`. It exists so that every notebook of the study runs on a
laptop; it is not a model of language or vision beyond that world.

| | |
|---|---|
| command | `{log['command']}` (or `make retrain`) |
| training seed | {cfg['seed']} |
| git commit of the code | `{card['git_commit']}` |
| parameters | {log['n_parameters']:,} |
| steps x batch | {cfg['steps']} x {cfg['batch_size']} ({cfg['steps'] * cfg['batch_size']:,} samples, each drawn fresh) |
| wall time | {log['wall_time_s'] / 60:.1f} min on {log['machine']['platform']} ({log['machine']['torch_threads']} torch threads, torch {log['machine']['torch']}) |
| weights | `model.safetensors`, {card['weights_bytes']:,} bytes, sha256 `{card['weights_sha256']}` |
| retrain tolerance | each held-out accuracy within ±{RETRAIN_TOLERANCE} of the table below |

## Data mix (training)

Categories: {', '.join(f'{k} {v}' for k, v in log['train_mix'].items())}.
Prompt variants: {', '.join(f'{k} {v}' for k, v in log['variant_mix'].items())}.

## Recipe and reasons

{DESIGN_NOTES}
## Held-out accuracy

{n} fresh samples per category from stream seed {seed} (training used seed {cfg['seed']}); half of the
instructed samples use held-out instruction paraphrases. Accuracy [Wilson 95% interval] (correct/n).

| category | all | colour questions | shape questions |
|---|---|---|---|
{rows}

Instruction paraphrases seen in training vs held out:

| category | seen templates | held-out templates |
|---|---|---|
{held}

Follow-image failures left to study: **{fails}** of {2 * n} conflict samples ({n} follow-image + {n} follow-text).

## Training curve

![training curve](training_curve.png)

Monitor set: 256 samples per category from seed {cfg['seed'] + 500}, training paraphrases only.
"""
    (folder / "MODEL_CARD.md").write_text(md)
    return card
