"""Notebook 02 in one call: the failure search, every information-flow analysis, and its results document.

Design sections 1, 4, 5 (claims C1-C4, C10-C12). Definitions marked (ours) are our reconstruction: the
paper (arXiv 2602.03677) publishes only its abstract. The analyses live in ``mfutils.study.knockout``,
``lens`` (LDAR), ``dla``, ``saliency`` and ``stability``; the edges in ``mfutils.model.edges``; the figures in
``mfutils.present.plots_flow``.

Public API
----------
SUBSETS                         the sample subsets of the knockout summaries
RESULTS_NAME                    "02_information_flow" (results/<model>/02_information_flow.json)
subset_masks(sweep, arbitration=None) -> {subset: bool [N]}       the SUBSETS of a main sweep
arbitration_failures(mm, samples, followed, batch_size=64) -> bool [N]
                                failed samples whose image-only and text-only counterparts the model answers right
find_failures(mm, samples, batch_size=64, cap=None, progress=False) -> list[Sample]
                                the first ``cap`` conflict samples the model does not follow, in order
FlowDocument                    the results document (a read-only mapping; ``to_doc()`` -> dict)
run_information_flow(mm, model_name, test, failed, system, instruction_last, k=1, ...) -> FlowDocument
                                also writes results/<model>/02_knockout_per_sample{,_system,_instruction_last}.npz

Example::

    failed = find_failures(mm, load_split("tiny", "fail_pool"), cap=200)
    doc = run_information_flow(mm, "tiny", test, failed, system, instruction_last, k=1)
    write_results(doc, "tiny", RESULTS_NAME)        # mfutils.study.results
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mfutils.data.counterparts import counterparts
from mfutils.data.sample import Sample
from mfutils.measure.follow import follows
from mfutils.model.edges import CONTROL_EDGES, MAIN_EDGES
from mfutils.model.loading import MLLM
from mfutils.study.dla import dla
from mfutils.study.knockout import SweepResult, knockout_sweep
from mfutils.study.lens import READS, ldar
from mfutils.study.results import write_arrays
from mfutils.study.saliency import saliency
from mfutils.study.stability import FRACTIONS, stability

__all__ = ["SUBSETS", "RESULTS_NAME", "subset_masks", "arbitration_failures", "find_failures", "FlowDocument",
           "run_information_flow"]

SUBSETS: tuple[str, ...] = ("all", "follow_image", "follow_text", "succeeded", "failed", "failed_arbitration",
                            "failed_perception")
RESULTS_NAME = "02_information_flow"


def subset_masks(sweep: SweepResult, arbitration: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ``SUBSETS`` of a main sweep: test samples (``all``, by instruction, ``succeeded``) and every
    sample that does not follow its instruction (``failed``: test failures plus the failure pool). With
    ``arbitration`` (bool [N], ``arbitration_failures``) also the failed samples by kind (ours, design
    section 5): ``failed_arbitration`` (both single-modality answers right) and ``failed_perception`` (the
    other failures); without it those two are left out.

    Example::

        masks = subset_masks(sweep); sweep.summary("image->last", masks["failed"])
    """
    test = sweep.tags == "test"
    out = {"all": test, "follow_image": test & (sweep.categories == "follow_image"),
           "follow_text": test & (sweep.categories == "follow_text"), "succeeded": test & sweep.follows,
           "failed": ~sweep.follows}
    if arbitration is not None:
        arb = np.asarray(arbitration, dtype=bool)
        if arb.shape != (len(sweep),):
            raise ValueError(f"arbitration must be bool [{len(sweep)}], got shape {arb.shape}")
        out.update(failed_arbitration=~sweep.follows & arb, failed_perception=~sweep.follows & ~arb)
    return out


def arbitration_failures(mm: MLLM, samples: Sequence[Sample], followed: np.ndarray, batch_size: int = 64
                         ) -> np.ndarray:
    """bool [N]: the samples not followed (``followed`` False) whose image-only and text-only counterparts
    (``mfutils.data.counterparts``) the model answers right (``measure.follow.follows``): arbitration
    failures; every other failure is a perception failure (the model misreads a modality on its own).

    Example::

        arb = arbitration_failures(mm, samples, sweep.follows)      # sweep over the same samples
    """
    out = np.zeros(len(samples), dtype=bool)
    failed = np.flatnonzero(~np.asarray(followed, dtype=bool))
    if failed.size:
        pairs = [counterparts(samples[i]) for i in failed]
        knows_image = follows(mm, [p[0] for p in pairs], batch_size=batch_size).numpy()
        knows_text = follows(mm, [p[1] for p in pairs], batch_size=batch_size).numpy()
        out[failed] = knows_image & knows_text
    return out


