"""Where the instruction stands: the four positions of the world, their splits, twins, token groups at every
position under left padding, the statistics and the rules that read notebook 08 (C14, C10 and C8 under A8)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from mfutils.data.world import (CATEGORIES, POSITION_KINDS, POSITIONS, SEGMENT_ORDERS, SPLITS, make_sample, make_split,
                                position_split, twin)
from mfutils.measure.stats import diff_of_means, newcombe, wilson
from mfutils.model.groups import encode
from mfutils.model.loading import MLLM, RANDOM_ARCHS, random_model
from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED
from mfutils.present.rules_control import c8_amended
from mfutils.present.rules_position import c10_position, c14

from test_groups import check_groups

TH = {"effect": 0.05, "min_failed": 20, "position_min_failed": 40, "p_value": 0.05, "recovery_full": 0.40,
      "recovery_partly": 0.10}
EXPECTED = {
    "first": ("instruction", "image", "context", "question", "constraint"),
    "after_image": ("image", "instruction", "context", "question", "constraint"),
    "standard": ("image", "context", "instruction", "question", "constraint"),
    "last": ("image", "context", "question", "constraint", "instruction"),
}


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("category", CATEGORIES)
def test_positions_render_the_segment_order(position: str, category: str) -> None:
    for i in range(6):
        s = make_sample(77, i, category, variant=POSITIONS[position])
        names = tuple(n for n, _ in s.prompt.segments)
        want = tuple(n for n in EXPECTED[position] if n in names)
        assert names == want, f"{category} at {position}: {names}"
        # the same stream position at another position holds the same segments' text, only reordered
        std = make_sample(77, i, category, variant="standard")
        assert dict(s.prompt.segments) == dict(std.prompt.segments)
        assert np.array_equal(s.prompt.image, std.prompt.image) and s.answer == std.answer
        if category in ("image_only", "text_only", "no_instruction"):
            assert "instruction" not in names


def test_segment_orders_cover_every_variant() -> None:
    assert set(POSITIONS.values()) <= set(SEGMENT_ORDERS)
    for order in SEGMENT_ORDERS.values():
        assert sorted(order) == sorted(("system", "image", "context", "instruction", "question", "constraint"))


def test_position_split_names() -> None:
    assert position_split("pool", "first") == "pool_first"
    with pytest.raises(ValueError, match="unknown instruction position 'middle'"):
        position_split("pool", "middle")
    with pytest.raises(ValueError, match="unknown position split kind"):
        position_split("train", "first")
    for kind in POSITION_KINDS:
        for pos, variant in POSITIONS.items():
            spec = SPLITS[f"{kind}_{pos}"]
            assert spec["variant"] == variant and spec["categories"] == ("follow_image", "follow_text")


def _content(sample) -> str:       # type: ignore[no-untyped-def]
    h = hashlib.sha256(np.ascontiguousarray(sample.prompt.image).tobytes())
    return h.hexdigest()


def test_splits_are_disjoint_by_content() -> None:
    """No image (each carries its own noise) occurs in two splits, nor in the first training samples."""
    seen: dict[str, str] = {}
    for name in SPLITS:
        for s in make_split(name, 24):
            key = _content(s)
            assert key not in seen or seen[key] == name, f"a sample of {name} equals one of {seen[key]}"
            seen[key] = name
    seeds = [spec["seed"] for spec in SPLITS.values()]
    assert len(set(seeds)) == len(seeds) and 0 not in seeds, "every split has its own seed, none the training seed"


def test_twin_flips_only_the_instruction() -> None:
    for pos in POSITIONS:
        for s in make_split(f"pool_{pos}", 8):
            t = twin(s)
            assert t.category != s.category and {t.category, s.category} == {"follow_image", "follow_text"}
            assert t.variant == s.variant and t.template == s.template and t.attribute == s.attribute
            assert np.array_equal(t.prompt.image, s.prompt.image)
            differ = [n for (n, a), (_, b) in zip(s.prompt.segments, t.prompt.segments) if a != b]
            assert differ == ["instruction"]
            assert (t.answer, t.other_answer) == (s.other_answer, s.answer)
            assert twin(t).prompt.segments == s.prompt.segments
    with pytest.raises(ValueError, match="only follow_image and follow_text"):
        twin(make_sample(1, 0, "image_only"))


@pytest.fixture(scope="module", params=RANDOM_ARCHS)
def world_arch(request: pytest.FixtureRequest) -> MLLM:
    """A random model of each architecture that reads the world's vocabulary (2 layers)."""
    return random_model(request.param, n_layers=2, seed=0)


