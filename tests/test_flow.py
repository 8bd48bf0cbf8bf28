"""Information flow (mfutils.study.knockout, lens, dla, saliency, stability, information_flow): the sweep equals
direct knockouts, no-ops are exact, identities hold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mfutils.study.knockout as sweep_module
from mfutils.model.edges import CONTROL_EDGES, MAIN_EDGES, SALIENCY_PAIRS, parse_edge
from mfutils.study.dla import dla
from mfutils.study.information_flow import SUBSETS, find_failures, run_information_flow
from mfutils.study.knockout import SweepResult, knockout_sweep, windows
from mfutils.study.lens import direction_rows, lens_diff, ldar
from mfutils.study.results import write_results
from mfutils.study.saliency import saliency
from mfutils.study.stability import stability
from mfutils.model.groups import edge_block, encode
from mfutils.model.hooks import knockout, logit_lens, residual_stream
from mfutils.measure.answers import targets_for
from mfutils.measure.margins import margins
from mfutils.model.loading import MLLM, random_model
from mfutils.data.sample import Sample
from mfutils.data.world import make_split


@pytest.fixture(scope="module")
def mm() -> MLLM:
    return random_model("llava", n_layers=4, seed=0)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    """Standard prompts of both instructions, plus two with a system sentence (different lengths: padding)."""
    return make_split("test", 6) + make_split("test_system", 2)


@pytest.fixture(scope="module")
def sweep(mm: MLLM, samples: list[Sample]) -> SweepResult:
    edges = ["image->last", "context->instruction", "image+context->system", "instruction->image"]
    return knockout_sweep(mm, samples, edges, k=2, batch_size=5, progress=False)


def test_windows_cover_all_layers() -> None:
    for L in range(1, 9):
        for k in range(1, L + 1):
            wins = windows(L, k)
            assert len(wins) == L - k + 1
            assert all(b - a == k for a, b in wins)
            assert sorted({l for a, b in wins for l in range(a, b)}) == list(range(L))
    with pytest.raises(ValueError, match="window size"):
        windows(4, 5)


def test_edges_are_well_formed() -> None:
    for name in (*MAIN_EDGES, *SALIENCY_PAIRS, *[e for es in CONTROL_EDGES.values() for e in es]):
        src, dst = parse_edge(name)
        assert src and dst and not set(src) & set(dst)
    assert parse_edge("question+constraint->last") == (("question", "constraint"), ("last",))


@torch.no_grad()
def test_sweep_equals_direct_knockout(mm: MLLM, samples: list[Sample], sweep: SweepResult) -> None:
    enc = encode(mm, [s.prompt for s in samples])
    t = targets_for(mm, samples)
    base = margins(mm.model(**enc.inputs, logits_to_keep=1).logits[:, -1], t).numpy()
    np.testing.assert_allclose(sweep.base, base, atol=1e-5)
    for edge, w in (("image->last", 0), ("context->instruction", 1), ("context->instruction", 2)):
        start, stop = sweep.windows[w]
        with knockout(mm, edge_block(enc.groups, *parse_edge(edge)), range(start, stop)):
            direct = margins(mm.model(**enc.inputs, logits_to_keep=1).logits[:, -1], t).numpy()
        got = sweep.knocked[sweep.edges.index(edge), w]
        np.testing.assert_allclose(got, direct, atol=1e-5)
        assert np.abs(got - base).max() > 1e-4                    # the knockout does something


def test_zero_effect_and_missing_groups(mm: MLLM, samples: list[Sample], sweep: SweepResult) -> None:
    x = sweep.inssd()
    # the source comes after the destination: causal attention has no such edge -> exactly unchanged
    e = sweep.edges.index("instruction->image")
    assert np.array_equal(sweep.knocked[e], np.broadcast_to(sweep.base, sweep.knocked[e].shape))
    assert (x[e] == 0).all() and (sweep.flips()[e] == 0).all()
    assert sweep.summary("instruction->image")["inssd"] == [0.0] * len(sweep.windows)
    # "-> system": the system sentence precedes image and context (a structural 0), and is absent from
    # standard prompts (NaN there, excluded from means)
    e = sweep.edges.index("image+context->system")
    has_system = np.array([s.variant == "system" for s in samples])
    assert np.isnan(x[e][:, ~has_system]).all() and (x[e][:, has_system] == 0).all()
    assert sweep.summary("image+context->system")["n"] == int(has_system.sum())
    assert sweep.summary("image+context->system", ~has_system) == {
        "start": [], "inssd": [], "lo": [], "hi": [], "flip": [], "n": 0}
    # an empty edge set
    empty = knockout_sweep(mm, samples[:3], [], k=1, progress=False)
    assert empty.knocked.shape == (0, mm.n_layers, 3) and empty.inssd().size == 0


def test_sweep_summary_and_roundtrip(sweep: SweepResult, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = sweep.summary("image->last", n_boot=200)
    assert s["start"] == [0, 1, 2] and s["n"] == len(sweep)
    for lo, m, hi, f in zip(s["lo"], s["inssd"], s["hi"], s["flip"]):
        assert lo <= m <= hi and 0 <= f <= 1
    back = SweepResult.load(sweep.save(tmp_path / "sweep.npz"))
    assert back.edges == sweep.edges and back.windows == sweep.windows
    np.testing.assert_array_equal(back.knocked, sweep.knocked)
    np.testing.assert_array_equal(back.categories, sweep.categories)
    assert back.summary("image->last", n_boot=200) == s


def test_dla_decomposition_identity(mm: MLLM, samples: list[Sample]) -> None:
    r = dla(mm, samples, batch_size=5, progress=False)
    n, L = len(samples), mm.n_layers
    assert r.attn.shape == r.mlp.shape == r.before.shape == r.after.shape == (n, L)
    np.testing.assert_allclose(r.embed + r.attn.sum(1) + r.mlp.sum(1), r.total, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(r.total, r.logit_diff, atol=1e-4, rtol=1e-4)   # no unembedding bias
    # the "after" of a layer plus its MLP's write is the next layer's "before" (projections are linear)
    t = targets_for(mm, samples)
    u = mm.unembed.weight[[p[0] for p in t.pos]] - mm.unembed.weight[[q[0] for q in t.neg]]
    enc = encode(mm, [s.prompt for s in samples])
    resid = residual_stream(mm, enc)[:, :, -1]                              # [L+1, B, D]
    proj = ((resid * u).sum(-1) / u.norm(dim=-1)).T.detach().numpy()        # [B, L+1]
    np.testing.assert_allclose(r.before, proj[:, :L], atol=1e-4)
    summ = r.summary(n_boot=100)
    assert summ["dla"]["attn"]["follow_image"]["n"] + summ["dla"]["attn"]["follow_text"]["n"] == n
    assert len(summ["subspace"]["follow_text"]["after"]) == L


def test_ldar(mm: MLLM, samples: list[Sample]) -> None:
    r = ldar(mm, samples, batch_size=5, progress=False)
    for read in ("anchor_last", "anchor_mean", "last"):
        rate = np.array(r[read]["rate"])
        assert rate.shape == (mm.n_layers + 1,) and ((rate >= 0) & (rate <= 1)).all()
        assert r[read]["n"] == len(samples)
        assert all(lo <= x <= hi for lo, x, hi in zip(r[read]["lo"], rate, r[read]["hi"]))
    assert r["last"]["rate"][-1] == 1.0          # the lens of the final residual is the model's decision
    # the anchor rows are instruction tokens: the shortcut lens equals hooks.logit_lens there
    enc = encode(mm, [s.prompt for s in samples])
    g = enc.groups
    resid = residual_stream(mm, enc)
    from mfutils.measure.answers import candidate_ids

    img = [candidate_ids(mm, [s.image_answer])[0] for s in samples]
    txt = [candidate_ids(mm, [s.text_answer])[0] for s in samples]
    d, b = direction_rows(mm, img, txt)
    diff = lens_diff(mm, resid[2], d, b)
    full = logit_lens(mm, resid[2])
    rows = torch.arange(len(samples))
    ref = full[rows, :, img] - full[rows, :, txt]
    assert torch.allclose(diff, ref, atol=1e-4)
    anchor_last = g["instruction"].long().cumsum(-1).argmax(-1)
    assert g["instruction"][rows, anchor_last].all() and not g["instruction"][rows, anchor_last + 1].any()
    no_instruction = [s for s in make_split("capability", 3) if s.category == "image_only"]
    assert ldar(mm, no_instruction, progress=False)["last"]["n"] == 0   # conflict samples only


def test_stability(sweep: SweepResult) -> None:
    st = stability(sweep, fractions=(0.5, 1.0), seed=0)
    assert st["fractions"] == [0.5, 1.0]
    assert st["corr"]["image->last"][1] == pytest.approx(1.0, abs=1e-12)
    assert -1 <= st["corr"]["image->last"][0] <= 1
    assert all(math.isnan(c) for c in st["corr"]["instruction->image"])     # a flat (all-zero) curve


def test_saliency(mm: MLLM, samples: list[Sample]) -> None:
    assert mm.attn_implementation == "sdpa"
    sal = saliency(mm, samples[:4], batch_size=2, progress=False)
    assert mm.attn_implementation == "sdpa"
    assert set(sal) == set(SALIENCY_PAIRS)
    for v in sal.values():
        assert v.shape == (mm.n_layers,) and np.isfinite(v).all() and (v >= 0).all()
    assert sal["instruction->last"].sum() > 0
    per_head = saliency(mm, samples[:4], batch_size=4, progress=False, abs_per_head=True)
    for p in sal:   # |sum over heads| <= sum of |per head|
        assert (sal[p] <= per_head[p] + 1e-9).all()
    mm.set_attn_implementation("eager")
    try:
        saliency(mm, samples[:1], batch_size=1, progress=False)
        assert mm.attn_implementation == "eager"
    finally:
        mm.set_attn_implementation("sdpa")


def test_run_information_flow_document(mm: MLLM, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    test = make_split("test", 4)
    failed = find_failures(mm, make_split("fail_pool", 6), cap=2)
    doc = run_information_flow(mm, "random:llava", test, failed, make_split("test_system", 2),
                               make_split("test_instruction_last", 2), k=2, batch_size=4, n_boot=50,
                               progress=False)
    path = write_results(doc, "random:llava", "02_information_flow")
    back = json.loads(path.read_text())
    assert path == tmp_path / "results" / "random-llava" / "02_information_flow.json"
    assert (tmp_path / "results" / "random-llava" / "02_knockout_per_sample.npz").exists()
    assert set(back) >= {"model", "n_layers", "window", "n", "knockout", "controls", "ldar", "dla", "subspace",
                         "saliency", "stability"}
    assert set(back["knockout"]) == set(MAIN_EDGES)
    assert all(set(v) == set(SUBSETS) for v in back["knockout"].values())
    assert back["n"]["failed"] == back["knockout"]["image->last"]["failed"]["n"]
    assert set(back["controls"]["system"]) == set(CONTROL_EDGES["system"])
    assert len(back["ldar"]["anchor_mean"]["rate"]) == mm.n_layers + 1
    # the three estimators, the failures by source and kind, the LDAR baseline, the summed attributions
    n = back["n"]
    assert n["failed_test"] + n["failed_fail_pool"] == n["failed"] == n["failed_arbitration"] + n["failed_perception"]
    assert n["failed_fail_pool"] == len(failed)
    s = back["knockout"]["image->last"]["all"]
    assert len(s["ratio_of_means"]["value"]) == len(s["median"]["lo"]) == len(s["inssd"])
    assert s["strata"]["small"]["n"] + s["strata"]["large"]["n"] == s["n"]
    assert back["ldar"]["random"]["n"] == back["ldar"]["last"]["n"]
    assert set(back["dla"]["deep_sum"]) == {"layers", "attn", "mlp"}
    assert set(back["stability"]["ratio_of_means"]) == {"corr", "lo", "hi", "n_draws"}


# ------------------------------------------------------------------------------------------------
# Prefix reuse and condition batching equal the naive sweep on every architecture
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_prefix_sweep_equals_naive_sweep(arch: str, samples: list[Sample]) -> None:
    model = random_model(arch, n_layers=4, seed=0)
    edges = list(MAIN_EDGES) + ["image+context->system"]
    runs = {(m, b): knockout_sweep(model, samples, edges, k=k, batch_size=5, progress=False, method=m,
                                   batch_conditions=b)
            for k in (1,) for m, b in (("naive", False), ("prefix", False), ("prefix", True))}
    naive = runs[("naive", False)]
    for key, run in runs.items():
        np.testing.assert_array_equal(np.isnan(run.knocked), np.isnan(naive.knocked))
        assert np.nanmax(np.abs(run.knocked - naive.knocked)) <= 1e-4, key
        np.testing.assert_allclose(run.base, naive.base, atol=1e-5)
        np.testing.assert_array_equal(run.follows, naive.follows)
    assert np.nanmax(np.abs(naive.knocked - naive.base)) > 1e-3                        # knockouts act
    assert runs[("prefix", True)].info["forward_equivalents"] == pytest.approx(
        runs[("prefix", False)].info["forward_equivalents"])                           # same rows recomputed
    assert runs[("prefix", False)].info["forward_equivalents"] < naive.info["forward_equivalents"] / 2
    # 2 batches x (clean + every main edge x window); "image+context->system" never cuts an existing edge (the
    # system sentence precedes image and context), so no forward is spent on it
    assert naive.info["forward_equivalents"] == 2 * (1 + len(MAIN_EDGES) * model.n_layers)


def test_sweep_survives_out_of_memory(mm: MLLM, samples: list[Sample], sweep: SweepResult,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = sweep_module.prefix_trace

    def small_memory(model, enc, *args, **kwargs):  # type: ignore[no-untyped-def]
        if enc.groups.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, enc, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "prefix_trace", small_memory)
    with pytest.warns(RuntimeWarning, match="out of memory at batch size 5; retrying at 2"):
        again = knockout_sweep(mm, samples, sweep.edges, k=2, batch_size=5, progress=False)
    np.testing.assert_allclose(again.knocked, sweep.knocked, atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        knockout_sweep(mm, samples, sweep.edges, k=2, method="fast")


# ------------------------------------------------------------------------------------------------
# Baselines and intervals (amendments A3, A5): the random-token LDAR (A5), the summed deep attributions (C4),
# the failed samples by kind (C10)
# ------------------------------------------------------------------------------------------------
def test_ldar_random_token_baseline(mm: MLLM, samples: list[Sample]) -> None:
    from mfutils.study.lens import RANDOM_GROUPS

    r = ldar(mm, samples, batch_size=5, progress=False, seed=3)
    rnd = r["random"]
    assert rnd["n"] == len(samples) and len(rnd["rate"]) == mm.n_layers + 1
    assert all(lo <= x <= hi for lo, x, hi in zip(rnd["lo"], rnd["rate"], rnd["hi"]))
    assert rnd["groups"] == list(RANDOM_GROUPS) and "instruction" not in RANDOM_GROUPS
    assert sum(rnd["picked"].values()) == len(samples)
    # the draw is per sample, seeded, and does not depend on the batching; another seed draws other tokens
    again = ldar(mm, samples, batch_size=3, progress=False, seed=3)
    np.testing.assert_array_equal(again["agree"]["random"], r["agree"]["random"])
    assert again["random"]["picked"] == rnd["picked"]
    others = [ldar(mm, samples, batch_size=5, progress=False, seed=s)["random"]["picked"] for s in range(4, 8)]
    assert any(p != rnd["picked"] for p in others)
    # the reads at the anchor and the answer position are unchanged by the baseline
    np.testing.assert_array_equal(again["agree"]["last"], r["agree"]["last"])
    # the drawn token is never in the instruction, the answer position, the template or padding: with only the
    # image allowed, every sample draws an image token, and its agreement equals the lens read there directly
    import mfutils.study.lens as lens_module

    enc = encode(mm, [s.prompt for s in samples])
    g = enc.groups
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(lens_module, "RANDOM_GROUPS", ("image",))
        only = ldar(mm, samples, batch_size=8, progress=False, seed=3)
    finally:
        mp.undo()
    assert only["random"]["picked"] == {"image": len(samples)}
    from mfutils.measure.answers import candidate_ids

    img = [candidate_ids(mm, [s.image_answer])[0] for s in samples]
    txt = [candidate_ids(mm, [s.text_answer])[0] for s in samples]
    diff = lens_diff(mm, residual_stream(mm, enc), *direction_rows(mm, img, txt))          # [L+1, B, T]
    rows = torch.arange(len(samples))
    final = torch.sign(diff[-1, rows, g.last_index()])
    for b in range(len(samples)):
        where = g["image"][b].nonzero()[:, 0].numpy()
        pos = int(where[np.random.default_rng([3, b]).integers(where.size)])
        expect = (torch.sign(diff[:, b, pos]) == final[b]).numpy()
        np.testing.assert_array_equal(only["agree"]["random"][:, b], expect)


def test_dla_deep_sums_carry_intervals(mm: MLLM, samples: list[Sample]) -> None:
    r = dla(mm, samples, batch_size=5, progress=False)
    summ = r.summary(n_boot=100)["dla"]
    L = mm.n_layers
    assert summ["deep_sum"]["layers"] == [L // 2, L - 1]
    for part in ("attn", "mlp"):
        for split in ("follow_image", "follow_text"):
            s, per_layer = summ["deep_sum"][part][split], summ[part][split]
            assert s["n"] == per_layer["n"] and s["lo"] <= s["mean"] <= s["hi"]
            assert s["mean"] == pytest.approx(sum(per_layer["mean"][L // 2:]), abs=1e-6)


def test_failed_samples_by_kind(mm: MLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import mfutils.study.information_flow as flow_module
    from mfutils.study.information_flow import arbitration_failures, subset_masks

    pool = [s for s in make_split("fail_pool", 8) if s.other_answer is not None][:5]
    followed = np.array([True, False, False, False, True])
    # the counterparts: sample 1 knows both answers, 2 only the image's, 3 neither
    answers = {(s.index, "image_only"): ok for s, ok in zip(pool, [True, True, True, False, True])}
    answers.update({(s.index, "text_only"): ok for s, ok in zip(pool, [True, True, False, False, True])})
    seen: list[int] = []

    def fake_follows(model, data, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(data))
        return torch.tensor([answers[(s.index, s.category)] for s in data])

    monkeypatch.setattr(flow_module, "follows", fake_follows)
    arb = arbitration_failures(mm, pool, followed)
    assert arb.tolist() == [False, True, False, False, False] and seen == [3, 3]    # only failures are checked
    sweep = SweepResult(edges=["a->b"], windows=[(0, 1)], base=np.ones(5), knocked=np.ones((1, 1, 5)),
                        follows=followed, categories=np.array(["follow_image"] * 5),
                        tags=np.array(["test", "test", "fail_pool", "fail_pool", "test"]), n_layers=1)
    masks = subset_masks(sweep, arb)
    assert masks["failed_arbitration"].tolist() == [False, True, False, False, False]
    assert masks["failed_perception"].tolist() == [False, False, True, True, False]
    assert set(subset_masks(sweep)) == set(SUBSETS) - {"failed_arbitration", "failed_perception"}
    with pytest.raises(ValueError, match="arbitration"):
        subset_masks(sweep, np.zeros(3, dtype=bool))
    assert not arbitration_failures(mm, pool, np.ones(5, dtype=bool)).any() and seen == [3, 3]


def test_windows_with_a_stride_tile_the_depth() -> None:
    from mfutils.study.knockout import default_window, windows

    assert windows(30, 5, stride=5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30)]
    assert windows(8, 3, stride=3) == [(0, 3), (3, 6)]                  # a partial last tile is dropped
    assert windows(8, 1, stride=1) == windows(8, 1) == [(i, i + 1) for i in range(8)]
    assert (default_window(8), default_window(30), default_window(32), default_window(4)) == (1, 5, 5, 1)
    with pytest.raises(ValueError, match="stride"):
        windows(8, 2, stride=0)


def test_a_strided_sweep_is_the_sliding_sweep_at_those_windows(mm: MLLM) -> None:
    from mfutils.data.world import make_split
    from mfutils.study.knockout import knockout_sweep

    samples = make_split("test", 6)
    sliding = knockout_sweep(mm, samples, ["instruction->last", "image->instruction"], 2, progress=False)
    strided = knockout_sweep(mm, samples, ["instruction->last", "image->instruction"], 2, progress=False, stride=2)
    assert strided.windows == sliding.windows[::2]
    assert np.allclose(strided.knocked, sliding.knocked[:, ::2], atol=1e-6, equal_nan=True)
