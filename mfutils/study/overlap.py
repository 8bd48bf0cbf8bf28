"""Which prompts occur verbatim in the training stream of a model trained by ``study.train`` (amendment A6, C7).

The training stream. ``study.train.train`` draws, at step t, ``make_samples(batch_size, seed, None,
start=t * batch_size, variant=None)``: the indices 0 .. steps * batch_size - 1 of the world's stream ``seed``,
each sample a pure function of (seed, index). The recipe (seed, steps, batch size) is read from the model card
that training wrote (``mm.info["card"]["config"]``), so the stream is the one the shipped weights saw.

The criterion (ours). A prompt *occurs in training* when some training sample has the same text segments, with
the same texts in the same order (``prompt_text``): what the model reads as words. Images are not compared: every
image is rendered with fresh noise and jitter, so none repeats; for an image-only prompt the text (question and
format constraint) carries no answer. The check is exact: the stream is regenerated sample by sample. To save
time it skips a training sample, before rendering it, when its segment layout (a function of its category and
prompt variant, the stream's first two draws) cannot equal the layout of any prompt not yet found (tested equal
to checking every sample).

Public API
----------
prompt_text(sample) -> tuple[(name, text), ...]             the text segments of a prompt, in order
training_stream(info) -> {"seed", "steps", "batch_size", "n", "source"} | None   from the model card; None when
                                                            the model was not trained by ``study.train``
in_training(samples, seed, n, fast=True, progress=True) -> list[bool]   per sample: its text occurs in the stream
overlap_summary(samples, flags, stream=None) -> dict        counts overall and per category, criterion, stream

Example::

    stream = training_stream(mm.info)                          # {"seed": 0, "steps": 1800, "batch_size": 64, ...}
    seen = in_training(samples, stream["seed"], stream["n"])   # [True, False, ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mfutils.data.sample import Sample
from mfutils.data.world import TRAIN_MIX, VARIANT_MIX, make_sample

__all__ = ["CRITERION", "prompt_text", "training_stream", "in_training", "overlap_summary"]

CRITERION = ("the prompt's text segments (names and texts, in order) equal those of a training sample; images are "
             "not compared (each is rendered with fresh noise)")
_Text = tuple[tuple[str, str], ...]


def prompt_text(sample: Sample) -> _Text:
    """The text segments of ``sample``'s prompt as ``((name, text), ...)`` in prompt order (the image marker
    included, its text empty): equal for two samples exactly when the model reads the same words.

    Example: ``prompt_text(s)`` -> ``(("image", ""), ("question", "what color is the object ?"), ...)``.
    """
    return tuple((str(n), str(t)) for n, t in sample.prompt.segments)


def training_stream(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training stream of a model trained by ``study.train``, from its card (``info["card"]["config"]``:
    seed, steps, batch_size): ``{"seed", "steps", "batch_size", "n" = steps * batch_size, "source"}``; None
    when the card is missing or holds no such recipe (a downloaded or random model).

    Example: ``training_stream(mm.info)["n"]`` -> 115200 for the shipped tiny model.
    """
    cfg = (info.get("card") or {}).get("config") if isinstance(info, Mapping) else None
    if isinstance(cfg, Mapping) and all(k in cfg for k in ("seed", "b_steps", "b_batch")):
        # the pretrained-LM model (study.train_smol): stage b's stream; stages a1/a2 saw image-only prompts only
        seed, steps, batch = int(cfg["seed"]), int(cfg["b_steps"]), int(cfg["b_batch"])
        return {"seed": seed, "steps": steps, "batch_size": batch, "n": steps * batch,
                "source": f"mfutils.data.world.make_samples({batch}, {seed}, None, start=step * {batch}, "
                          f"variant=None) for step in range({steps}) (stage b of mfutils.study.train_smol; stages "
                          "a1 and a2 drew image-only prompts, not counted here)"}
    if not isinstance(cfg, Mapping) or not all(k in cfg for k in ("seed", "steps", "batch_size")):
        return None
    seed, steps, batch = int(cfg["seed"]), int(cfg["steps"]), int(cfg["batch_size"])
    return {"seed": seed, "steps": steps, "batch_size": batch, "n": steps * batch,
            "source": f"mfutils.data.world.make_samples({batch}, {seed}, None, start=step * {batch}, variant=None) "
                      f"for step in range({steps}) (mfutils.study.train.train)"}


def _pick(rng: np.random.Generator, shares: Mapping[str, float]) -> str:
    """The world's draw of a category / variant (``world._pick``): the first two draws of ``make_sample``."""
    names = list(shares)
    p = np.array([shares[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _kind(seed: int, index: int) -> tuple[str, str]:
    """(category, variant) of training sample ``index`` of stream ``seed`` without rendering it."""
    rng = np.random.default_rng([seed, index])
    category = _pick(rng, TRAIN_MIX)
    return category, _pick(rng, VARIANT_MIX)


def in_training(samples: Sequence[Sample], seed: int, n: int, fast: bool = True, progress: bool = True) -> list[bool]:
    """Per sample of ``samples``: does its ``prompt_text`` occur among the training samples 0..n-1 of stream
    ``seed`` (``make_sample(seed, i)`` with the training mix)? Exact; ``fast`` skips training samples whose
    segment layout no prompt still unfound has (the layout of each (category, variant) is learnt from the
    first such sample generated) and stops once every prompt is found.

    Example: ``in_training(load_split("tiny", "capability"), 0, 115200)``.
    """
    texts = [prompt_text(s) for s in samples]
    todo: dict[tuple[str, ...], set[_Text]] = {}
    for t in texts:
        todo.setdefault(tuple(nm for nm, _ in t), set()).add(t)
    found: set[_Text] = set()
    layouts: dict[tuple[str, str], tuple[str, ...]] = {}
    for i in tqdm(range(int(n)), desc="training prompts", disable=not progress, mininterval=2.0):
        if not any(todo.values()):
            break
        kind = _kind(seed, i) if fast else None
        if kind is not None and kind in layouts and not todo.get(layouts[kind]):
            continue
        s = make_sample(seed, i, None, variant=None)
        t = prompt_text(s)
        lay = tuple(nm for nm, _ in t)
        if kind is not None:
            layouts.setdefault(kind, lay)
        if t in todo.get(lay, ()):
            todo[lay].discard(t)
            found.add(t)
    return [t in found for t in texts]


def overlap_summary(samples: Sequence[Sample], flags: Sequence[bool], stream: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """``{"in_training", "n", "share", "per_category": {c: {"in_training", "n"}}, "criterion", "stream"}`` of
    the per-sample ``flags`` of ``in_training``.

    Example: ``overlap_summary(samples, seen, stream)["per_category"]["text_only"]`` -> ``{"in_training": 18, "n": 100}``.
    """
    f = [bool(x) for x in flags]
    if len(f) != len(samples):
        raise ValueError(f"{len(f)} flags for {len(samples)} samples")
    per: dict[str, dict[str, int]] = {}
    for s, x in zip(samples, f):
        c = per.setdefault(s.category, {"in_training": 0, "n": 0})
        c["in_training"] += int(x)
        c["n"] += 1
    return {"in_training": sum(f), "n": len(f), "share": sum(f) / len(f) if f else float("nan"),
            "per_category": per, "criterion": CRITERION, "stream": dict(stream) if stream is not None else None}
