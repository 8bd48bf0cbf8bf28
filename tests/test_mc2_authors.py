"""The authors' per-model format: read as a format of its own, detected by its fields,
its instruction sentence, question form and candidate lists used; the per-model filter off by default for it;
splits smaller than asked warn, and stop below the minimum. The file is built here (tests/authors_file.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from authors_file import SENTENCES, authors_records, vocabulary, write_authors_file
from mfutils.data import mc2, mc2_files
from mfutils.data.mc2_files import MC2FormatError, SharedWordsWarning, UnusedFieldsWarning


def _read(path: Path, **kw):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records, info = mc2_files.read_records(path, **kw)
    return records, info, caught


def test_the_authors_format_is_detected_and_mapped(tmp_path: Path) -> None:
    path = write_authors_file(tmp_path, "text")
    records, info, caught = _read(path)
    assert info["format"] == "authors" and info["n_records"] == 6 and info["question_form"] == "question3"
    r = records[0]
    assert r["image_id"] == "000000000001" and records[1]["image_id"] == "000000000002"      # a number: padded
    assert (r["task"], r["question"], r["answer_vision"], r["answer_text"], r["context"]) == (
        "color", "What color is the bus?", "red", "blue", "A blue bus waits at the stop.")
    assert r["instruction"] == SENTENCES["text"] and r["instructed"] == "text"
    assert r["constraint"] == "Answer the question using a single word or phrase."
    assert info["instruction_sentences"] == {"text": SENTENCES["text"]}
    # each side: the answer, then its list; casefold duplicates once, each word in its case forms
    assert r["image_candidates"] == ["red", "Red", "红色", "红"]
    assert r["text_candidates"] == ["blue", "Blue", "蓝色", "蓝"]                   # the repeated 蓝色 once
    assert records[1]["image_candidates"] == ["yellow", "Yellow"]                 # an empty list: the answer alone
    assert records[3]["image_candidates"] == ["wood", "Wood", "木材"]              # "Wood" is the answer's spelling
    # a word on both sides counts for neither; the records it touches are counted and named
    assert "move" not in records[2]["image_candidates"] + records[2]["text_candidates"]
    assert records[4]["image_candidates"] == [] and records[4]["text_candidates"] == ["dog", "Dog", "狗"]
    assert info["shared_word_records"] == 2
    assert [(s["record"], s["words"]) for s in info["shared_words"]] == [(2, ["move"]), (4, ["cat"])]
    assert info["unused_fields"] == ["question1", "question2", "source_split"]
    kinds = {type(w.message): str(w.message) for w in caught}
    assert "question1, question2, source_split" in kinds[UnusedFieldsWarning]
    assert "2 of 6 records list a word on both sides" in kinds[SharedWordsWarning]


@pytest.mark.parametrize("form, suffix", [("question1", "The answer is"),
                                          ("question2", "Answer the question using a single word or phrase. The "
                                                        "answer is")])
def test_the_question_form_is_chosen(tmp_path: Path, form: str, suffix: str) -> None:
    records, info, _ = _read(write_authors_file(tmp_path, "image"), question_form=form)
    assert {r["constraint"] for r in records} == {suffix} and info["constraints"] == {suffix: 6}
    assert all(r["instructed"] == "image" for r in records) and "question3" in info["unused_fields"]


@pytest.mark.filterwarnings("ignore::mfutils.data.mc2_files.UnusedFieldsWarning",
                            "ignore::mfutils.data.mc2_files.SharedWordsWarning")
def test_samples_use_the_files_sentence_question_and_lists(tmp_path: Path) -> None:
    records = mc2.load_records(write_authors_file(tmp_path, "text"))
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    samples = mc2.record_samples(records, [img] * len(records))
    assert len(samples) == 6 and {s.instructed for s in samples} == {"text"}       # one instruction: the file's
    s = samples[0]
    assert [n for n, _ in s.prompt.segments] == ["image", "context", "instruction", "question", "constraint"]
    assert s.prompt.text("instruction") == SENTENCES["text"] and s.prompt.text("question") == "What color is the bus?"
    assert (s.answer, s.other_answer) == ("blue", "red") and s.meta["format"] == "authors"
    assert s.answer_img_candidate_list == ("red", "Red", "红色", "红")
    with pytest.raises(ValueError, match="file for the follow-text instruction: it has no follow-image sample"):
        mc2.record_samples(records, [img] * len(records), instructions=("image",))
    # MC2's own records are unchanged: our sentences, both instructions
    own = mc2.record_samples([{"image_id": "1", "task": "color", "question": "q?", "answer_vision": "red",
                               "answer_text": "blue", "context": "c."}], [img])
    assert [x.prompt.text("instruction") for x in own] == [mc2.FOLLOW_IMAGE, mc2.FOLLOW_TEXT]


def test_a_file_of_neither_format_names_both(tmp_path: Path) -> None:
    p = tmp_path / "odd.json"
    p.write_text(json.dumps([{"image_id": "1", "prompt": "x", "label": "y"}]))
    with pytest.raises(MC2FormatError, match=r"match neither MC2 format: MC2's evaluation file \(evaluate_final.json\) "
                       r"needs \['image_id', .*'answer_vision'.*the authors' per-model files need .*'question1'"):
        mc2.load_records(p)
    raw = authors_records("text", 3)
    del raw[2]["answer_text_candidate_list"]
    p.write_text(json.dumps(raw))
    with pytest.raises(MC2FormatError, match=r"record 2 has no field 'answer_text_candidate_list'.*the authors' "
                       r"per-model format needs .*MC2's evaluation file .*needs"):
        mc2.load_records(p)
    bad = authors_records("text", 2)
    bad[1]["question3"] = "only one line"
    p.write_text(json.dumps(bad))
    with pytest.raises(MC2FormatError, match="record 1 field 'question3'.*three non-empty lines"):
        mc2.load_records(p)


def test_the_instruction_is_read_from_the_sentence_or_the_file_name() -> None:
    assert mc2_files.instructed_of(SENTENCES["image"]) == "image"
    assert mc2_files.instructed_of(SENTENCES["text"]) == "text"
    assert mc2_files.instructed_of(mc2.FOLLOW_IMAGE) == "image" and mc2_files.instructed_of(mc2.FOLLOW_TEXT) == "text"
    assert mc2_files.instructed_of("Answer carefully.") is None
    recs = authors_records("text", 2)
    for r in recs:
        r["question3"] = "Answer carefully.\n" + r["question3"].split("\n", 1)[1]
    got, _ = mc2_files.validate_authors(recs, "x", name="v3_following_vision_open_ended_m_remaining.json")
    assert {r["instructed"] for r in got} == {"image"}
    with pytest.raises(MC2FormatError, match="cannot tell which modality"):
        mc2_files.validate_authors(recs, "x", name="m.json")


def _manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, sizes: dict[str, int], **kw):  # type: ignore[no-untyped-def]
    from mfutils.model.loading import random_model
    from mfutils.study.splits import write_manifest

    monkeypatch.setenv("MF_OUT", str(tmp_path / "out"))
    path = write_authors_file(tmp_path, "text", n=n)
    mm = random_model("llava", words=vocabulary(), n_layers=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        man = write_manifest("random:llava", sizes, dataset="mc2", mc2_json=str(path), coco_root=str(tmp_path),
                             mm=mm, **kw)
    return man, caught, mm


def test_authors_manifest_filter_off_by_default_and_short_splits_warn(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mfutils.data.datasets import SplitSizeWarning, load_split

    sizes = {"identify": 8, "test": 8, "capability": 8, "fail_pool": 16}
    man, caught, _ = _manifest(tmp_path, monkeypatch, 48, sizes)
    assert man["format"] == "authors" and man["question_form"] == "question3"
    assert man["model_filter"] == {"asked": None, "default": False, "applied": False} and man["filtered_for"] is None
    assert "filter" not in man["build"]
    assert man["file"]["instruction_sentences"] == {"text": SENTENCES["text"]}
    assert man["file"]["shared_word_records"] == 16 and man["file"]["unused_fields"][-1] == "source_split"
    # the records whose image side is empty (BASE[4]: its only word is on the text side too) cannot be scored
    assert man["build"]["unscorable_by_cause"] == {"empty_side": 8}
    test = load_split("random:llava", "test")
    pool = load_split("random:llava", "fail_pool")
    assert len(test) == 8 and {s.instructed for s in test + pool} == {"text"}
    assert not {s.index for s in test} & {s.index for s in pool}                 # one instruction: other records
    assert man["splits"]["fail_pool"]["n"] == len(pool) < 16 == man["splits"]["fail_pool"]["requested"]
    short = [str(w.message) for w in caught if w.category is SplitSizeWarning]
    assert short == [f"MC2 split 'fail_pool' has {len(pool)} samples, 16 were asked for (the test half holds 24 "
                     "of the file's 48 records; 2 unscorable for this tokenizer (empty_side 2); an authors' file has "
                     "one instruction, so fail_pool takes the test half's records that test does not use)"]
    assert load_split("random:llava", "identify")[0].prompt.text("instruction") == SENTENCES["text"]


def test_a_split_below_the_minimum_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mfutils.data.datasets import MIN_SPLIT_SAMPLES, SplitTooSmallError

    assert MIN_SPLIT_SAMPLES == 8
    with pytest.raises(SplitTooSmallError, match=r"split 'fail_pool' has [0-7] samples, 16 were asked for, fewer "
                       r"than the minimum 8: .*ask for fewer test samples"):
        _manifest(tmp_path, monkeypatch, 24, {"test": 8, "fail_pool": 16})


def test_the_filter_can_be_turned_on_for_an_authors_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mfutils.data.datasets import SplitTooSmallError

    # a random model knows few records from each modality alone: the filter that runs leaves too few, and says so
    with pytest.raises(SplitTooSmallError, match="the per-model filter kept"):
        _manifest(tmp_path, monkeypatch, 24, {"identify": 8}, model_filter=True)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl", "internvl"])
def test_mf_eval_reads_an_authors_file_and_counts_causes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         arch: str) -> None:
    from mfutils.run.cli import main

    path = write_authors_file(tmp_path, "text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["eval", "--model", f"random:{arch}", "--dataset", "mc2", "--mc2-json", str(path), "--coco-root",
                   str(tmp_path), "--n", "6", "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the random model's world words know red/blue/yellow/green only: 2 records scorable, the others say why
    assert rc == 0 and res["n_records"] == 2 and res["follow_text"]["n"] == 2 and res["follow_image"]["n"] == 0
    assert res["unscorable_by_cause"] == {"unknown_token": 3, "empty_side": 1}
