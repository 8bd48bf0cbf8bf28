"""The MC2 loader on the shared evaluation file, with generated stand-in COCO images; candidate-list scoring
against a direct computation; the A/B form; malformed records (hypothesis); the split manifest."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mfutils.data import mc2
from mfutils.model.groups import encode
from mfutils.measure.answers import answer_logits, targets_for, targets_from_candidates
from mfutils.measure.margins import instructed_wins as follows, margins
from mfutils.model.loading import random_model
from mfutils.study import mc2_eval

def _shared_file() -> Path:
    """The MC2 file: $MF_MC2_JSON, else shared/mc2/ beside the checkout or inside it (git-ignored)."""
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["MF_MC2_JSON"])] if os.environ.get("MF_MC2_JSON") else []
    candidates += [root.parent / "shared" / "mc2" / "evaluate_final.json", root / "shared" / "mc2" / "evaluate_final.json"]
    return next((c for c in candidates if c.exists()), candidates[0])


SHARED = _shared_file()
needs_file = pytest.mark.skipif(not SHARED.exists(), reason=f"the MC2 file is not at {SHARED} (it is never "
                                "committed: no licence); put evaluate_final.json there or set MF_MC2_JSON")


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    if not SHARED.exists():
        pytest.skip(f"the MC2 file is not at {SHARED}")
    return mc2.load_records(SHARED)


def _write_images(root: Path, records: list[dict[str, str]], skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    names = ("COCO_train2014_{}.jpg", "COCO_val2014_{}.jpg", "{}.jpg")
    for i, r in enumerate(records):
        if i in skip:
            continue
        arr = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / names[i % 3].format(r["image_id"]), quality=70)


@needs_file
def test_loader_reads_all_2000_records(records: list[dict[str, str]]) -> None:
    assert len(records) == 2000
    tasks = {r["task"] for r in records}
    assert len(tasks) == 8 and all(sum(r["task"] == t for r in records) == 250 for t in tasks)
    assert all(len(r["image_id"]) == 12 and r["image_id"].isdigit() for r in records)
    assert all(r == {k: v.strip() for k, v in r.items()} for r in records)


@needs_file
def test_images_found_under_every_naming(records: list[dict[str, str]], tmp_path: Path) -> None:
    sub = records[:30]
    _write_images(tmp_path, sub)
    paths = mc2.find_images(sub, tmp_path)
    assert [p.name.split("_")[-1].removesuffix(".jpg") for p in paths] == [r["image_id"] for r in sub]
    forms = ("COCO_train2014_{}.jpg", "COCO_val2014_{}.jpg", "{}.jpg")
    assert [p.name for p in paths] == [forms[i % 3].format(r["image_id"]) for i, r in enumerate(sub)]


@needs_file
def test_missing_images_error_lists_first_ten_and_the_count(records: list[dict[str, str]], tmp_path: Path) -> None:
    sub = records[:40]
    missing = set(range(5, 30))                     # 25 missing
    _write_images(tmp_path, sub, skip=missing)
    with pytest.raises(mc2.MissingImagesError) as err:
        mc2.find_images(sub, tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"25 of 40 MC2 images are missing under {tmp_path}")
    listed = [sub[i]["image_id"] for i in sorted(missing)]
    assert all(iid in msg for iid in listed[:10]) and not any(iid in msg for iid in listed[10:])
    assert "COCO_val2014_<id>.jpg" in msg


@needs_file
def test_samples_follow_the_mc2_prompt_order(records: list[dict[str, str]]) -> None:
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    s_img, s_txt = mc2.record_samples(records[:1], [img])
    r = records[0]
    assert [n for n, _ in s_img.prompt.segments] == ["image", "context", "instruction", "question", "constraint"]
    assert s_img.prompt.text("instruction") == mc2.FOLLOW_IMAGE and s_txt.prompt.text("instruction") == mc2.FOLLOW_TEXT
    assert (s_img.answer, s_img.other_answer, s_txt.answer) == (r["answer_vision"], r["answer_text"], r["answer_text"])
    assert s_img.answer_img_candidate_list == mc2.candidate_list(r["answer_vision"])
    mc = mc2.record_samples(records[:1], [img], form="mc")
    assert len(mc) == 4 and {s.meta["order"] for s in mc} == {"AB", "BA"}
    for s in mc:
        a = "A" if (s.meta["order"] == "AB") == (s.instructed == "image") else "B"
        assert s.answer == a and s.prompt.text("question").endswith(
            f"A. {r['answer_vision']} B. {r['answer_text']}" if s.meta["order"] == "AB" else f"A. {r['answer_text']} B. {r['answer_vision']}")


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl", "internvl"])
def test_candidate_scoring_equals_a_direct_softmax(arch: str) -> None:
    """P+ and P- sum the first-token probabilities of each side's (deduplicated) candidates."""
    words = "the red blue green star circle a is what color ? . answer one word if follow image text".split()
    mm = random_model(arch, words=words, n_layers=2)
    recs = [{"image_id": "1", "task": "color", "question": "what color ?", "answer_vision": "red",
             "answer_text": "blue", "context": "the star is blue ."},
            {"image_id": "2", "task": "color", "question": "what color ?", "answer_vision": "green",
             "answer_text": "red", "context": "a red circle ."}]
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in recs]
    samples = mc2.record_samples(recs, imgs)
    # record 0: the image side has two candidates, one ("blue") shared with the text side, so it counts for
    # neither; "Red" (capitalised) is an unknown word here and is left out
    lists = [(("red", "star", "blue", "Red"), ("blue", "green")), (("red", "star", "blue"), ("blue", "green")),
             (("green",), ("red",)), (("green",), ("red",))]
    samples = [replace(s, answer_img_candidate_list=i, answer_text_candidate_list=x) for s, (i, x) in zip(samples, lists)]
    t = targets_for(mm, samples)
    with torch.no_grad():
        logits = answer_logits(mm, encode(mm, [s.prompt for s in samples])).float()
    p = torch.softmax(logits, -1)
    tid = mm.tokenizer.convert_tokens_to_ids
    expected_sides = [(["red", "star"], ["green"]), (["green"], ["red", "star"]), (["green"], ["red"]), (["red"], ["green"])]
    for b, (pos_w, neg_w) in enumerate(expected_sides):
        assert t.pos[b] == [tid(w) for w in pos_w] and t.neg[b] == [tid(w) for w in neg_w]
        pp, pn = p[b, t.pos[b]].sum(), p[b, t.neg[b]].sum()
        assert torch.allclose(margins(logits[b:b + 1], t.subset([b]))[0], torch.log(pp) - torch.log(pn), atol=1e-5)
        assert torch.allclose(margins(logits[b:b + 1], t.subset([b]), constrained=False)[0], pp - pn, atol=1e-6)
        best = max(pos_w + neg_w, key=lambda w: float(p[b, tid(w)]))
        assert bool(follows(logits[b:b + 1], t.subset([b]))[0]) == (best in pos_w)


