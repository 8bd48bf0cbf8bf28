"""mfutils: hooks, measures and a tiny MLLM for the Instruction Anchor companion (arXiv 2602.03677).

Modules, one job each
---------------------
archs      architecture adapters (module paths, templates) for Llava, Qwen2-VL, Qwen2.5-VL
models     load_model("tiny" | "random:<arch>" | path | cached HF id) -> MLLM
prompts    Prompt: an image plus named text segments
groups     token groups from character spans (encode, TokenGroups, edge_block)
hooks      interventions as context managers: knockout, scale_heads, capture, logit_lens
world      the synthetic modality-conflict world (samples, images, instructions)
train      the training recipe of the default tiny model
evaluate   accuracy per category with intervals
card       the model card of a trained checkpoint
stats      Wilson and bootstrap intervals
chain      the papermill notebook chain and the claims report
cli        ``python -m mfutils`` / ``mf``

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
