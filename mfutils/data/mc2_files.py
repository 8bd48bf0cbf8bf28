"""MC2 record files in either of their two published formats, told apart by their fields.

Two formats hold MC2 samples (image id, question, the image's answer, the text's answer, a text context):

``"mc2"``      MC2's public evaluation file, ``evaluate_final.json`` (arXiv 2505.20977; EchoDreamer/Modality-Preference,
               data/evaluate_final.json): 2,000 records, no instruction; we build both instructions
               (``mfutils.data.mc2.FOLLOW_IMAGE`` / ``FOLLOW_TEXT``). Required fields: ``MC2_FIELDS``.
``"authors"``  the Instruction Anchor authors' per-model filtered files (EchoDreamer/Modality-Following,
               ``data/v3_following_<vision|text>_open_ended_<model>_remaining.json``): one JSON list per model and
               instruction (842 records for Qwen2.5-VL-7B following the image), each record holding its own
               instruction sentence, question and format suffix, and alternate answers. Required fields:
               ``AUTHORS_FIELDS``.

A file is read as the format whose distinctive fields its first record carries (``detect_format``); a record
that lacks a field of its file's format is an ``MC2FormatError`` naming the record, the field and both formats'
fields. Every loader returns records as dicts of the MC2 fields (image_id, task, question, answer_vision,
answer_text, context); an authors' record also carries instruction, constraint, instructed, image_candidates and
text_candidates.

Field mapping of the authors' format (record field -> loaded record key):

==============================  ===========================================================================
``image_id``                    ``image_id`` (12-digit string; a number is zero-padded)
``task``                        ``task``
``question<k>``                 k = ``question_form`` (default ``question3``), split at its newlines: the first
                                line -> ``instruction`` (the file's own sentence, used verbatim), the last line ->
                                ``constraint`` (the format suffix, e.g. "Answer the question using a single word
                                or phrase." or "The answer is", stripped), the lines between -> ``question``
``answer_img``                  ``answer_vision``
``answer_text``                 ``answer_text``
``answer_img_candidate_list``   ``image_candidates`` (after ``answer_img``; see below)
``answer_text_candidate_list``  ``text_candidates`` (after ``answer_text``)
``context``                     ``context``
the instruction sentence        ``instructed``: "image" or "text", the modality named last before "rather than"
                                (``instructed_of``); else from the file name (following_vision / following_text)
the two other ``question<k>``   not used (named in an ``UnusedFieldsWarning``, as every unknown field is)
==============================  ===========================================================================

Candidate answers of an authors' record (ours; ``side_candidates``): each side is its answer followed by its
list; entries are stripped, empty ones dropped, and entries equal under ``str.casefold`` are one word (the first
spelling kept: the answer's). A word on both sides (casefold) counts for neither and is removed from both
(``info["shared_word_records"]`` counts the records this touches; a ``SharedWordsWarning`` names them); a side may
end up empty (scoring then reports "empty side"). Each word is scored as written, with its first letter lower-
and upper-cased (``case_forms``; Chinese words have no case). MC2-format records get no lists here; their sides
are ``mfutils.data.mc2.candidate_list`` of the answer.

Public API
----------
MC2_FIELDS, AUTHORS_FIELDS            the required fields of each format and their type
FORMATS                               ("mc2", "authors")
QUESTION_FORMS                        the authors' question fields: question1, question2, question3
MODEL_FILTER_DEFAULT                  format -> whether the per-model filter runs by default (authors: already done)
MC2FormatError, UnusedFieldsWarning, SharedWordsWarning
detect_format(data, source) -> str    "mc2" or "authors" (MC2FormatError naming both formats' fields)
read_records(path, question_form="question3", warn=True) -> (records, info)   validated records and a report
load_records(path, question_form="question3") -> list[dict]                   the records alone
file_format(path) -> str              the format of a file on disk
validate_mc2(data, source) -> list[dict]                                       an MC2-format list, validated
validate_authors(data, source, question_form, name="") -> (records, info)     an authors'-format list, validated
instructed_of(sentence) -> "image" | "text" | None
side_candidates(answer, alternates) -> tuple[str, ...];  case_forms(word) -> tuple[str, ...]
file_sha256(path) -> str

Example::

    records, info = read_records("v3_following_vision_open_ended_qwen_vl_2_5_7b_remaining.json")
    info["format"], info["shared_word_records"], records[0]["instruction"]      # "authors", 3, "In case ..."
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

__all__ = ["MC2_FIELDS", "AUTHORS_FIELDS", "FORMATS", "QUESTION_FORMS", "MODEL_FILTER_DEFAULT", "MC2FormatError",
           "UnusedFieldsWarning", "SharedWordsWarning", "detect_format", "read_records", "load_records", "file_format",
           "validate_mc2", "validate_authors", "instructed_of", "side_candidates", "case_forms", "file_sha256"]

MC2_FIELDS: dict[str, type] = {"image_id": str, "task": str, "question": str, "answer_vision": str,
                               "answer_text": str, "context": str}
AUTHORS_FIELDS: dict[str, type] = {"image_id": str, "task": str, "question1": str, "question2": str,
                                   "question3": str, "answer_img": str, "answer_text": str,
                                   "answer_img_candidate_list": list, "answer_text_candidate_list": list,
                                   "context": str}
FORMATS = ("mc2", "authors")
QUESTION_FORMS = ("question1", "question2", "question3")
# The authors' files are already filtered per model (and per instruction): filtering them again would drop
# records for a second model's answers. MC2's own file is filtered as the paper describes.
MODEL_FILTER_DEFAULT: dict[str, bool] = {"mc2": True, "authors": False}
_DISTINCT = {"mc2": ("question", "answer_vision"),
             "authors": ("question1", "question2", "question3", "answer_img", "answer_img_candidate_list",
                         "answer_text_candidate_list")}
_IMAGE_WORDS = ("image", "images", "visual", "vision", "picture", "photo")
_TEXT_WORDS = ("text", "textual")


class MC2FormatError(ValueError):
    """A record of an MC2 file with a missing field or a wrong type; names the record's index."""