def test_groups_at_every_position_left_padded(world_arch: MLLM) -> None:
    """Every segment's tokens decode to its text, at every position, in one left-padded batch of mixed lengths."""
    mm_arch = world_arch
    prompts = [make_sample(91, i, "follow_image" if i % 2 else "follow_text", variant=v).prompt
               for i, v in enumerate(POSITIONS.values())]
    prompts.append(make_sample(92, 0, "image_only", variant="instruction_first").prompt)
    enc = encode(mm_arch, prompts)
    assert enc.groups.pad.any(-1).any(), "the batch must be left-padded"
    check_groups(mm_arch, prompts, enc)
    g = enc.groups
    for b, prompt in enumerate(prompts):
        order = [n for n, _ in prompt.segments]
        starts = {n: int(g[n][b].long().argmax()) for n in order}
        assert sorted(order, key=starts.__getitem__) == order, f"groups out of prompt order at sample {b}: {starts}"


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17: 873-890, table II, example (a): 56/70 vs 48/80, method 10
    r = newcombe(56, 70, 48, 80)
    assert r["diff"] == pytest.approx(0.2)
    assert (round(r["lo"], 4), round(r["hi"], 4)) == (0.0524, 0.3339)
    assert math.isnan(newcombe(1, 0, 1, 2)["diff"])


def test_diff_of_means() -> None:
    a, b = np.arange(50, dtype=float), np.arange(50, dtype=float) + 10
    r = diff_of_means(a, b, n_boot=500, seed=1)
    assert r["value"] == pytest.approx(-10.0) and r["lo"] < -10 < r["hi"] < 0
    assert r["n1"] == r["n2"] == 50
    assert math.isnan(diff_of_means([], [1.0])["value"])


# ---------------------------------------------------------------------------------------------------------------
# the rules on constructed documents
# ---------------------------------------------------------------------------------------------------------------
def _prop(k: int, n: int) -> dict[str, float]:
    lo, hi = wilson(k, n)
    return {"rate": k / n, "lo": lo, "hi": hi, "k": k, "n": n}


def _mean(m: float, lo: float, hi: float) -> dict[str, float]:
    return {"mean": m, "lo": lo, "hi": hi, "n": 200}


def _diff(v: float, lo: float, hi: float) -> dict[str, float]:
    return {"value": v, "lo": lo, "hi": hi, "n1": 200, "n2": 200}


def doc08(k_first: int, s_diff: tuple[float, float, float], direct_diff: tuple[float, float, float]) -> dict:
    beh = {"first": {"follow_image": _prop(k_first, 500)}, "standard": {"follow_image": _prop(495, 500)}}
    eff = {p: {"S": _mean(8.0, 7.0, 9.0), "S_direct": _mean(6.0, 5.0, 7.0), "B": _mean(0.0, -1.0, 1.0)}
           for p in ("first", "standard")}
    return {"applicable": True, "behaviour": {"positions": beh},
            "c14_a": {"first": newcombe(k_first, 500, 495, 500)},
            "effect": {"per_position": eff, "compare": {"first": {"S": _diff(*s_diff), "S_direct": _diff(*direct_diff),
                                                                  "B": _diff(0.0, -1.0, 1.0)}}}}


@pytest.mark.parametrize("k_first, s_diff, direct_diff, want", [
    (360, (-3.0, -4.0, -2.0), (-2.0, -3.0, -1.0), REPRODUCED),      # followed less, weaker effect, read less
    (360, (-3.0, -4.0, -2.0), (0.1, -0.5, 0.7), PARTLY),            # the answer position reads it as much
    (360, (0.1, -0.8, 1.0), (0.0, -0.5, 0.5), NOT),                 # a baseline shift, not a weaker instruction
    (494, (-3.0, -4.0, -2.0), (-2.0, -3.0, -1.0), NOT),             # not followed less: nothing to carry
])
def test_c14_rule(k_first: int, s_diff: tuple, direct_diff: tuple, want: str) -> None:
    v, text = c14({"08": doc08(k_first, s_diff, direct_diff)}, TH)
    assert v == want, text
    assert "Newcombe" in text and "n=500" in text


def test_c14_not_applicable_without_positions() -> None:
    v, text = c14({"08": {"applicable": False, "why": "dataset 'mc2' has no instruction positions"}}, TH)
    assert v == NA and "mc2" in text


