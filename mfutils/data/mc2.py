"""The MC2 modality-conflict benchmark (arXiv 2505.20977) as a dataset of the chain: records, COCO images, samples.

MC2 records are read from a file the user gives, in either published format (``mfutils.data.mc2_files``, told
apart by their fields): MC2's evaluation file (``evaluate_final.json``: 2,000 records of image_id, task,
question, answer_vision, answer_text, context), or one of the Instruction Anchor authors' per-model filtered
files (one instruction per file; each record holds its instruction sentence, question, format suffix and
alternate answers). The COCO 2014 images come from a COCO root. Each record becomes samples of the same
``mfutils.data.sample.Sample`` type the notebooks use: prompt segments image, context, instruction, question,
constraint (MC2's order: the text context, then the instruction, then the question, after the image), with
candidate-answer lists for each side, so every measure of the chain applies unchanged
(``mfutils.measure.answers.targets_for`` dispatches on the candidate lists).

Choices that are ours (MC2's paper gives the form, not these exact strings), for MC2's own file: the two
instruction sentences ``FOLLOW_IMAGE`` / ``FOLLOW_TEXT``; the candidate list of an answer is the answer as written
and with a capital first letter (``candidate_list``). For an authors' file: the file's own instruction sentence,
question and suffix (``question_form``), and each side's candidates from the file (``mc2_files.side_candidates``);
such a record has only its file's instruction. Both: the text-only counterpart shows a plain grey image.

Public API
----------
MC2_FIELDS                            the fields of an evaluate_final.json record and their type (mc2_files)
FOLLOW_IMAGE, FOLLOW_TEXT             the instruction sentences (one each)
CONSTRAINT_OPEN, CONSTRAINT_MC        the format constraints of the open-ended and the A/B forms
load_records(path) -> list[dict]      read and validate every record, either format (MC2FormatError names index
                                      and field); read_records(path) -> (records, info) adds the file's report
find_images(records, coco_root) -> list[Path]   one image file per record (MissingImagesError lists them)
file_sha256(path) -> str
candidate_list(answer) -> tuple[str, ...]
record_samples(records, images, ...) -> list[Sample]   open-ended or A/B (both option orders) samples
instructions_of(record) -> tuple[str, ...]       the instructions a record has samples for
counterparts_mc2(sample) -> (image_only, text_only)
Keep                                  keep(probe, limit) -> (kept, dropped, report | None): a model's filter
build_splits(records, images, sizes, keep=None) -> (splits, info)   the chain's named splits from MC2
split_samples(name, records, images, keys) -> list[Sample]         a split rebuilt from its manifest keys

The model-dependent parts (which samples a model can score, the per-model filter, MFR on MC2) are in
``mfutils.study.mc2_eval``; this module never loads or runs a model.

Example::

    records = load_records("../shared/mc2/evaluate_final.json")
    images = find_images(records, "/data/coco2014")
    samples = record_samples(records[:8], images[:8])        # 16 samples: follow image / follow text
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mfutils.data.mc2_files import MC2_FIELDS, MC2FormatError, file_sha256, load_records, read_records
from mfutils.data.mc2_files import validate_mc2 as _validate  # noqa: F401  (the MC2-format validator)
from mfutils.data.prompts import Prompt
from mfutils.data.sample import Sample

__all__ = [
    "MC2_FIELDS", "FOLLOW_IMAGE", "FOLLOW_TEXT", "CONSTRAINT_OPEN", "CONSTRAINT_MC", "SYSTEM_SENTENCE",
    "MC2FormatError", "MissingImagesError", "load_records", "find_images", "file_sha256", "candidate_list",
    "record_samples", "counterparts_mc2", "Keep", "build_splits", "split_samples", "SPLIT_SEED", "read_records",
    "instructions_of",
]

# One sentence each, placed after the context and before the question (ours, of MC2's stated form).
FOLLOW_IMAGE = "If the text context and the image disagree, follow the image rather than the text context."
FOLLOW_TEXT = "If the text context and the image disagree, follow the text context rather than the image."
CONSTRAINT_OPEN = "Answer the question using a single word or phrase."
CONSTRAINT_MC = "Answer with the option's letter from the given choices directly."
SYSTEM_SENTENCE = "You are a helpful assistant."     # the system-prompt control (C11), as in the world
SPLIT_SEED = 0                                       # permutation of the records into identify / test halves
GREY = 128

# keep(probe, limit) -> (kept, dropped, filter_report | None): a model's choice among one half's probe samples
# (one per record). ``dropped``: the samples it cannot score (record, task, reason), all of them reported;
# ``kept``: the scorable ones, or, when it filters (report not None), those of the first ``limit`` scorable
# ones that pass. ``mfutils.study.mc2_eval.model_keep(mm)`` builds one; the data layer never sees a model.
Keep = Callable[[list[Sample], int], tuple[list[Sample], list[dict[str, Any]], dict[str, Any] | None]]


class MissingImagesError(FileNotFoundError):
    """COCO images that the records need are not under the COCO root."""


def _image_names(image_id: str) -> list[str]:
    return [f"COCO_train2014_{image_id}.jpg", f"COCO_val2014_{image_id}.jpg", f"{image_id}.jpg",
            f"{int(image_id):012d}.jpg"]


def find_images(records: Sequence[dict[str, str]], coco_root: str | os.PathLike[str]) -> list[Path]:
    """The image file of each record under ``coco_root`` (or its ``train2014/`` / ``val2014/`` folders):
    ``COCO_train2014_<id>.jpg``, ``COCO_val2014_<id>.jpg`` or ``<id>.jpg``.

    Raises ``MissingImagesError`` listing the first 10 missing ids and their count.

    Example::

        paths = find_images(records, "/data/coco2014")          # list[Path], one per record
    """
    root = Path(coco_root).expanduser()
    if not str(coco_root) or not root.is_dir():
        raise MissingImagesError(f"COCO root {str(coco_root)!r} is not a folder: pass --coco-root / coco_root=<folder "
                                 "holding the MS-COCO 2014 train/val images>")
    folders = [root, root / "train2014", root / "val2014"]
    listing = {f: set(os.listdir(f)) if f.is_dir() else set() for f in folders}
    paths: list[Path] = []
    missing: list[tuple[int, str]] = []
    for i, r in enumerate(records):
        hit = next((f / n for n in _image_names(r["image_id"]) for f in folders if n in listing[f]), None)
        if hit is None:
            missing.append((i, r["image_id"]))
        else:
            paths.append(hit)
    if missing:
        first = ", ".join(f"{iid} (record {i})" for i, iid in missing[:10])
        raise MissingImagesError(
            f"{len(missing)} of {len(records)} MC2 images are missing under {root}: {first}"
            f"{' ...' if len(missing) > 10 else ''}. Expected COCO_train2014_<id>.jpg, COCO_val2014_<id>.jpg or "
            "<id>.jpg in the root or in its train2014/ or val2014/ folder (MS-COCO 2014 from cocodataset.org)."
        )
    return paths


def candidate_list(answer: str) -> tuple[str, ...]:
    """The acceptable answers for one side (ours): the answer as written and with a capital first letter."""
    a = answer.strip()
    return tuple(dict.fromkeys([a, a[:1].upper() + a[1:]]))


def instructions_of(record: dict[str, Any]) -> tuple[str, ...]:
    """The instructions a record has samples for: both for MC2's own records, the file's one for an authors'
    record (``record["instructed"]``)."""
    own = record.get("instructed")
    return ("image", "text") if own is None else (own,)


def _sample(record: dict[str, Any], rec_index: int, image: Any, instructed: str, form: str, order: str,
            variant: str) -> Sample:
    own = record.get("instructed")            # an authors' record: the file's instruction, question form, lists
    if own is not None and instructed != own:
        raise ValueError(f"record {rec_index} (image {record['image_id']}) comes from a file for the follow-{own} "
                         f"instruction: it has no follow-{instructed} sample")
    if own is None:
        inst = FOLLOW_IMAGE if instructed == "image" else FOLLOW_TEXT
    else:
        inst = record["instruction"]
    av, at = record["answer_vision"], record["answer_text"]
    if form == "open":
        question, constraint = record["question"], record.get("constraint", CONSTRAINT_OPEN)
        if own is None:
            img_c, txt_c = candidate_list(av), candidate_list(at)
        else:
            img_c, txt_c = tuple(record["image_candidates"]), tuple(record["text_candidates"])
        image_answer, text_answer = av, at
    elif form == "mc":
        a, b = (av, at) if order == "AB" else (at, av)
        question, constraint = f"{record['question']} A. {a} B. {b}", CONSTRAINT_MC
        image_answer, text_answer = ("A", "B") if order == "AB" else ("B", "A")
        img_c, txt_c = (image_answer,), (text_answer,)
    else:
        raise ValueError(f"unknown MC2 form {form!r}; use 'open' or 'mc'")
    segs = {"system": SYSTEM_SENTENCE, "image": "", "context": record["context"], "instruction": inst,
            "question": question, "constraint": constraint}
    names = {"standard": ["image", "context", "instruction", "question", "constraint"],
             "system": ["system", "image", "context", "instruction", "question", "constraint"],
             "instruction_last": ["image", "context", "question", "constraint", "instruction"]}
    if variant not in names:
        raise ValueError(f"unknown variant {variant!r}; use one of {sorted(names)}")
    answer, other = (image_answer, text_answer) if instructed == "image" else (text_answer, image_answer)
    meta: dict[str, object] = {"record": rec_index, "image_id": record["image_id"], "task": record["task"],
                               "form": form, "order": order}
    if own is not None:
        meta["format"] = "authors"
    return Sample(
        seed=-1, index=rec_index, category=f"follow_{instructed}", attribute=record["task"], variant=variant,
        prompt=Prompt(tuple((n, segs[n]) for n in names[variant]), image), answer=answer,
        image_answer=image_answer, text_answer=text_answer, other_answer=other, instructed=instructed,
        template=0 if instructed == "image" else 1, heldout_template=False, candidates=(*img_c, *txt_c),
        answer_img_candidate_list=img_c, answer_text_candidate_list=txt_c, source="mc2", meta=meta,
    )


def record_samples(records: Sequence[dict[str, Any]], images: Sequence[Any], *, indices: Sequence[int] | None = None,
                   instructions: Sequence[str] | None = None, form: str = "open",
                   variant: str = "standard") -> list[Sample]:
    """Samples of the records: one per record and instruction (``form="open"``), or two per record and
    instruction, the options A/B in both orders (``form="mc"``). ``images``: one image (path, PIL image or
    array) per record; ``indices``: the record indices the records carry (default 0..n-1); ``instructions``:
    default each record's (``instructions_of``: both for MC2's own file, the file's one for an authors' file).

    Example::

        samples = record_samples(records[:4], paths[:4], form="mc")      # 4 x 2 instructions x 2 orders
    """
    if len(images) != len(records):
        raise ValueError(f"got {len(images)} images for {len(records)} records")
    idx = list(range(len(records))) if indices is None else list(indices)
    orders = ("AB", "BA") if form == "mc" else ("",)
    return [_sample(r, i, img, ins, form, o, variant)
            for r, i, img in zip(records, idx, images)
            for ins in (instructions_of(r) if instructions is None else instructions) for o in orders]


def counterparts_mc2(sample: Sample) -> tuple[Sample, Sample]:
    """The image-only (image, question, constraint) and text-only (grey image, context, question, constraint)
    versions of an MC2 sample, with the same candidate lists; answers: the image's and the text's.

    Example::

        img_only, txt_only = counterparts_mc2(record_samples(records[:1], paths[:1])[0])
    """
    q, c, ctx = sample.prompt.text("question") or "", sample.prompt.text("constraint") or "", sample.prompt.text("context") or ""
    grey = np.full((336, 336, 3), GREY, dtype=np.uint8)
    common = dict(instructed=None, template=None, heldout_template=False, other_answer=None)
    img_only = dataclasses.replace(sample, category="image_only", answer=sample.image_answer, **common,
                                   prompt=Prompt((("image", ""), ("question", q), ("constraint", c)), sample.prompt.image))
    txt_only = dataclasses.replace(sample, category="text_only", answer=sample.text_answer, **common,
                                   prompt=Prompt((("image", ""), ("context", ctx), ("question", q), ("constraint", c)), grey))
    return img_only, txt_only


# ------------------------------------------------------------------------------------------------
# Splits of the chain (the MC2 analogues of mfutils.data.world.SPLITS)
# ------------------------------------------------------------------------------------------------
# split name -> (record half, variant, kind): identification on one half of the records, everything else on
# the other; the capability split holds the image-only and text-only counterparts of the test records.
_SPLITS: dict[str, tuple[str, str, str]] = {
    "identify": ("identify", "standard", "conflict"),
    "test": ("test", "standard", "conflict"),
    "test_system": ("test", "system", "conflict"),
    "test_instruction_last": ("test", "instruction_last", "conflict"),
    "capability": ("test", "standard", "capability"),
    "fail_pool": ("test", "standard", "conflict"),
}


def _halves(n_records: int) -> dict[str, list[int]]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_records).tolist()
    return {"identify": perm[: n_records // 2], "test": perm[n_records // 2:]}    # permuted: tasks mix


def split_samples(name: str, records: Sequence[dict[str, str]], images: Sequence[Any], keys: Sequence[Sequence[Any]],
                  form: str = "open") -> list[Sample]:
    """Rebuild a split from its keys ``(record, instruction | "image_only" | "text_only", order)`` (as a
    manifest records them)."""
    if name not in _SPLITS:
        raise ValueError(f"unknown split {name!r}; use one of {sorted(_SPLITS)}")
    _, variant, kind = _SPLITS[name]
    out = []
    for rec, what, order in keys:
        if kind == "capability":
            base = _sample(records[rec], rec, images[rec], instructions_of(records[rec])[0], form, order, "standard")
            out.append(counterparts_mc2(base)[0 if what == "image_only" else 1])
        else:
            out.append(_sample(records[rec], rec, images[rec], what, form, order, variant))
    return out


def _conflict_keys(recs: Sequence[int], records: Sequence[dict[str, Any]], form: str,
                   flip: int) -> list[tuple[int, str, str]]:
    """Keys of conflict samples: MC2's own records alternate the instructions (``flip`` swaps them), an authors'
    record has its file's instruction."""
    keys: list[tuple[int, str, str]] = []
    for j, r in enumerate(recs):
        own = records[r].get("instructed")
        ins = own if own is not None else ("image", "text")[(j + flip) % 2]
        for o in (("AB", "BA") if form == "mc" else ("",)):
            keys.append((r, ins, o))
    return keys


