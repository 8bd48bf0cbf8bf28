"""Bad numbers at the command line: every numeric option of every ``mf`` command and every numeric
``mf reproduce -p`` parameter is range-checked, with a one-line error naming it and the fix, and exit status 2;
an MC2 run in which no sample can be scored is an error, not a NaN table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfutils.run.args import parameter_problem
from mfutils.run.cli import build_parser, main


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``mf argv``; it must stop with status 2 and no traceback; returns stderr."""
    try:
        rc = main(argv)
    except SystemExit as exc:                                    # argparse's error path
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--n", "-3"], "argument --n: must be a whole number >= 1, got '-3'"),
    (["eval", "--n", "0"], "argument --n: must be a whole number >= 1, got '0'"),
    (["eval", "--n", "2.5"], "argument --n: must be a whole number >= 1, got '2.5'"),
    (["eval", "--n", "many"], "argument --n: must be a whole number >= 1, got 'many'"),
    (["eval", "--seed", "-1"], "argument --seed: must be a whole number from 0 to 4294967295, got '-1'"),
    (["eval", "--seed", "4294967296"], "argument --seed: must be a whole number from 0 to 4294967295"),
    (["eval", "--batch-size", "0"], "argument --batch-size: must be a whole number >= 1, got '0'"),
    (["card", "--n", "0"], "argument --n: must be a whole number >= 1"),
    (["card", "--seed", "-5"], "argument --seed: must be a whole number from 0 to"),
    (["train", "--steps", "0"], "argument --steps: must be a whole number >= 1"),
    (["train", "--monitor-n", "-1"], "argument --monitor-n: must be a whole number >= 1"),
    (["train", "--eval-n", "0"], "argument --eval-n: must be a whole number >= 1"),
    (["train", "--seed", "-1"], "argument --seed: must be a whole number from 0 to"),
    (["train", "--eval-seed", "-1"], "argument --eval-seed: must be a whole number from 0 to"),
    (["reproduce", "--processes", "0"], "argument --processes: must be a whole number >= 1, got '0'"),
])
def test_a_bad_option_value_is_refused_by_argparse(capsys, argv: list[str], needle: str) -> None:
    err = _fails(capsys, argv)
    assert f"mf {argv[0]}: error: {needle}" in err


@pytest.mark.parametrize("param, needle", [
    ("n=-3", "parameter n=-3: must be a whole number >= 1"),
    ("n=0", "parameter n=0: must be a whole number >= 1"),
    ("batch_size=0", "parameter batch_size=0: must be a whole number >= 1"),
    ("n_control=0", "parameter n_control=0: must be a whole number >= 1"),
    ("max_failed=-1", "parameter max_failed=-1: must be a whole number >= 1"),
    ("control_samples=-1", "parameter control_samples=-1: must be a whole number >= 0"),
    ("window=-2", "parameter window=-2: must be a whole number >= 0"),
    ("seed=-1", "parameter seed=-1: must be a whole number from 0 to 4294967295"),
    ("share=1.5", "parameter share=1.5: must be a number in (0, 1]"),
    ("share=0", "parameter share=0: must be a number in (0, 1]"),
    ("shares=[0.1, 2.0]", "parameter shares=[0.1, 2.0]: every element must be a number in (0, 1] (0.05: 5%); 2.0 is not"),
    ("alphas=[1.0, -2.0]", "parameter alphas=[1.0, -2.0]: every element must be a finite number >= 0"),
    ("alphas=[1.0, 1e999]", "every element must be a finite number >= 0 (1.0: unchanged); inf is not"),
    ("split_sizes={'test': 0}", "every value must be a whole number >= 1; test=0 is not"),
    ("dataset=nope", "parameter dataset='nope' is not one of world, mc2"),
    ("positions=middle", "parameter positions='middle' is not one of last, all"),
    ("fail_split=pool_middle", "is not one of fail_pool, pool_first, pool_after_image, pool_standard, pool_last"),
    ("fail_position=middle", "parameter fail_position='middle' is not one of first, after_image, standard, last"),
    ("mc2_form=essay", "parameter mc2_form='essay' is not one of open, mc"),
    ("model_filter=maybe", "parameter model_filter='maybe' is not one of auto, on, off"),
])
def test_a_bad_chain_parameter_is_refused_before_anything_runs(capsys, tmp_path: Path, monkeypatch, param: str,
                                                                needle: str) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    err = _fails(capsys, ["reproduce", "--model", "random:llava", "-p", param])
    assert err.startswith(f"error: parameter {param.split('=')[0]}=") and needle in err and "e.g. -p" in err
    assert not any(tmp_path.rglob("*")), "a refused run must write nothing"