def test_unscorable_samples_say_their_real_cause() -> None:
    """Unknown words, an empty side and shared first tokens are three causes, each named."""
    from mfutils.measure.answers import CandidateOverlapError, UnscorableError

    mm = random_model("llava", words=["red", "blue", "star", "circle"], n_layers=1)
    rec = {"image_id": "1", "task": "color", "question": "q", "answer_vision": "crimson", "answer_text": "scarlet",
           "context": "c"}
    s = mc2.record_samples([rec], [np.zeros((64, 64, 3), dtype=np.uint8)])   # both words are <unk>
    with pytest.raises(UnscorableError, match=r"sample 0 \(color\): the image-side candidates \['crimson', "
                       r"'Crimson'\] have no first token that carries content.*unknown to it") as err:
        targets_from_candidates(mm, s)
    assert err.value.cause == "unknown_token"
    shared = [replace(x, answer_img_candidate_list=("red star",), answer_text_candidate_list=("red circle",)) for x in s]
    with pytest.raises(CandidateOverlapError, match=r"sample 0 \(color\).*cannot be told apart") as err:
        targets_from_candidates(mm, shared[:1])
    assert err.value.cause == "shared_first_token"
    empty = [replace(x, answer_img_candidate_list=(), answer_text_candidate_list=("crimson",)) for x in s]
    with pytest.raises(UnscorableError, match="the image-side candidates are empty") as err:
        targets_from_candidates(mm, empty[:1])
    assert err.value.cause == "empty_side"                     # before the text side's unknown word
    kept, dropped = mc2_eval.scorable(mm, s + shared + empty)
    assert kept == [] and [d["cause"] for d in dropped] == ["unknown_token"] * 2 + ["shared_first_token"] * 2 + [
        "empty_side"] * 2
    assert dropped[0]["record"] == 0 and dropped[0]["reason"].startswith("the image-side candidates ['crimson'")


