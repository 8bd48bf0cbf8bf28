"""The split manifest of notebook 01, filtered for a model: the entry point above the model-free data layer.

``mfutils.data.datasets.write_split_manifest`` writes the manifest without ever running a model; for MC2 it
takes the model's filter as an injected ``mfutils.data.mc2.Keep``. This module builds that filter from a
model (``mfutils.study.mc2_eval.model_keep``), so notebook 01 passes a model as before.

Public API
----------
write_manifest(model, sizes, dataset="world", mc2_json="", coco_root="", mm=None, model_filter=True,
               form="open") -> dict      every split generated, the manifest written (atomic)

Example::

    write_manifest("tiny", DEFAULT_SIZES)                                               # the world
    write_manifest(name, MC2_SIZES, dataset="mc2", mc2_json=path, coco_root=coco, mm=mm)  # MC2, filtered for mm
"""

from __future__ import annotations

from typing import Any

from mfutils.data.datasets import write_split_manifest
from mfutils.model.loading import MLLM
from mfutils.study.mc2_eval import model_keep

__all__ = ["write_manifest"]


def write_manifest(model: str, sizes: dict[str, int], dataset: str = "world", mc2_json: str = "",
                   coco_root: str = "", mm: MLLM | None = None, model_filter: bool = True,
                   form: str = "open") -> dict[str, Any]:
    """Generate every split at ``sizes`` and record seed (world) or sample keys (MC2), size and checksum
    (written atomically; ``mfutils.data.datasets.write_split_manifest``). ``dataset="mc2"`` needs ``mc2_json``
    and ``coco_root``; with ``mm`` the MC2 samples are filtered for that model (unscorable samples dropped;
    with ``model_filter``, also the records it does not know from each modality alone), and the split sizes
    are upper bounds. The world's splits never depend on a model.

    Example::

        write_manifest("tiny", DEFAULT_SIZES)
        write_manifest(path, MC2_SIZES, dataset="mc2", mc2_json=json_path, coco_root=coco, mm=mm)
    """
    keep = model_keep(mm, model_filter) if mm is not None else None
    return write_split_manifest(model, sizes, dataset, mc2_json, coco_root, keep=keep,
                                filtered_for=getattr(mm, "name", None), form=form)
