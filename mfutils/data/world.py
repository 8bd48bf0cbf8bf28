"""The synthetic modality-conflict world (paper/METHOD.md): rendered objects, text contexts, instructions.

Every sample is a ``mfutils.data.sample.Sample``: a ``Prompt`` (image + named text segments) with its answers.
The image shows one object (a colour and a shape on a noisy dark background); the text context describes an
object that may agree or disagree with the image; the instruction says which modality to trust; the question
asks for one attribute; a format constraint closes the prompt. Every sample is a pure function of ``(seed, index)``.

Categories
----------
follow_image / follow_text   conflict on the asked attribute; the instruction names the modality to follow
no_instruction               conflict with no instruction: the answer is the text's (the world's default)
agree                        context agrees with the image; an instruction is present
image_only                   image + question, no context and no instruction
text_only                    context + question with an empty image (background only)

Public API
----------
COLORS, SHAPES, ATTRIBUTES, CATEGORIES, VARIANTS
make_sample(seed, index, category=None, ...) -> Sample
make_samples(n, seed, categories=None, ...) -> list[Sample]   (categories=None: the training mix)
TRAIN_MIX                               the training category shares (the text prior lives here)
INSTRUCTION_TEMPLATES, HELDOUT_TEMPLATES   the instruction paraphrases and which are evaluation-only
vocabulary() -> list[str]               every word the world can emit
render_image(color, shape, rng) -> np.ndarray   64x64x3 uint8
SPLITS, make_split(name, n)             the named held-out splits (identify, test, controls, capability, and
                                        pilot/identify/test/pool per instruction position)
POSITIONS, SEGMENT_ORDERS               instruction position -> prompt variant; variant -> segment order
position_split(kind, position) -> str   e.g. "pool_first"
twin(sample) -> Sample                  the counterfactual twin: the same image, context, question, constraint,
                                        template, words and position, with the instruction flipped
counterparts_world(sample) -> (image_only, text_only)   the two single-modality versions of a conflict sample

Example::

    s = make_sample(seed=1, index=0, category="follow_image")
    s.prompt.segments, s.answer, s.other_answer
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mfutils.data.prompts import Prompt
from mfutils.data.sample import CONFLICT_CATEGORIES, Sample

__all__ = [
    "COLORS", "SHAPES", "ATTRIBUTES", "CATEGORIES", "VARIANTS", "TRAIN_MIX", "INSTRUCTION_TEMPLATES",
    "HELDOUT_TEMPLATES", "make_sample", "make_samples", "vocabulary", "render_image", "IMAGE_SIZE", "TRAIN_SEED",
    "HELDOUT_SEEDS", "SPLITS", "make_split", "DATASET_VERSION", "VARIANT_MIX", "counterparts_world", "POSITIONS",
    "SEGMENT_ORDERS", "POSITION_KINDS", "position_split", "twin",
]

IMAGE_SIZE = 64
TRAIN_SEED = 0
# Fixed held-out sets (never used for training): evaluation of the shipped model and the analyses.
HELDOUT_SEEDS = {"eval": 1001, "identify": 2002, "test": 3003}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (235, 235, 235), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
ATTRIBUTES = ("color", "shape")
CATEGORIES = ("follow_image", "follow_text", "no_instruction", "agree", "image_only", "text_only")
VARIANTS = ("standard", "system", "instruction_last", "instruction_first", "instruction_after_image")
# Where the instruction stands. Training renders only "standard" and "instruction_last" (and "system"); "first" and
# "after_image" are held-out positions, never seen in training. position -> prompt variant.
POSITIONS: dict[str, str] = {"first": "instruction_first", "after_image": "instruction_after_image",
                             "standard": "standard", "last": "instruction_last"}
# Segment order of each variant (a segment a category lacks is left out).
SEGMENT_ORDERS: dict[str, tuple[str, ...]] = {
    "standard": ("system", "image", "context", "instruction", "question", "constraint"),
    "system": ("system", "image", "context", "instruction", "question", "constraint"),
    "instruction_last": ("system", "image", "context", "question", "constraint", "instruction"),
    "instruction_first": ("system", "instruction", "image", "context", "question", "constraint"),
    "instruction_after_image": ("system", "image", "instruction", "context", "question", "constraint"),
}

# Training mix, fixed before any training or analysis. Text-side data dominates (follow_text +
# no_instruction + text_only = 0.50 against follow_image + image_only = 0.33), as text dominates the data
# of real MLLMs; with no instruction the world's default answer is the text's. This is the "prior
# toward the text" (paper/METHOD.md).
TRAIN_MIX: dict[str, float] = {
    "follow_image": 0.18, "follow_text": 0.25, "no_instruction": 0.10,
    "agree": 0.17, "image_only": 0.15, "text_only": 0.15,
}
VARIANT_MIX: dict[str, float] = {"standard": 0.8, "system": 0.1, "instruction_last": 0.1}

IMAGE_WORDS = ("image", "picture", "photo")
TEXT_WORDS = ("text", "context", "description")

# Instruction paraphrases. {M}: the instructed modality's word, {O}: the other one's. Same words, other
# order, between the two instructions; several are negated ("do not rely on the {O}").
INSTRUCTION_TEMPLATES: tuple[str, ...] = (
    "answer based on the {M} .",
    "use the {M} to answer .",
    "rely on the {M} .",
    "trust the {M} , not the {O} .",
    "do not rely on the {O} .",
    "ignore the {O} and look at the {M} .",
    "the {M} is correct .",
    "only the {M} matters here .",
    "base your answer on the {M} only .",
    "the {O} may be wrong , so follow the {M} .",
    "follow the {M} .",
    "do not trust the {O} , use the {M} .",
    # held out: evaluation only. New combinations and orders of words that training does use: a word that
    # never occurs in training has an untrained embedding, so it could not test reading the instruction
    # (a first model, v0, met "disregard" and "according" only here and scored 0.71-0.78 on them).
    "rely only on the {M} .",
    "do not look at the {O} .",
    "the {M} matters , not the {O} .",
    "look only at the {M} and not at the {O} .",
)
HELDOUT_TEMPLATES: tuple[int, ...] = (12, 13, 14, 15)

CONTEXT_TEMPLATES = (
    "the object is a {c} {s} .",
    "someone describes a {c} {s} .",
    "the {s} is {c} .",
    "it shows a {c} {s} .",
    "a {c} {s} was placed on the table .",
    "we are told about a {c} {s} .",
)
DISTRACTORS = (
    "the weather is cold today .", "the room is quiet .", "a man walks by the door .",
    "this was recorded last week .", "the table is made of wood .", "nobody moved it .",
    "the light is dim .", "it was a long day .", "there is a window behind it .",
    "the floor is clean .",
)
QUESTIONS = {
    "color": ("what color is the object ?", "which color does the object have ?", "what is the color of the object ?"),
    "shape": ("what shape is the object ?", "which shape does the object have ?", "what is the shape of the object ?"),
}
CONSTRAINTS = ("answer with one word .", "reply with a single word .", "use one word .")
SYSTEMS = ("you are a helpful assistant .", "you are a careful visual assistant .", "please be precise .")


def vocabulary() -> list[str]:
    """Every word the world can emit (the tiny tokenizer's vocabulary, before special tokens)."""
    texts: list[str] = [*COLORS, *SHAPES, *IMAGE_WORDS, *TEXT_WORDS, *DISTRACTORS, *CONSTRAINTS, *SYSTEMS]
    texts += [t.replace("{M}", " ").replace("{O}", " ") for t in INSTRUCTION_TEMPLATES]
    texts += [t.replace("{c}", " ").replace("{s}", " ") for t in CONTEXT_TEMPLATES]
    texts += [q for qs in QUESTIONS.values() for q in qs]
    seen: dict[str, None] = {}
    for t in texts:
        for w in t.split():
            seen.setdefault(w, None)
    return list(seen)


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def pts(angles: np.ndarray, radii: np.ndarray) -> list[tuple[float, float]]:
        return [(cx + rr * np.cos(a + rot), cy + rr * np.sin(a + rot)) for a, rr in zip(angles, radii)]

    if shape == "square":
        return pts(np.arange(4) * np.pi / 2 + np.pi / 4, np.full(4, r))
    if shape == "diamond":
        return pts(np.arange(4) * np.pi / 2, np.array([r, 0.65 * r, r, 0.65 * r]))
    if shape == "triangle":
        return pts(np.arange(3) * 2 * np.pi / 3 - np.pi / 2, np.full(3, r))
    if shape == "star":
        return pts(np.arange(10) * np.pi / 5 - np.pi / 2, np.where(np.arange(10) % 2 == 0, r, 0.42 * r))
    if shape == "cross":
        w = 0.36 * r
        base = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {shape!r}")


def render_image(color: str | None, shape: str | None, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A ``size`` x ``size`` x 3 uint8 image: noisy dark background, one centred object (or none if None)."""
    bg = rng.uniform(15, 70)
    arr = np.clip(bg + rng.normal(0, 8, (size, size, 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    if color is not None and shape is not None:
        draw = ImageDraw.Draw(img)
        rgb = np.clip(np.array(COLORS[color]) + rng.normal(0, 12, 3), 0, 255).astype(int)
        cx = size / 2 + rng.uniform(-0.08, 0.08) * size
        cy = size / 2 + rng.uniform(-0.08, 0.08) * size
        r = rng.uniform(0.26, 0.36) * size
        fill = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            rot = rng.uniform(-0.15, 0.15)
            draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill)
    return np.asarray(img, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick(rng: np.random.Generator, shares: dict[str, float]) -> str:
    names = list(shares)
    p = np.array([shares[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def make_sample(seed: int, index: int, category: str | None = None, *, variant: str | None = None,
                heldout: bool | None = None, attribute: str | None = None) -> Sample:
    """Sample ``index`` of the stream ``seed``; deterministic in its arguments.

    ``category``/``variant``/``attribute``: force them (None: drawn from ``TRAIN_MIX`` / ``VARIANT_MIX`` /
    uniform). ``heldout``: None draws the instruction template among the training ones only (training
    stream); True forces a held-out template; False a training one; evaluation sets pass "mixed" via
    ``make_samples(heldout_share=...)``.
    """
    rng = np.random.default_rng([seed, index])
    category = category or _pick(rng, TRAIN_MIX)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; use one of {CATEGORIES}")
    variant = variant or _pick(rng, VARIANT_MIX)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    attribute = attribute or _choice(rng, ATTRIBUTES)
    colors, shapes = list(COLORS), list(SHAPES)
    img = {"color": _choice(rng, colors), "shape": _choice(rng, shapes)}
    txt = dict(img)
    conflict = category in CONFLICT_CATEGORIES
    if conflict:
        pool = colors if attribute == "color" else shapes
        txt[attribute] = _choice(rng, [v for v in pool if v != img[attribute]])
        other = "shape" if attribute == "color" else "color"
        txt[other] = _choice(rng, colors if other == "color" else shapes)  # free: may or may not agree

    has_image_object = category != "text_only"
    has_context = category != "image_only"
    has_instruction = category in ("follow_image", "follow_text", "agree")
    image = render_image(img["color"] if has_image_object else None, img["shape"] if has_image_object else None, rng)

    segs: dict[str, str] = {}
    if has_context:
        main = _choice(rng, CONTEXT_TEMPLATES).format(c=txt["color"], s=txt["shape"])
        sents = [main] + [DISTRACTORS[i] for i in rng.choice(len(DISTRACTORS), size=int(rng.integers(0, 4)), replace=False)]
        order = rng.permutation(len(sents))
        segs["context"] = " ".join(sents[i] for i in order)
    instructed: str | None = None
    template: int | None = None
    is_heldout = False
    if has_instruction:
        if category == "agree":
            instructed = _choice(rng, ("image", "text"))
        else:
            instructed = "image" if category == "follow_image" else "text"
        train_ids = [i for i in range(len(INSTRUCTION_TEMPLATES)) if i not in HELDOUT_TEMPLATES]
        template = int(_choice(rng, list(HELDOUT_TEMPLATES) if heldout else train_ids))  # type: ignore[arg-type]
        is_heldout = template in HELDOUT_TEMPLATES
        m_words, o_words = (IMAGE_WORDS, TEXT_WORDS) if instructed == "image" else (TEXT_WORDS, IMAGE_WORDS)
        segs["instruction"] = INSTRUCTION_TEMPLATES[template].format(M=_choice(rng, m_words), O=_choice(rng, o_words))
    segs["question"] = _choice(rng, QUESTIONS[attribute])
    segs["constraint"] = _choice(rng, CONSTRAINTS)
    if variant == "system":
        segs["system"] = _choice(rng, SYSTEMS)

    segments = tuple((n, "" if n == "image" else segs[n]) for n in SEGMENT_ORDERS[variant] if n == "image" or n in segs)

    image_answer = img[attribute] if has_image_object else None
    text_answer = txt[attribute] if has_context else None
    if category in ("follow_image", "image_only"):
        answer = image_answer
    elif category in ("follow_text", "no_instruction", "text_only"):
        answer = text_answer
    else:  # agree
        answer = image_answer
    other_answer = None
    if conflict:
        other_answer = text_answer if answer == image_answer else image_answer
    assert answer is not None
    return Sample(
        seed=seed, index=index, category=category, attribute=attribute, variant=variant,
        prompt=Prompt(segments=segments, image=image), answer=answer, image_answer=image_answer,
        text_answer=text_answer, other_answer=other_answer, instructed=instructed, template=template,
        heldout_template=is_heldout, candidates=tuple(colors if attribute == "color" else shapes),
        image_attrs=img if has_image_object else None, text_attrs=txt if has_context else None,
    )


def make_samples(n: int, seed: int, categories: Sequence[str] | str | None = None, *, start: int = 0,
                 variant: str | None = "standard", heldout_share: float = 0.0) -> list[Sample]:
    """``n`` samples of stream ``seed`` (indices ``start .. start+n-1``).

    ``categories``: None = the training mix; a name or a list = those categories in turn (balanced).
    ``variant``: "standard" by default for evaluation sets; None draws from the training variant mix.
    ``heldout_share``: share of instructed samples that use a held-out instruction template (0 for
    training; evaluation sets of the shipped model use 0.5).
    """
    if isinstance(categories, str):
        categories = [categories]
    out: list[Sample] = []
    for i in range(start, start + n):
        cat = None if categories is None else categories[(i - start) % len(categories)]
        held: bool | None = None
        if heldout_share > 0:
            held = bool(np.random.default_rng([seed, i, 7]).random() < heldout_share)
        out.append(make_sample(seed, i, cat, variant=variant, heldout=held))
    return out


# ------------------------------------------------------------------------------------------------
# Named splits: fixed by seed, disjoint from training (seed 0) and from each other
# ------------------------------------------------------------------------------------------------
DATASET_VERSION = 2  # bump when the world's generator changes; manifests record it

SPLITS: dict[str, dict[str, object]] = {
    # identification of heads (C5): conflict samples of both instructions
    "identify": {"seed": HELDOUT_SEEDS["identify"], "categories": ("follow_image", "follow_text"), "variant": "standard"},
    # held-out evaluation of every analysis: conflict samples of both instructions
    "test": {"seed": HELDOUT_SEEDS["test"], "categories": ("follow_image", "follow_text"), "variant": "standard"},
    # C11 controls: a system sentence first / the instruction after the constraint
    "test_system": {"seed": HELDOUT_SEEDS["test"] + 1, "categories": ("follow_image", "follow_text"), "variant": "system"},
    "test_instruction_last": {"seed": HELDOUT_SEEDS["test"] + 2, "categories": ("follow_image", "follow_text"), "variant": "instruction_last"},
    # capability retention (C7): general questions and agreeing samples
    "capability": {"seed": HELDOUT_SEEDS["test"] + 3, "categories": ("image_only", "text_only", "agree"), "variant": "standard"},
    # a large pool of conflict samples from which the analyses keep the model's failures (C8, C10)
    "fail_pool": {"seed": 4004, "categories": ("follow_image", "follow_text"), "variant": "standard"},
}
# Where the instruction stands: for each position of ``POSITIONS`` a pilot split (the behaviour that sized the failure
# pool before anything else was measured), an identification split (head scores), a test split (knockout curves,
# blocking) and a pool (MFR per position x instruction; the failures of C8 and C10). Seeds 5100 + 100 * kind +
# position index: disjoint from every other split and from training (seed 0).
POSITION_KINDS = ("pilot", "identify", "test", "pool")
for _k, _kind in enumerate(POSITION_KINDS):
    for _p, (_pos, _variant) in enumerate(POSITIONS.items()):
        SPLITS[f"{_kind}_{_pos}"] = {"seed": 5100 + 100 * _k + _p, "categories": ("follow_image", "follow_text"),
                                     "variant": _variant}


def position_split(kind: str, position: str) -> str:
    """The name of the ``kind`` split (``POSITION_KINDS``) at ``position`` (``POSITIONS``): ``"pool_first"``."""
    if kind not in POSITION_KINDS:
        raise ValueError(f"unknown position split kind {kind!r}; use one of {POSITION_KINDS}")
    if position not in POSITIONS:
        raise ValueError(f"unknown instruction position {position!r}; use one of {tuple(POSITIONS)}")
    return f"{kind}_{position}"


def make_split(name: str, n: int) -> list[Sample]:
    """The first ``n`` samples of the named split (``SPLITS``); categories alternate (balanced)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; use one of {sorted(SPLITS)}")
    spec = SPLITS[name]
    return make_samples(n, int(spec["seed"]), list(spec["categories"]), variant=str(spec["variant"]),  # type: ignore[arg-type, call-overload]
                        heldout_share=0.5)


def counterparts_world(sample: Sample) -> tuple[Sample, Sample]:
    """The image-only and text-only versions of a conflict sample of the world: the same image (no context, no
    instruction) and the same context with an empty image (no instruction). ``mfutils.data.counterparts``
    dispatches between this and MC2's ``counterparts_mc2``.

    Example::

        img_only, txt_only = counterparts_world(make_sample(1, 0, "follow_image"))
    """
    if sample.image_attrs is None or sample.text_attrs is None:
        raise ValueError(f"sample {sample.index} of seed {sample.seed} ({sample.category}) lacks an image or a context")
    q = sample.prompt.text("question") or ""
    c = sample.prompt.text("constraint") or ""
    ctx = sample.prompt.text("context") or ""
    rng = np.random.default_rng([sample.seed, sample.index, 99])
    blank = render_image(None, None, rng)
    img_only = dataclasses.replace(
        sample, category="image_only", prompt=Prompt((("image", ""), ("question", q), ("constraint", c)), sample.prompt.image),
        answer=sample.image_attrs[sample.attribute], text_answer=None, other_answer=None, instructed=None, template=None,
        heldout_template=False, text_attrs=None)
    txt_only = dataclasses.replace(
        sample, category="text_only", prompt=Prompt((("image", ""), ("context", ctx), ("question", q), ("constraint", c)), blank),
        answer=sample.text_attrs[sample.attribute], image_answer=None, other_answer=None, instructed=None, template=None,
        heldout_template=False, image_attrs=None)
    return img_only, txt_only


def twin(sample: Sample) -> Sample:
    """The counterfactual twin of a follow-image or follow-text sample of the world: the other instruction with
    everything else equal (image, context, question, constraint, instruction template, the template's word choice
    and the position). ``make_sample`` draws the instruction last and from word lists of equal length, so the
    twin is the same stream position rendered with the other category.

    Example::

        s = make_sample(1, 0, "follow_image"); t = twin(s)      # t.category == "follow_text"
    """
    if sample.category not in ("follow_image", "follow_text") or sample.template is None:
        raise ValueError(f"sample {sample.index} of seed {sample.seed} is {sample.category!r}: only follow_image and "
                         "follow_text samples of the world have a flipped-instruction twin")
    other = "follow_text" if sample.category == "follow_image" else "follow_image"
    out = make_sample(sample.seed, sample.index, other, variant=sample.variant, heldout=sample.heldout_template)
    if out.template != sample.template or out.attribute != sample.attribute or not np.array_equal(np.asarray(out.prompt.image), np.asarray(sample.prompt.image)):
        raise ValueError(f"sample {sample.index} of seed {sample.seed} was not drawn by make_sample with its own "
                         "arguments: its twin differs beyond the instruction")
    return out
