"""mfutils: hooks, measures and a tiny MLLM for the Instruction Anchor companion (arXiv 2602.03677).

Modules, one job each
---------------------
archs       architecture adapters (module paths, templates) for Llava, Qwen2-VL, Qwen2.5-VL, InternVL
models      load_model("tiny" | "random:<arch>" | path | cached HF id) -> MLLM
prompts     Prompt: an image plus named text segments
groups      token groups from character spans (encode, TokenGroups, edge_block)
hooks       interventions as context managers: knockout, scale_heads, capture, logit_lens, prefix reuse
batching    batched loops that retry at half the batch size when memory runs out
world       the synthetic modality-conflict world (samples, images, instructions)
mc2         the MC2 benchmark: loader, validation, COCO images, instruction templates, per-model filter
datasets    the splits notebook 01 records (seeds, sizes, checksums) and later notebooks read
train       the training recipe of the default tiny model
evaluate    accuracy per category with intervals
metrics     margins, INSSD, flips, MFR targets (one token or candidate lists)
flow        information-flow analyses of notebook 02 (knockout sweep, saliency, LDAR, DLA)
heads       head scores, blocking, amplification, capability (notebooks 03-06)
plots*      the figures; display: token-group HTML; widgets: the explorers of notebook 07
card        the model card of a trained checkpoint
stats       Wilson and bootstrap intervals
provenance  git commit, package versions, file hashes
paths       repository and output folders; atomic writes
chain       the papermill notebook chain (resumable, with provenance); report: the claims report
cli         ``python -m mfutils`` / ``mf``

Top-level helpers: ``seed_everything(seed)``, ``__version__``.
"""

from __future__ import annotations

import os
import random

__version__ = "0.1.0"
__all__ = ["seed_everything", "__version__"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and switch torch to deterministic algorithms."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