def test_an_unknown_dataset_is_refused_before_anything_runs(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    err = _fails(capsys, ["reproduce", "--model", "smol", "--dataset", "nope"])
    assert "argument --dataset: invalid choice: 'nope' (choose from 'world', 'mc2')" in err
    assert not any(tmp_path.rglob("*")), "a refused run must write nothing"


def test_position_choices_are_the_worlds() -> None:
    from mfutils.data.world import POSITIONS
    from mfutils.run.args import CHOICES

    assert CHOICES["fail_position"] == tuple(POSITIONS)
    assert set(CHOICES["fail_split"]) == {"fail_pool", *(f"pool_{p}" for p in POSITIONS)}


@pytest.mark.parametrize("argv, dest, value", [
    (["eval", "--n", "1"], "n", 1),
    (["eval", "--seed", "0"], "seed", 0),
    (["eval", "--seed", "4294967295"], "seed", 4294967295),
    (["eval", "--batch-size", "1"], "batch_size", 1),
    (["card", "--n", "5", "--seed", "7"], "n", 5),
    (["train", "--steps", "1"], "steps", 1),
    (["train", "--monitor-n", "3"], "monitor_n", 3),
    (["train", "--eval-n", "3"], "eval_n", 3),
    (["train", "--eval-seed", "0"], "eval_seed", 0),
    (["eval"], "n", 1000),                                       # the defaults pass their own types
    (["train"], "monitor_n", 256),
])
def test_a_good_option_value_still_parses(argv: list[str], dest: str, value: int) -> None:
    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize("name, value", [
    ("n", 1), ("seed", 0), ("share", 1), ("share", 0.05), ("shares", [0.01, 1.0]), ("alphas", [0.0, 1.0, 8.0]),
    ("control_samples", 0), ("window", 0), ("n_control_curve", 0), ("split_sizes", {"test": 1}),
    ("model", "tiny"), ("share", "big"),     # not numeric / the wrong type: left to check_parameters' type check
    ("dataset", "mc2"), ("positions", "all"), ("fail_split", "pool_first"), ("fail_position", "after_image"),
])
def test_a_good_chain_parameter_passes(name: str, value: object) -> None:
    assert parameter_problem(name, value) is None


def test_mc2_eval_with_no_scorable_sample_is_an_error(capsys, tmp_path: Path) -> None:
    # answers outside the random model's world vocabulary: both sides are <unk>, no sample can be scored
    records = [{"image_id": f"{i + 1:012d}", "task": "color", "question": "what color ?", "answer_vision": "crimson",
                "answer_text": "scarlet", "context": "a scarlet star ."} for i in range(3)]
    path = tmp_path / "evaluate_final.json"
    path.write_text(json.dumps(records))
    for r in records:
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{r['image_id']}.jpg")
    err = _fails(capsys, ["eval", "--model", "random:llava", "--dataset", "mc2", "--mc2-json", str(path),
                          "--coco-root", str(tmp_path), "--n", "3"])
    assert "error: none of the 6 samples of the 3 MC2 records can be scored by random:llava" in err
    assert "record 0 (color): the image-side candidates ['crimson', 'Crimson']" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind, text, ok", [
    ("share", "0.05", 0.05), ("share", "1", 1.0), ("share", "0", None), ("share", "1.5", None), ("share", "nan", None),
    ("alpha", "0", 0.0), ("alpha", "4", 4.0), ("alpha", "-1", None), ("alpha", "inf", None), ("alpha", "x", None),
])
def test_share_and_alpha_types(kind: str, text: str, ok: float | None) -> None:
    import argparse

    from mfutils.run import args

    parse = getattr(args, kind)
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be .*, got '{text}'"):
            parse(text)
    else:
        assert parse(text) == ok