class UnusedFieldsWarning(UserWarning):
    """A record file has fields that loading does not use (they are named, never dropped silently)."""


class SharedWordsWarning(UserWarning):
    """Records of an authors' file list a word on both sides; it counts for neither."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fields_line() -> str:
    return (f"MC2's evaluation file (evaluate_final.json) needs {list(MC2_FIELDS)}; the authors' per-model files "
            f"need {list(AUTHORS_FIELDS)}")


def detect_format(data: Any, source: str = "") -> str:
    """``"mc2"`` or ``"authors"``: the format whose distinctive fields the first record has most of.

    Raises ``MC2FormatError`` for a file that is not a list of objects, or whose first record has neither
    format's fields (the message names both formats' required fields). An empty list reads as ``"mc2"``.

    Example: ``detect_format([{"image_id": "1", "question1": "..."}])`` -> ``"authors"``
    """
    if not isinstance(data, list):
        raise MC2FormatError(f"{source}: an MC2 file must hold a JSON list of records, got {type(data).__name__}. "
                             + _fields_line())
    if not data:
        return "mc2"
    first = data[0]
    if not isinstance(first, dict):
        raise MC2FormatError(f"{source}: record 0 is a {type(first).__name__}, not an object. " + _fields_line())
    hits = {f: sum(k in first for k in _DISTINCT[f]) for f in FORMATS}
    if not any(hits.values()):
        raise MC2FormatError(f"{source}: record 0 has fields {sorted(first)}, which match neither MC2 format: "
                             + _fields_line())
    return "authors" if hits["authors"] > hits["mc2"] else "mc2"


def _field(r: dict[str, Any], i: int, name: str, typ: type, source: str, fmt: str) -> Any:
    fields = MC2_FIELDS if fmt == "mc2" else AUTHORS_FIELDS
    what = "MC2's evaluation-file format" if fmt == "mc2" else "the authors' per-model format"
    if name not in r:
        raise MC2FormatError(f"{source}: record {i} has no field {name!r} (it has {sorted(r)}); every record of "
                             f"{what} needs {list(fields)}. ({_fields_line()}.)")
    v = r[name]
    if name == "image_id" and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        v = f"{v:012d}"                               # a numeric COCO id: the 12-digit form
    if not isinstance(v, typ):
        raise MC2FormatError(f"{source}: record {i} field {name!r} is a {type(v).__name__} ({v!r:.60}), "
                             f"expected {typ.__name__}")
    if typ is str:
        if not v.strip():
            raise MC2FormatError(f"{source}: record {i} field {name!r} is empty")
        if name == "image_id" and not v.strip().isdigit():
            raise MC2FormatError(f"{source}: record {i} field 'image_id' is {v!r}, expected the digits of a "
                                 "COCO image id")
        return v.strip()
    bad = [x for x in v if not isinstance(x, str)]
    if bad:
        raise MC2FormatError(f"{source}: record {i} field {name!r} holds {type(bad[0]).__name__} {bad[0]!r:.40}, "
                             "expected a list of strings")
    return v


def _conflict(clean: dict[str, Any], i: int, source: str) -> None:
    if clean["answer_vision"].casefold() == clean["answer_text"].casefold():
        raise MC2FormatError(f"{source}: record {i} has the same answer for the image and the text "
                             f"({clean['answer_vision']!r}): no conflict to study")


def _unused(data: Sequence[dict[str, Any]], used: Sequence[str]) -> list[str]:
    return sorted({k for r in data if isinstance(r, dict) for k in r} - set(used))


def validate_mc2(data: Any, source: str = "") -> list[dict[str, str]]:
    """Validate a list of MC2-format records: every field of every record; returns dicts of ``MC2_FIELDS``
    (strings, stripped; a numeric ``image_id`` written as 12 digits). Raises ``MC2FormatError`` naming the record
    index and the field for a missing field, a wrong type or an empty value.

    Example: ``validate_mc2([{"image_id": 1, ...}], "x.json")[0]["image_id"]`` -> ``"000000000001"``
    """
    if not isinstance(data, list):
        raise MC2FormatError(f"{source}: the MC2 file must hold a JSON list of records, got {type(data).__name__}")
    out = []
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise MC2FormatError(f"{source}: record {i} is a {type(r).__name__}, not an object with fields "
                                 f"{list(MC2_FIELDS)}")
        clean = {name: _field(r, i, name, typ, source, "mc2") for name, typ in MC2_FIELDS.items()}
        _conflict(clean, i, source)
        out.append(clean)
    return out


def instructed_of(sentence: str) -> str | None:
    """The modality an instruction sentence says to follow: the one named last before "rather than"
    ("... rely on the image content rather than the text context" -> "image"); None when it names none there.

    Example: ``instructed_of(FOLLOW_TEXT)`` -> ``"text"``   (``mfutils.data.mc2``)
    """
    head = sentence.lower().split("rather than", 1)
    if len(head) < 2:
        return None
    words = re.findall(r"[a-z]+", head[0])
    for w in reversed(words):
        if w in _IMAGE_WORDS:
            return "image"
        if w in _TEXT_WORDS:
            return "text"
    return None


def _instructed_from_name(name: str) -> str | None:
    n = name.lower()
    img = any(k in n for k in ("following_vision", "following_image", "follow_image", "follow_vision"))
    txt = any(k in n for k in ("following_text", "follow_text"))
    return "image" if img and not txt else "text" if txt and not img else None


def case_forms(word: str) -> tuple[str, ...]:
    """A word as written, with its first letter lower-cased and upper-cased (deduplicated, in that order)."""
    return tuple(dict.fromkeys([word, word[:1].lower() + word[1:], word[:1].upper() + word[1:]]))


def side_candidates(answer: str, alternates: Sequence[str]) -> tuple[str, ...]:
    """One side's words: the answer, then its alternates; stripped, empty entries dropped, entries equal under
    ``str.casefold`` kept once (the first spelling). Example: ``side_candidates("wood", ["Wood", "木材", ""])``
    -> ``("wood", "木材")``."""
    seen: dict[str, str] = {}
    for w in (answer, *alternates):
        w = w.strip()
        if w and w.casefold() not in seen:
            seen[w.casefold()] = w
    return tuple(seen.values())


def validate_authors(data: Any, source: str = "", question_form: str = "question3",
                     name: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate a list of authors'-format records and map them to loaded records (see the module docstring).

    ``question_form``: which of question1 / question2 / question3 gives the instruction, question and suffix.
    ``name``: the file name, read for the instruction when a sentence does not name its modality. Returns the
    records and a report (format, question_form, instruction sentences, constraints, shared-word records).

    Example: ``records, info = validate_authors(json.load(f), "qwen.json")``
    """
    if question_form not in QUESTION_FORMS:
        raise ValueError(f"question_form {question_form!r}: use one of {QUESTION_FORMS}")
    if not isinstance(data, list):
        raise MC2FormatError(f"{source}: the file must hold a JSON list of records, got {type(data).__name__}")
    out: list[dict[str, Any]] = []
    sentences: dict[str, str] = {}
    constraints: dict[str, int] = {}
    shared: list[dict[str, Any]] = []
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise MC2FormatError(f"{source}: record {i} is a {type(r).__name__}, not an object with fields "
                                 f"{list(AUTHORS_FIELDS)}")
        f = {k: _field(r, i, k, typ, source, "authors") for k, typ in AUTHORS_FIELDS.items()}
        lines = [x.strip() for x in r[question_form].split("\n")]
        if len(lines) < 3 or not all(lines):
            raise MC2FormatError(f"{source}: record {i} field {question_form!r} is {r[question_form]!r:.120}; expected "
                                 "three non-empty lines: the instruction sentence, the question, the format suffix")
        instruction, question, constraint = lines[0], " ".join(lines[1:-1]), lines[-1]
        instructed = instructed_of(instruction) or _instructed_from_name(name)
        if instructed is None:
            raise MC2FormatError(f"{source}: record {i}: cannot tell which modality the instruction {instruction!r} "
                                 "asks to follow (no 'image' or 'text' before 'rather than'), nor from the file "
                                 "name (following_vision / following_text)")
        clean: dict[str, Any] = {"image_id": f["image_id"], "task": f["task"], "question": question,
                                 "answer_vision": f["answer_img"], "answer_text": f["answer_text"],
                                 "context": f["context"]}
        _conflict(clean, i, source)
        img = side_candidates(f["answer_img"], f["answer_img_candidate_list"])
        txt = side_candidates(f["answer_text"], f["answer_text_candidate_list"])
        both = {w.casefold() for w in img} & {w.casefold() for w in txt}
        if both:
            shared.append({"record": i, "image_id": f["image_id"], "words": sorted(both)})
        clean.update(instruction=instruction, constraint=constraint, instructed=instructed,
                     image_candidates=[c for w in img if w.casefold() not in both for c in case_forms(w)],
                     text_candidates=[c for w in txt if w.casefold() not in both for c in case_forms(w)])
        sentences.setdefault(instructed, instruction)
        constraints[constraint] = constraints.get(constraint, 0) + 1
        out.append(clean)
    info = {"format": "authors", "question_form": question_form, "instruction_sentences": sentences,
            "constraints": constraints, "shared_word_records": len(shared), "shared_words": shared[:20]}
    return out, info