def _merge_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two filter reports of successive rounds as one: counts added, tables merged, lists joined."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _merge_reports(out[k], v)
        elif isinstance(v, (int, float, list)) and not isinstance(v, bool):
            out[k] = out[k] + v
    return out


def build_splits(records: Sequence[dict[str, Any]], images: Sequence[Any], sizes: dict[str, int], *,
                 keep: Keep | None = None, form: str = "open") -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """The chain's named splits from MC2 records: ``identify`` on one half of the records (fixed permutation,
    ``SPLIT_SEED``), the others on the other half; ``test_system`` / ``test_instruction_last`` are the MC2
    analogues of the world's C11 controls (a system sentence first / the instruction last), ``capability``
    the image-only and text-only counterparts (C7). Instructions alternate per record of MC2's own file; an
    authors' record keeps its file's instruction, and then ``fail_pool`` takes the test half's records that
    ``test`` does not use (it cannot flip the instruction). With ``keep`` (a ``Keep``;
    ``mfutils.study.mc2_eval.model_keep(mm)``) each half keeps only the records ``keep`` accepts: it drops those
    the model cannot score and, when it filters, those it does not know from each modality alone, among the
    first ``max(4 * need, 32)`` scorable records of the half (and the next ones, round by round, while fewer than
    ``need`` pass and records are left). Each split takes its first ``sizes[name]``
    samples. Returns the splits and a report (what was dropped and why; ``unscorable_by_cause`` counts the
    dropped samples per cause of ``mfutils.measure.answers.UNSCORABLE_CAUSES``).

    Example::

        splits, info = build_splits(records, paths, MC2_SIZES, keep=model_keep(mm))   # mfutils.study.mc2_eval
    """
    unknown = set(sizes) - set(_SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(_SPLITS)}")
    halves = _halves(len(records))
    info: dict[str, Any] = {"form": form, "model_filter": False, "halves": {k: len(v) for k, v in halves.items()}}
    allowed: dict[str, set[int]] = {k: set(v) for k, v in halves.items()}
    if keep is not None:
        for half, recs in halves.items():
            need = max((n for s, n in sizes.items() if _SPLITS[s][0] == half), default=0)
            probe = [_sample(records[r], r, images[r], instructions_of(records[r])[0], form, "AB", "standard")
                     for r in recs]
            # filter only as many records as the splits can use (x4 margin for the filter's losses); while the
            # filter leaves fewer than the splits need, filter the next records of the half
            limit = max(need * 4, 32)
            ok, dropped, report = keep(probe, limit)
            info.setdefault("unscorable", []).extend(dropped)
            gone = {int(d["record"]) for d in dropped}
            rest = [s for s in probe if s.index not in gone][limit:]
            while report is not None and len(ok) < need and rest:
                limit = max((need - len(ok)) * 4, 32)
                more, _, again = keep(rest, limit)
                ok, report, rest = ok + more, _merge_reports(report, again or {}), rest[limit:]
            if report is not None:
                info["model_filter"] = True
                info.setdefault("filter", {})[half] = report
            allowed[half] = {s.index for s in ok}
        causes: dict[str, int] = {}
        for d in info["unscorable"]:
            causes[str(d.get("cause", "other"))] = causes.get(str(d.get("cause", "other")), 0) + 1
        info["unscorable_by_cause"] = causes
    kept = {half: [r for r in recs if r in allowed[half]] for half, recs in halves.items()}
    # the records the test split uses: an authors' record in them is not repeated in fail_pool
    in_test = {k[0] for k in _conflict_keys(kept["test"], records, form, 0)[: sizes.get("test", 0)]}
    splits: dict[str, list[Sample]] = {}
    for name, n in sizes.items():
        half, variant, kind = _SPLITS[name]
        recs = kept[half]
        if kind == "capability":
            keys = [(r, ("image_only", "text_only")[j % 2], "") for j, r in enumerate(recs)]
        elif name == "fail_pool":
            # fail_pool comes from the same half as test, with each record's OTHER instruction (ours): so the
            # two never share a sample (notebook 02 sweeps test + the failures of fail_pool together) and a
            # filtered half too small for two disjoint record sets still yields a pool. An authors' record has
            # one instruction: the pool takes those test leaves out.
            keys = _conflict_keys([r for r in recs if "instructed" not in records[r] or r not in in_test],
                                  records, form, 1)
        else:
            keys = _conflict_keys(recs, records, form, 0)
        splits[name] = split_samples(name, records, images, keys[:n], form=form)
    return splits, info
