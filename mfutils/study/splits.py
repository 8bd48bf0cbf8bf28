"""The split manifest of notebook 01, filtered for a model: the entry point above the model-free data layer.

``mfutils.data.datasets.write_split_manifest`` writes the manifest without ever running a model; for MC2 it
takes the model's filter as an injected ``mfutils.data.mc2.Keep``. This module builds that filter from a
model (``mfutils.study.mc2_eval.model_keep``), so notebook 01 passes a model as before.

The per-model filter (keep the records the model answers right from each modality alone) is a switch,
``model_filter``: None (the default) runs it for MC2's own evaluation file and not for an authors' per-model file,
which the authors filtered already for their model (``mfutils.data.mc2_files.MODEL_FILTER_DEFAULT``); True or
False overrides that. The samples a model cannot score are dropped either way.

Public API
----------
write_manifest(model, sizes, dataset="world", mc2_json="", coco_root="", mm=None, model_filter=None,
               form="open", question_form="question3") -> dict      every split generated, the manifest written

Example::

    write_manifest("tiny", DEFAULT_SIZES)                                               # the world
    write_manifest(name, MC2_SIZES, dataset="mc2", mc2_json=path, coco_root=coco, mm=mm)  # MC2, filtered for mm
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfutils.data.datasets import write_split_manifest
from mfutils.data.mc2_files import MODEL_FILTER_DEFAULT, file_format
from mfutils.model.loading import MLLM
from mfutils.study.mc2_eval import model_keep

__all__ = ["write_manifest"]


def write_manifest(model: str, sizes: dict[str, int], dataset: str = "world", mc2_json: str = "",
                   coco_root: str = "", mm: MLLM | None = None, model_filter: bool | None = None,
                   form: str = "open", question_form: str = "question3") -> dict[str, Any]:
    """Generate every split at ``sizes`` and record seed (world) or sample keys (MC2), size and checksum
    (written atomically; ``mfutils.data.datasets.write_split_manifest``). ``dataset="mc2"`` needs ``mc2_json``
    (MC2's evaluate_final.json or an authors' per-model file) and ``coco_root``; with ``mm`` the samples it
    cannot score are dropped and, when ``model_filter`` (None: on for evaluate_final.json, off for an authors'
    file), also the records it does not know from each modality alone; the split sizes are upper bounds.
    ``question_form``: which question field of an authors' file to read. The world's splits never depend on a
    model.

    Example::

        write_manifest("tiny", DEFAULT_SIZES)
        write_manifest(path, MC2_SIZES, dataset="mc2", mc2_json=json_path, coco_root=coco, mm=mm)
        write_manifest(path, MC2_SIZES, dataset="mc2", mc2_json=authors_file, coco_root=coco, mm=mm)  # no filter
    """
    keep = None
    if mm is not None and dataset == "mc2":
        fmt = file_format(mc2_json) if mc2_json and Path(mc2_json).expanduser().is_file() else "mc2"
        keep = model_keep(mm, MODEL_FILTER_DEFAULT[fmt] if model_filter is None else bool(model_filter))
    return write_split_manifest(model, sizes, dataset, mc2_json, coco_root, keep=keep,
                                filtered_for=getattr(mm, "name", None), form=form, model_filter=model_filter,
                                question_form=question_form)
