"""The sample type shared by the synthetic world and MC2, and the checksum that identifies a list of samples.

Public API
----------
Sample                                  one sample: prompt (``mfutils.data.prompts.Prompt``), answers, metadata
CONFLICT_CATEGORIES                     the categories where the image and the text disagree on the answer
dataset_checksum(samples) -> str        sha256 over the prompts and answers (images included)

Example::

    s = make_sample(seed=1, index=0, category="follow_image")     # mfutils.data.world
    s.conflict, dataset_checksum([s])                             # True, '3f...'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from mfutils.data.prompts import Prompt

__all__ = ["Sample", "CONFLICT_CATEGORIES", "dataset_checksum"]

CONFLICT_CATEGORIES = ("follow_image", "follow_text", "no_instruction")


@dataclass(frozen=True)
class Sample:
    """One sample of the world or of MC2.

    ``answer``: the correct (instructed) answer. ``image_answer`` / ``text_answer``: what each modality
    says about the asked attribute (None where a modality is absent). ``other_answer``: the answer of the
    modality that was not instructed (conflict categories only). ``candidates``: the answer words of the
    asked attribute (8 colours or 6 shapes).
    """

    seed: int
    index: int
    category: str
    attribute: str
    variant: str
    prompt: Prompt
    answer: str
    image_answer: str | None
    text_answer: str | None
    other_answer: str | None
    instructed: str | None          # "image", "text" or None
    template: int | None            # instruction paraphrase index
    heldout_template: bool
    candidates: tuple[str, ...] = field(repr=False)
    image_attrs: dict[str, str] | None = field(default=None, repr=False)
    text_attrs: dict[str, str] | None = field(default=None, repr=False)
    # Open-ended answers of real data (MC2): the acceptable answers of each side, strings in any language.
    # When set, scoring sums the first-token probabilities of each list (``mfutils.measure.answers.targets_for``).
    answer_img_candidate_list: tuple[str, ...] | None = field(default=None, repr=False)
    answer_text_candidate_list: tuple[str, ...] | None = field(default=None, repr=False)
    source: str = "world"                                  # "world" or "mc2"
    meta: dict[str, object] | None = field(default=None, repr=False)   # e.g. MC2 record index, image_id, task

    @property
    def conflict(self) -> bool:
        return self.category in CONFLICT_CATEGORIES


def dataset_checksum(samples: Sequence[Sample]) -> str:
    """sha256 over every sample's segments, answers and image bytes (image path for file-backed images, e.g.
    MC2's COCO files, plus the candidate lists): identifies a dataset exactly.

    Example::

        dataset_checksum(make_split("test", 400))        # 64 hex digits
    """
    h = hashlib.sha256()
    for s in samples:
        h.update(repr((s.seed, s.index, s.category, s.attribute, s.variant, s.prompt.segments, s.answer,
                       s.other_answer)).encode())
        if s.answer_img_candidate_list is not None or s.answer_text_candidate_list is not None:
            h.update(repr((s.answer_img_candidate_list, s.answer_text_candidate_list)).encode())
        if isinstance(s.prompt.image, (str, os.PathLike)):
            h.update(os.fspath(s.prompt.image).encode())
        else:
            h.update(np.ascontiguousarray(s.prompt.image).tobytes())
    return h.hexdigest()
