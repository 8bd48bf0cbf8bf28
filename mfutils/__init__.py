"""mfutils: hooks, measures and a tiny MLLM for the Instruction Anchor companion (arXiv 2602.03677).

Package map, by layer (bottom to top; a module imports only from its own layer and the layers below)
-----------------------------------------------------------------------------------------------------
core      paths (repository and output folders, atomic writes, display_path), provenance (git commit,
          package versions, sha256), seed (seed_everything)
data      prompts (Prompt, GROUP_NAMES), sample (the sample type), world (the synthetic modality-conflict world),
          counterparts (single-modality versions), mc2 (the MC2 benchmark), datasets (split manifests)
model     archs (one module-path table per architecture), loading (load_model -> MLLM), tiny (offline tiny
          models), inputs, groups (token groups), hooks (interventions as context managers), prefix (prefix
          reuse), batching (out-of-memory halving), edges (the one knockout-edge registry)
measure   answers (targets, answer logits), margins (margin, INSSD, flips), prepared (samples encoded once, the
          batch loop), prefix (checked prefix reuse), follow (follows: the one "does it follow?"), stats
study     evaluate, train, results (the one reader and writer of results files), splits, mc2_eval;
          notebook 02: information_flow, knockout, saliency, lens, dla, stability, flow_batches;
          notebooks 03-06: scoring, selection, identification, blocking, amplification, retention
present   plots, plots_flow, plots_heads (the figures), display (token-group HTML), widgets/ (the explorers of
          notebook 07, one module each), card (the model card), report (the claims report, verdict())
run       chain (the papermill notebook chain), state (its fingerprints, resume records, provenance), cli (``mf``)

Each layer's ``__init__`` names its modules; each module's docstring lists its public API.

Top-level helpers: ``seed_everything(seed)`` (from ``mfutils.core.seed``), ``__version__``.

Example::

    import mfutils
    mfutils.seed_everything(0)
"""

from __future__ import annotations

from mfutils.core.seed import seed_everything

__version__ = "0.1.0"
__all__ = ["seed_everything", "__version__"]
