"""The one "does it follow?" path (mfutils.measure.follow) and its prepared batches, against direct computations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mfutils.data.sample import Sample
from mfutils.data.world import make_split
from mfutils.measure import follow
from mfutils.measure.answers import answer_logits, targets_for
from mfutils.measure.follow import FlagCache, follows
from mfutils.measure.margins import instructed_wins
from mfutils.measure.prefix import PREFIX_REUSE, merge_status
from mfutils.measure.prepared import NOT_RUN, n_batches, prepare, samples_of
from mfutils.model.edges import parse_edge
from mfutils.model.groups import edge_cut, encode
from mfutils.model.hooks import active_hooks, knockout, scale_heads
from mfutils.model.loading import MLLM


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_split("test", 6)


def direct(mm: MLLM, samples: list[Sample], heads: dict | None = None, edge: str | None = None,
           layers: range = range(0)) -> torch.Tensor:
    """Flags from one batched forward of ``samples`` in input order, with the hooks applied by hand."""
    enc = encode(mm, [s.prompt for s in samples])
    with torch.no_grad(), scale_heads(mm, heads or {}):
        if edge is None:
            logits = answer_logits(mm, enc)
        else:
            with knockout(mm, edge_cut(enc.groups, *parse_edge(edge))[0], layers):
                logits = answer_logits(mm, enc)
    return instructed_wins(logits, targets_for(mm, samples))


def test_follows_equals_direct_computation_with_heads_and_knockout(llava: MLLM, samples: list[Sample]) -> None:
    assert torch.equal(follows(llava, samples), direct(llava, samples))
    for edge in ("image->last", "instruction->last"):
        got = follows(llava, samples, heads=[(1, 2)], alpha=3.0, knockout=(edge, range(1, 3)), batch_size=len(samples))
        assert torch.equal(got, direct(llava, samples, {(1, 2): 3.0}, edge, range(1, 3)))
    data = prepare(llava, samples, 2)                  # sorted batches give the same flags in input order
    assert torch.equal(follows(llava, data, knockout=("image->last", range(4))),
                       direct(llava, samples, edge="image->last", layers=range(4)))
    with pytest.raises(ValueError, match="out of range"):
        follows(llava, samples, knockout=("image->last", [9]))
    with pytest.raises(ValueError, match="src->dst"):
        follows(llava, samples, knockout=("image-last", [0]))
    assert active_hooks(llava) == 0


def test_follows_survives_out_of_memory(llava: MLLM, samples: list[Sample], small_memory: Any) -> None:
    expected = follows(llava, samples, batch_size=6)
    small_memory(follow)
    with pytest.warns(RuntimeWarning, match="out of memory at batch size 6; retrying at 3"):
        assert torch.equal(follows(llava, samples, batch_size=6), expected)


def test_prepared_batches_and_fast_path_status(llava: MLLM, samples: list[Sample],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare(llava, samples, 4)
    assert prepare(llava, data) is data and samples_of(data) == samples and len(data) == 6
    assert n_batches(data, 1) == 2 == n_batches(samples, 4) and sorted(i for b in data.batches for i in b.index) == list(range(6))
    assert data.fast_path == NOT_RUN
    cache = FlagCache(llava, data, "last")
    cache.fill([((), 1.0), ([(2, 1)], 0.0)], "", progress=False)
    assert cache.fast_path == data.fast_path == PREFIX_REUSE
    monkeypatch.setattr(follow, "checked_trace", lambda mm, enc, rows_from_last: (None, "full forwards (test)"))
    fallback = FlagCache(llava, data, "last")
    assert torch.equal(fallback([(2, 1)]), cache([(2, 1)]))
    assert fallback.fast_path == data.fast_path == "full forwards (test)"
    assert merge_status(NOT_RUN, PREFIX_REUSE) == PREFIX_REUSE
    assert merge_status("full forwards (x)", PREFIX_REUSE) == "full forwards (x)"
    assert merge_status(PREFIX_REUSE, "full forwards (y)") == "full forwards (y)"
