"""Processor inputs of a batch of samples, without token groups (training and behavioural evaluation).

``mfutils.model.groups.encode`` also finds the token groups; these two only render and process, as the
training loop and ``mfutils.study.evaluate.predict`` always have.

Public API
----------
render_text(mm, sample, with_answer) -> str                 the prompt in ``mm``'s template, optionally + answer
batch_inputs(mm, samples, with_answer=False) -> dict[str, Tensor]   processor output (left padded) on ``mm.device``:
                                                            ``input_ids`` / ``attention_mask`` [B, T], pixels

Example::

    enc = batch_inputs(mm, make_samples(8, seed=0, category=None))
    logits = mm.model(**enc).logits                         # [B, T, V]
"""

from __future__ import annotations

from typing import Sequence

import torch

from mfutils.data.sample import Sample
from mfutils.model.groups import render_prompt
from mfutils.model.loading import MLLM

__all__ = ["render_text", "batch_inputs"]


def render_text(mm: MLLM, sample: Sample, with_answer: bool) -> str:
    """The full prompt text of a sample in ``mm``'s template (one image placeholder), optionally + answer."""
    text = render_prompt(mm, sample.prompt)
    return f"{text} {sample.answer}" if with_answer else text


def batch_inputs(mm: MLLM, samples: Sequence[Sample], with_answer: bool = False) -> dict[str, torch.Tensor]:
    """Processor output (left padded) for ``samples``; with the answer appended when ``with_answer``."""
    texts = [render_text(mm, s, with_answer) for s in samples]
    enc = mm.processor(text=texts, images=[s.prompt.image for s in samples], return_tensors="pt", padding=True)
    return {k: v.to(mm.device) for k, v in enc.items()}
