"""The single-modality versions of a conflict sample, for the world and for MC2 alike.

A failure on a conflict sample counts as an "arbitration failure" when the model answers
both of its counterparts right: the same image alone, and the same context with an empty image.

Public API
----------
counterparts(sample) -> (image_only, text_only)   by the sample's ``source``: ``world.counterparts_world`` or
                                                  ``mc2.counterparts_mc2`` (text-only: a plain grey image)

Example::

    s = make_sample(1, 0, "follow_image")                    # mfutils.data.world
    img_only, txt_only = counterparts(s)                     # answers: s.image_answer, s.text_answer
"""

from __future__ import annotations

from mfutils.data.mc2 import counterparts_mc2
from mfutils.data.sample import Sample
from mfutils.data.world import counterparts_world

__all__ = ["counterparts"]


def counterparts(sample: Sample) -> tuple[Sample, Sample]:
    """The image-only and text-only versions of a conflict sample (world or MC2), same candidates; answers:
    the image's and the text's.

    Example::

        pairs = [counterparts(s) for s in failed]     # [(image_only, text_only), ...]
    """
    if sample.source == "mc2":
        return counterparts_mc2(sample)
    return counterparts_world(sample)