def find_failures(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64, cap: int | None = None,
                  progress: bool = False) -> list[Sample]:
    """The conflict samples whose instructed answer is not the model's answer
    (``mfutils.measure.follow.follows`` False), in order, at most ``cap`` of them.

    Decides ``batch_size`` conflict samples at a time and stops once ``cap`` failures are found.

    Example::

        failed = find_failures(mm, load_split("tiny", "fail_pool"), cap=200)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out: list[Sample] = []
    conflict = [s for s in samples if s.other_answer is not None]
    with tqdm(total=len(conflict), desc="find failures", disable=not progress) as bar:
        for lo in range(0, len(conflict), batch_size):
            chunk = conflict[lo:lo + batch_size]
            ok = follows(mm, chunk, batch_size=batch_size)
            out.extend(s for s, f in zip(chunk, ok.tolist()) if not f)
            bar.update(len(chunk))
            if cap is not None and len(out) >= cap:
                return out[:cap]
    return out


@dataclass(frozen=True)
class FlowDocument(Mapping[str, Any]):
    """The results document of notebook 02, typed; also a read-only mapping of its fields (``doc["knockout"]``).

    ``n``: samples per sweep {"test", "failed", "system", "instruction_last"} and the failed samples by source
    ("failed_test", "failed_fail_pool") and by kind ("failed_arbitration", "failed_perception"); ``knockout``: {edge: {subset:
    ``SweepResult.summary``}} over ``MAIN_EDGES`` x ``SUBSETS``; ``controls``: {variant: {edge: {"all":
    summary}}} over ``CONTROL_EDGES``; ``ldar``: {read: {"rate", "lo", "hi": [L+1], "n"}} (``lens.READS``); ``dla``,
    ``subspace``: ``DLAResult.summary``; ``saliency``: {pair: [L]}; ``stability``: see
    ``mfutils.study.stability``; ``stride``: windows start every ``stride`` layers (1: sliding; ``window``: tiles).
    ``to_doc()``: the JSON document (``mfutils.study.results.write_results``).
    """

    model: str
    n_layers: int
    window: int
    n: dict[str, int]
    knockout: dict[str, Any]
    controls: dict[str, Any]
    ldar: dict[str, Any]
    dla: dict[str, Any]
    subspace: dict[str, Any]
    saliency: dict[str, list[float]]
    stability: dict[str, Any]
    stride: int = 1

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_doc(self) -> dict[str, Any]:
        """The document as a plain dict (field order)."""
        return dict(self)


def run_information_flow(mm: MLLM, model_name: str, test_samples: Sequence[Sample], failed_samples: Sequence[Sample],
                         system_samples: Sequence[Sample], instruction_last_samples: Sequence[Sample], k: int = 1,
                         batch_size: int = 64, seed: int = 0, n_boot: int = 1000,
                         fractions: Sequence[float] = FRACTIONS, saliency_batch_size: int | None = None,
                         progress: bool = True, method: str = "prefix", batch_conditions: bool = False,
                         stride: int = 1) -> FlowDocument:
    """Every analysis of notebook 02; returns the document and writes the per-sample sweeps to
    ``results/<model>/02_knockout_per_sample{,_system,_instruction_last}.npz``.

    ``failed_samples``: failures from outside the test split (e.g. ``find_failures`` on the fail pool); the
    ``failed`` subset is every sample of the sweep that the model does not follow, test failures included.
    The main sweep cuts ``MAIN_EDGES``, the controls ``CONTROL_EDGES`` (``mfutils.model.edges``), with prefix
    reuse by default (``method``, ``batch_conditions``: see ``knockout_sweep``). Each analysis encodes its
    samples in its own consecutive batches (see the report of the flow refactor: a shared, length-sorted
    ``Prepared`` would change the batches and so the last bits of the numbers).

    Example::

        doc = run_information_flow(mm, "tiny", test, failed, system, inst_last, k=1)
        write_results(doc, "tiny", RESULTS_NAME)
    """
    main_samples = list(test_samples) + list(failed_samples)
    tags = ["test"] * len(test_samples) + ["fail_pool"] * len(failed_samples)
    main = knockout_sweep(mm, main_samples, MAIN_EDGES, k, batch_size=batch_size, progress=progress, tags=tags,
                          method=method, batch_conditions=batch_conditions, stride=stride)
    write_arrays(main.to_arrays(), model_name, "02_knockout_per_sample")
    masks = subset_masks(main, arbitration_failures(mm, main_samples, main.follows, batch_size=batch_size))
    knock = {e: {s: main.summary(e, masks[s], n_boot=n_boot, seed=seed) for s in SUBSETS} for e in MAIN_EDGES}
    controls: dict[str, Any] = {}
    for split, samples in (("system", system_samples), ("instruction_last", instruction_last_samples)):
        sweep = knockout_sweep(mm, list(samples), CONTROL_EDGES[split], k, batch_size=batch_size,
                               progress=progress, tags=[split] * len(samples), method=method,
                               batch_conditions=batch_conditions, stride=stride)
        write_arrays(sweep.to_arrays(), model_name, f"02_knockout_per_sample_{split}")
        controls[split] = {e: {"all": sweep.summary(e, n_boot=n_boot, seed=seed)} for e in CONTROL_EDGES[split]}
    test = list(test_samples)
    lda = ldar(mm, test, batch_size=batch_size, progress=progress, seed=seed)
    dres = dla(mm, test, batch_size=batch_size, progress=progress).summary(n_boot=n_boot, seed=seed)
    sal = saliency(mm, test, batch_size=saliency_batch_size or max(1, batch_size // 4), progress=progress)
    return FlowDocument(
        model=model_name, n_layers=mm.n_layers, window=k, stride=stride,
        n={"test": len(test_samples), "failed": int(masks["failed"].sum()), "system": len(system_samples),
           "instruction_last": len(instruction_last_samples),
           "failed_test": int((masks["failed"] & (main.tags == "test")).sum()),
           "failed_fail_pool": int((masks["failed"] & (main.tags == "fail_pool")).sum()),
           "failed_arbitration": int(masks["failed_arbitration"].sum()),
           "failed_perception": int(masks["failed_perception"].sum())},
        knockout=knock,
        controls=controls,
        ldar={r: lda[r] for r in READS},
        dla=dres["dla"],
        subspace=dres["subspace"],
        saliency={p: v.tolist() for p, v in sal.items()},
        stability=stability(main, fractions, seed=seed, mask=masks["all"]),
    )
