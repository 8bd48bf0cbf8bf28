"""The prompt representation shared by the world, the token groups and the analyses.

Public API
----------
Prompt          an image plus an ordered list of named text segments (``("context", "...")``)
GROUP_NAMES     the token-group names of paper/METHOD.md (Token groups)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Prompt", "GROUP_NAMES", "SEGMENT_NAMES"]

# Named text segments a prompt may have; "image" marks where the image goes (its text is ignored).
SEGMENT_NAMES = ("system", "image", "context", "instruction", "question", "constraint")
# Token groups: the segments plus the answer-predicting position and everything else (template, BOS).
GROUP_NAMES = (*SEGMENT_NAMES, "last", "other")


@dataclass(frozen=True)
class Prompt:
    """One multimodal prompt: ``segments`` in prompt order, ``image`` (PIL image or HxWx3 uint8 array).

    Example::

        Prompt(segments=(("image", ""), ("context", "the object is a red star ."),
                         ("question", "what color is the object ?")), image=img)
    """

    segments: tuple[tuple[str, str], ...]
    image: Any

    def __post_init__(self) -> None:
        names = [n for n, _ in self.segments]
        for n in names:
            if n not in SEGMENT_NAMES:
                raise ValueError(f"unknown segment name {n!r}; use one of {SEGMENT_NAMES}")
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique within a prompt, got {names}")
        if "image" not in names:
            raise ValueError("a prompt needs an 'image' segment marking where the image goes")

    def text(self, name: str) -> str | None:
        for n, t in self.segments:
            if n == name:
                return t
        return None