def read_records(path: str | os.PathLike[str], question_form: str = "question3", warn: bool = True,
                 stacklevel: int = 2) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read and validate an MC2 file of either format (``detect_format``); every field of every record is checked.

    Returns the records (see the module docstring) and a report: ``format``, ``n_records``, ``unused_fields``
    (fields present in the file that loading does not use), and for the authors' format ``question_form``,
    ``instruction_sentences``, ``constraints`` (suffix -> count), ``shared_word_records`` and the first 20
    ``shared_words``. With ``warn``, unused fields raise an ``UnusedFieldsWarning`` and shared words a
    ``SharedWordsWarning`` (``stacklevel`` as ``warnings.warn``'s). Raises ``FileNotFoundError`` for a missing file, ``MC2FormatError`` for a bad record.

    Example::

        records, info = read_records("../shared/mc2/evaluate_final.json")   # 2,000 records, info["format"] == "mc2"
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"MC2 file {p} not found: pass --mc2-json / mc2_json=<path to evaluate_final.json> "
                                "(from github.com/EchoDreamer/Modality-Preference, data/evaluate_final.json) or to an "
                                "authors' per-model file (github.com/EchoDreamer/Modality-Following, data/)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MC2FormatError(f"{p} is not valid JSON: {exc}") from exc
    fmt = detect_format(data, str(p))
    if fmt == "mc2":
        records, info = validate_mc2(data, str(p)), {"format": "mc2"}
        used: Sequence[str] = list(MC2_FIELDS)
    else:
        records, info = validate_authors(data, str(p), question_form, p.name)
        used = [k for k in AUTHORS_FIELDS if k not in QUESTION_FORMS or k == question_form]
    info = {**info, "n_records": len(records), "unused_fields": _unused(data, used)}
    if warn and info["unused_fields"]:
        warnings.warn(f"{p.name}: fields not used: {', '.join(info['unused_fields'])} (the {fmt} format reads "
                      f"{', '.join(used)})", UnusedFieldsWarning, stacklevel=stacklevel)
    if warn and info.get("shared_word_records"):
        ex = "; ".join(f"record {s['record']}: {', '.join(s['words'])}" for s in info["shared_words"][:3])
        warnings.warn(f"{p.name}: {info['shared_word_records']} of {len(records)} records list a word on both sides "
                      f"(it counts for neither side): {ex}", SharedWordsWarning, stacklevel=stacklevel)
    return records, info


def load_records(path: str | os.PathLike[str], question_form: str = "question3") -> list[dict[str, Any]]:
    """The validated records of an MC2 file of either format (``read_records`` without its report).

    Example: ``records = load_records("../shared/mc2/evaluate_final.json")``     # 2,000 records
    """
    return read_records(path, question_form, stacklevel=3)[0]


def file_format(path: str | os.PathLike[str]) -> str:
    """``"mc2"`` or ``"authors"``: the format of the file at ``path`` (read, not validated)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"MC2 file {p} not found")
    return detect_format(json.loads(p.read_text(encoding="utf-8")), str(p))
