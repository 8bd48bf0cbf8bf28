"""A small file in the Instruction Anchor authors' per-model format, written by the tests themselves (the
authors' files are not in ../shared): Chinese alternates, an empty list, a duplicate, words on both sides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SENTENCES = {
    "text": "Should the text context and the image content disagree, you must rely on the text context rather "
            "than the image content.",
    "image": "Should the text context and the image content disagree, you must rely on the image content rather "
             "than the text context.",
}
SUFFIXES = {"question1": "The answer is ",
            "question2": "Answer the question using a single word or phrase. The answer is ",
            "question3": "Answer the question using a single word or phrase."}

# (task, question, answer_img, img list, answer_text, text list, context); the lists are ours
BASE: list[tuple[str, str, str, list[str], str, list[str], str]] = [
    ("color", "What color is the bus?", "red", ["Red", "红色", "红"], "blue", ["蓝色", "蓝", "蓝色"],      # duplicate
     "A blue bus waits at the stop."),
    ("color", "What color is the kite?", "yellow", [], "green", ["绿色"],                                  # empty list
     "A green kite flies over the park."),
    ("activity_recognition", "What are the people doing?", "standing", ["stand", "站立", "move"], "walking",
     ["walk", "行走", "move"], "The people walk along the river."),                                          # shared "move"
    ("attribute", "What is the table made of?", "wood", ["Wood", "木材"], "metal", ["金属", "铁", "钢"],
     "The table is made of metal."),
    ("object_recognition", "What animal is on the sofa?", "cat", [], "dog", ["Cat", "狗"],                 # image side
     "A dog sleeps on the sofa."),                                                                         # left empty
    ("counting", "How many birds are there?", "two", ["2"], "three", ["3", "三"], "Three birds sit on a wire."),
]


def authors_records(instructed: str = "text", n: int = 6, extra: bool = True) -> list[dict[str, Any]]:
    """``n`` records (cycling ``BASE``), image ids 1.., every question form; ``extra`` adds an unknown field."""
    out = []
    for i in range(n):
        task, q, ai, il, at, tl, ctx = BASE[i % len(BASE)]
        rec: dict[str, Any] = {"image_id": f"{i + 1:012d}" if i % 2 == 0 else i + 1, "task": task}
        for k, suf in SUFFIXES.items():
            rec[k] = f"{SENTENCES[instructed]}\n{q}\n{suf}"
        rec.update(answer_img_candidate_list=il, answer_text_candidate_list=tl, answer_img=ai, answer_text=at,
                   context=ctx)
        if extra:
            rec["source_split"] = "val"
        out.append(rec)
    return out


def write_authors_file(folder: Path, instructed: str = "text", n: int = 6, extra: bool = True,
                       images: bool = True) -> Path:
    """Write ``v3_following_<vision|text>_open_ended_test_remaining.json`` (and stand-in COCO images) to
    ``folder``; returns the file's path."""
    recs = authors_records(instructed, n, extra)
    path = folder / f"v3_following_{'vision' if instructed == 'image' else 'text'}_open_ended_test_remaining.json"
    path.write_text(json.dumps(recs, ensure_ascii=False, indent=1), encoding="utf-8")
    if images:
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i + 1:012d}.jpg")
    return path


def vocabulary(n: int = 6) -> list[str]:
    """Every whitespace word of the file's text, for a random model's word-level tokenizer."""
    words = set()
    for r in authors_records("text", n) + authors_records("image", n):
        for k in ("question3", "context", "answer_img", "answer_text"):
            words |= set(str(r[k]).split())
        for k in ("answer_img_candidate_list", "answer_text_candidate_list"):
            words |= set(r[k]) | {w.capitalize() for w in r[k]}
        words |= {r["answer_img"].capitalize(), r["answer_text"].capitalize()}
    return sorted(words)