# ---- malformed records: any corruption is rejected with the record's index ---------------------------
VALID = {"image_id": "000000046962", "task": "color", "question": "What color?", "answer_vision": "red",
         "answer_text": "blue", "context": "A blue car."}


@st.composite
def corrupted(draw: Any) -> tuple[list[dict[str, Any]], int, str]:
    n = draw(st.integers(1, 12))
    recs = [copy.deepcopy(VALID) for _ in range(n)]
    bad = draw(st.integers(0, n - 1))
    field = draw(st.sampled_from(sorted(mc2.MC2_FIELDS)))
    how = draw(st.sampled_from(["drop", "type", "empty"]))
    if how == "drop":
        del recs[bad][field]
    elif how == "type":
        recs[bad][field] = draw(st.one_of(st.none(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                                          st.booleans(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)))
    else:
        recs[bad][field] = draw(st.sampled_from(["", "   "]))
    return recs, bad, field


@given(corrupted())
@settings(max_examples=60, deadline=None)
def test_malformed_records_are_rejected_with_their_index(case: tuple[list[dict[str, Any]], int, str]) -> None:
    recs, bad, field = case
    with pytest.raises(mc2.MC2FormatError, match=rf"record {bad} (has no field '{field}'|field '{field}')"):
        mc2._validate(recs, "test.json")


def test_load_records_names_the_file_and_index(tmp_path: Path) -> None:
    p = tmp_path / "mc2.json"
    p.write_text(json.dumps([VALID, {**VALID, "answer_text": 3}]))
    with pytest.raises(mc2.MC2FormatError, match=r"record 1 field 'answer_text' is a int"):
        mc2.load_records(p)
    with pytest.raises(FileNotFoundError, match="mc2-json"):
        mc2.load_records(tmp_path / "absent.json")


@needs_file
def test_manifest_round_trip_with_the_model_filter(records: list[dict[str, str]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mfutils.data.datasets import load_split, manifest_dataset
    from mfutils.study.splits import write_manifest

    monkeypatch.setenv("MF_OUT", str(tmp_path / "out"))
    coco = tmp_path / "coco"
    coco.mkdir()
    _write_images(coco, records)
    words = sorted({w for r in records for k in ("question", "answer_vision", "answer_text", "context")
                    for w in r[k].split()})
    mm = random_model("llava", words=words, n_layers=2)       # reads MC2's words (random weights)
    sizes = {"identify": 6, "test": 6, "test_system": 4, "test_instruction_last": 4, "capability": 6, "fail_pool": 6}
    man = write_manifest("random:llava", sizes, dataset="mc2", mc2_json=str(SHARED), coco_root=str(coco), mm=mm)
    assert manifest_dataset("random:llava") == "mc2" and man["filtered_for"] == "random:llava"
    halves = mc2._halves(len(records))
    for name, entry in man["splits"].items():
        got = load_split("random:llava", name)
        assert len(got) == entry["n"] <= sizes[name]
        half = "identify" if name == "identify" else "test"
        assert {s.index for s in got} <= set(halves[half])
    ident = {s.index for s in load_split("random:llava", "identify")}
    assert not ident & {s.index for s in load_split("random:llava", "test")}
    # the filter kept exactly the records whose two counterparts the model answers right
    kept = load_split("random:llava", "test")
    assert kept, ("the random model answers no record from each modality alone: pick another seed", man["build"])
    pairs = [mc2.counterparts_mc2(s) for s in kept]
    assert all(mc2_eval._correct(mm, [a, b], 2) == [True, True] for a, b in pairs)
    filt = man["build"]["filter"]["test"]
    assert filt["n_kept_records"] <= min(filt["image_only_right"], filt["text_only_right"]) <= filt["n_records"]
    assert filt["n_kept_records"] < filt["n_records"], "a random model should fail some records"
    cap = load_split("random:llava", "capability")
    assert [s.category for s in cap] == ["image_only", "text_only"] * (len(cap) // 2) + ["image_only"] * (len(cap) % 2)
    # fail_pool comes from the same half as test but never repeats a test sample (notebook 02 sweeps both)
    key = lambda s: (s.index, s.instructed, (s.meta or {}).get("order", ""))  # noqa: E731
    pool = load_split("random:llava", "fail_pool")
    assert pool and not {key(s) for s in pool} & {key(s) for s in kept}, (len(pool), len(kept))


def _chain_through_07(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mc2_json: Path, coco: Path,
                      words: list[str]) -> Path:
    """Notebooks 00-07 with dataset="mc2" at smoke size on a saved 2-layer random Llava that knows ``words``;
    returns the model folder. Each notebook's assertions name what failed."""
    import papermill as pm

    from mfutils.run.chain import kernel_name
    from mfutils.core.paths import notebooks_dir

    monkeypatch.setenv("MF_OUT", str(tmp_path / "out"))
    words = sorted(set(words) | set(" ".join([mc2.FOLLOW_IMAGE, mc2.FOLLOW_TEXT, mc2.CONSTRAINT_OPEN,
                                               mc2.SYSTEM_SENTENCE]).split()))
    mm = random_model("llava", words=words, n_layers=2)
    ck = tmp_path / "mc2-random-llava"
    mm.model.save_pretrained(ck)
    mm.processor.save_pretrained(ck)
    params = {"model": str(ck), "smoke": True, "dataset": "mc2", "mc2_json": str(mc2_json), "coco_root": str(coco)}
    books = sorted(notebooks_dir().glob("0[0-8]_*.ipynb"))
    assert [b.name[:2] for b in books] == [f"0{i}" for i in range(9)]
    for nb in books:
        pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=params, kernel_name=kernel_name(),
                            cwd=str(notebooks_dir()), progress_bar=False)
    return ck


def _check_chain_outputs(tmp_path: Path, ck: Path, n_records: int, exact: bool = True) -> None:
    from mfutils.data.datasets import manifest_dataset
    from mfutils.core.paths import model_slug, results_dir

    assert manifest_dataset(str(ck)) == "mc2"
    res = json.loads((results_dir(str(ck)) / "00_model.json").read_text())
    scored = res["accuracy"]["n_records"]
    assert res["dataset"] == "mc2" and (scored == n_records if exact else 0 < scored <= n_records), scored
    for name in ("03_head_identification", "04_block_heads", "05_amplification", "06_capability_retention"):
        assert (results_dir(str(ck)) / f"{name}.json").exists(), name
    assert list((tmp_path / "out" / "figures" / model_slug(str(ck))).glob("*.png"))
    explorer = json.loads((tmp_path / "07_explorer.ipynb").read_text())       # the explorer ran on MC2 samples
    errors = [o for c in explorer["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    from mfutils.study.results import non_finite
    nan = {p.name: non_finite(p) for p in results_dir(str(ck)).glob("*.json") if non_finite(p)}
    assert nan == {}, f"NaN or Infinity in results files: {nan}"
    pos = json.loads((results_dir(str(ck)) / "08_instruction_position.json").read_text())
    assert pos["applicable"] is False and "no instruction positions" in pos["why"]   # MC2 has one prompt layout
    note = json.loads((tmp_path / "01_data_construction.ipynb").read_text())   # the prose names the data in use
    shown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in note["cells"]
                    for o in c.get("outputs", []))
    assert "Data of this run: MC²" in shown


@needs_file
@pytest.mark.slow
def test_notebook_chain_on_mc2_with_stand_in_images(records: list[dict[str, str]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebooks 00-07 with dataset="mc2" (smoke sizes) on a saved random Llava that reads MC2's words, over
    generated stand-in COCO images: every notebook runs, 01 filters per model, 02-06 read its splits, 07's
    explorer shows MC2 samples (images given as paths). (Random weights: smoke only. About 2 minutes on 2 cores.)"""
    coco = tmp_path / "coco"
    coco.mkdir()
    _write_images(coco, records)
    words = [w for r in records for k in ("question", "answer_vision", "answer_text", "context") for w in r[k].split()]
    ck = _chain_through_07(tmp_path, monkeypatch, SHARED, coco, words)
    _check_chain_outputs(tmp_path, ck, 64)


@pytest.mark.slow
def test_notebook_chain_on_an_authors_file_with_stand_in_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same chain, 00-07, on a file in the authors' per-model format as a user feeds it (their fields, their
    instruction sentence, Chinese candidate lists; tests/authors_file.py) with stand-in COCO images."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from authors_file import vocabulary, write_authors_file

    coco = tmp_path / "coco"
    coco.mkdir()
    path = write_authors_file(coco, "image", n=240)
    ck = _chain_through_07(tmp_path, monkeypatch, path, coco, vocabulary())
    _check_chain_outputs(tmp_path, ck, 64, exact=False)     # records with an empty image side cannot be scored


def test_multiple_choice_form_scores_the_option_letters_in_both_orders() -> None:
    mm = random_model("internvl", words=["A", "B", "what", "color", "?", "red", "blue", "."], n_layers=1)
    rec = {"image_id": "1", "task": "color", "question": "what color ?", "answer_vision": "red", "answer_text": "blue",
           "context": "blue ."}
    samples = mc2.record_samples([rec], [np.zeros((64, 64, 3), dtype=np.uint8)], form="mc")
    t = targets_for(mm, samples)
    a, b = mm.tokenizer.convert_tokens_to_ids("A"), mm.tokenizer.convert_tokens_to_ids("B")
    # (instruction, order) -> the instructed letter: the image's answer is option A in order AB, B in BA
    want = {("image", "AB"): a, ("image", "BA"): b, ("text", "AB"): b, ("text", "BA"): a}
    for s, pos, neg in zip(samples, t.pos, t.neg):
        assert pos == [want[(s.instructed, s.meta["order"])]] and neg == [a + b - pos[0]]
    enc = encode(mm, [s.prompt for s in samples])
    assert samples[0].prompt.text("question") == "what color ? A. red B. blue"
    assert samples[1].prompt.text("question") == "what color ? A. blue B. red"
    with torch.no_grad():
        logits = answer_logits(mm, enc).float()
    logp = torch.log_softmax(logits, -1)
    m = margins(logits, t)
    for i, s in enumerate(samples):
        p_, n_ = t.pos[i][0], t.neg[i][0]
        assert torch.allclose(m[i], logp[i, p_] - logp[i, n_], atol=1e-5)
