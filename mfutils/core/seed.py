"""Seeding: one call makes a run repeatable.

Public API
----------
seed_everything(seed)        seed python, numpy and torch; deterministic torch algorithms (warn only)

Example::

    seed_everything(0)
"""

from __future__ import annotations

import os
import random

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and switch torch to deterministic algorithms."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