def _curve(values: list[float], n: int, starts: list[int]) -> dict:
    return {"n": n, "start": starts, "ratio_of_means": {"value": values, "lo": [v - 0.1 for v in values],
                                                         "hi": [v + 0.1 for v in values]}}


def failure_doc(n_arb: int, failed_deep: float, present: bool = False) -> dict:
    starts = [0, 5, 10, 15, 20, 25]
    succ = _curve([0.0, 0.0, -0.3, -0.6, -0.2, 0.0], 200, starts)
    fail = _curve([0.0, 0.0, -0.1, failed_deep, -0.05, 0.0], 100, starts)
    flat = _curve([0.0] * 6, 200, starts)
    edges = {"instruction->last": {"succeeded": succ, "failed": fail, "failed_arbitration": fail}}
    for e in ("image->instruction", "context->instruction"):
        edges[e] = {"succeeded": flat, "failed": _curve([0.0] * 6, 100, starts), "failed_arbitration": flat}
    return {"n_layers": 30, "fail_split": "pool_first",
            "failure": {"pool": "pool_first", "position": "first", "present": {
                "instruction->last": True, "image->instruction": present, "context->instruction": present},
                "n": {"failed": 100, "succeeded": 200, "failed_arbitration": n_arb}, "edges": edges}}


def test_c10_within_a_position_pool() -> None:
    v, text = c10_position(failure_doc(80, -0.1), TH)            # failed read the instruction less: deep clause holds
    assert v == PARTLY and "not testable" in text, text          # never reproduced on one clause
    v, _ = c10_position(failure_doc(80, -0.6), TH)               # failed read it as much
    assert v == NOT
    v, text = c10_position(failure_doc(39, -0.1), TH)            # too few arbitration failures (A8: 40)
    assert v == NA and "at least 40" in text
    v, text = c10_position(failure_doc(80, -0.1, present=True), TH)   # shallow edges exist but show no transfer
    assert v == PARTLY and "not testable" not in text


def _doc05(n_arb: int, pool: str) -> dict:
    rec = _prop(40, 70)
    null = {"mean": 0.05, "lo": 0.04, "hi": 0.06, "sd": 0.02, "p95": 0.09, "n": 200}
    p = {"p": 0.005, "count": 0, "n": 200, "resolution": 0.005}
    return {"pool": pool, "held_out": {
        "n_evaluation": 70, "n_selection": 70, "alpha": 4.0, "recovery": rec,
        "random": {"n_sets": 200, "null": null, "empirical_p": p},
        "arbitration": {"n": n_arb, "recovery": _prop(30, max(n_arb, 1))}, "damage": _prop(2, 200)}}


def test_c8_reads_arbitration_failures_of_a_position_pool() -> None:
    assert c8_amended({"05": _doc05(60, "pool_first")}, TH)[0] == REPRODUCED
    v, text = c8_amended({"05": _doc05(39, "pool_first")}, TH)
    assert v == NA and "A8" in text
    assert c8_amended({"05": _doc05(39, "fail_pool")}, TH)[0] == REPRODUCED    # the standard pool: A2 as before


def test_behaviour_counts_arbitration_and_perception(llava: MLLM) -> None:
    from mfutils.data.counterparts import counterparts
    from mfutils.measure.follow import follows
    from mfutils.study.positions import behaviour

    pool = make_split("pool_first", 24)
    doc, flags = behaviour(llava, {"first": pool}, batch_size=8)
    e = doc["positions"]["first"]
    ok = follows(llava, pool).numpy()
    assert np.array_equal(flags["first"], ok)
    failed = np.flatnonzero(~ok)
    pairs = [counterparts(pool[i]) for i in failed]
    knows = (follows(llava, [p[0] for p in pairs]).numpy() & follows(llava, [p[1] for p in pairs]).numpy()
             if len(pairs) else np.zeros(0, dtype=bool))
    assert e["failures"]["n"] == len(failed) == e["failures"]["arbitration"] + e["failures"]["perception"]
    assert e["failures"]["arbitration"] == int(knows.sum())
    assert np.array_equal(flags["first:arbitration"][failed], knows)
    for c in ("follow_image", "follow_text"):
        assert e[c]["n"] == 12 and e[c]["k"] == int(ok[[i for i, s in enumerate(pool) if s.category == c]].sum())
