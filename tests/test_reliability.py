"""Reliability of the chain: determinism, provenance, kill-and-resume, atomic writes, clear errors.

The chain tests run the smoke chain of the tiny model in subprocesses (as `make reproduce MODEL=tiny SMOKE=1` does;
the mechanics do not depend on the model and tiny is the fast one):
one run is killed while notebook 03 runs and then resumed; a second, independent run with --force is the
reference. The resumed run must skip exactly the notebooks that had finished, and both runs must give
bit-identical results once the provenance blocks (commit, wall time, dates) are removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mfutils.run.chain import ChainParameterError, built_notebooks, check_parameters, parse_parameter
from mfutils.run.state import STATE_FILE, strip_provenance
from mfutils.core.paths import atomic_output, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "tiny--smoke"      # the folders of a smoke run of tiny (never the shipped results/tiny/)


def _env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    # one torch thread in every run: the two-process run below uses one per process, and one thread against two
    # differs by float rounding (not by anything the chain does), so all runs stay bit-comparable
    env.update({"MF_OUT": str(out), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1"})
    return env


def _mf(args: list[str], out: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfutils", *args], cwd=ROOT, env=_env(out), capture_output=True,
                          text=True, **kw)


# ------------------------------------------------------------------------------------------------
# Parameters and command-line errors
# ------------------------------------------------------------------------------------------------
def test_parse_parameter_reads_literals_and_strings() -> None:
    assert parse_parameter("share=0.1") == ("share", 0.1)
    assert parse_parameter("smoke=True") == ("smoke", True)
    assert parse_parameter("model=random:llava") == ("model", "random:llava")
    with pytest.raises(ChainParameterError, match="name=value"):
        parse_parameter("share")


def test_wrong_parameter_type_and_unknown_name_are_refused() -> None:
    nbs = built_notebooks()
    with pytest.raises(ChainParameterError, match=r"share.*float"):
        check_parameters({"share": "big"}, nbs)
    with pytest.raises(ChainParameterError, match=r"batch_size.*int"):
        check_parameters({"batch_size": 2.5}, nbs)
    with pytest.raises(ChainParameterError, match=r"smoke.*bool"):
        check_parameters({"smoke": 1}, nbs)
    with pytest.raises(ChainParameterError, match="Known parameters"):
        check_parameters({"no_such_parameter": 1}, nbs)
    check_parameters({"share": 0.1, "batch_size": 16, "smoke": True, "model": "tiny"}, nbs)  # accepted


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["reproduce", "--model", "/no/such/folder/"], "/no/such/folder"),
    (["reproduce", "-p", "share=big"], "declares share: float"),
    (["eval", "--model", "no-such-model", "--n", "4"], "unknown model"),
])
def test_user_errors_at_the_command_line_are_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    res = _mf(args, tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert not any(tmp_path.rglob("*.json")), "a refused run must not write results"


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------
def test_atomic_output_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_text(target, '{"v": 1}')
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_a_process_killed_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_text(target, '{"v": 1}')
    code = ("import sys, time\nfrom mfutils.core.paths import atomic_output\n"
            f"with atomic_output({str(target)!r}) as tmp:\n"
            "    f = open(tmp, 'w'); f.write('{\"v\": 2, '); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert json.loads(target.read_text()) == {"v": 1}


# ------------------------------------------------------------------------------------------------
# Kill, resume, determinism, provenance (the smoke chain, twice)
# ------------------------------------------------------------------------------------------------
def _results(out: Path) -> dict[str, object]:
    """Every results file of the tiny model: JSON without provenance, npz as arrays."""
    docs: dict[str, object] = {}
    for p in sorted((out / "results" / SMOKE).glob("*")):
        if p.name in (STATE_FILE, "PROVENANCE.json"):
            continue
        if p.suffix == ".json":
            docs[p.name] = strip_provenance(json.loads(p.read_text()))
        elif p.suffix == ".npz":
            with np.load(p) as z:
                docs[p.name] = {k: z[k].tolist() for k in z.files}
    return docs


def _kill_during(stem: str, out: Path, timeout: float = 900) -> str:
    """Run the smoke chain and SIGKILL it (kernel included) a few seconds after notebook ``stem`` starts."""
    proc = subprocess.Popen([sys.executable, "-m", "mfutils", "reproduce", "--model", "tiny", "--smoke"], cwd=ROOT,
                            env=_env(out),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen, t0 = [], time.time()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"==> {stem}"):
                time.sleep(4)
                break
            assert time.time() - t0 < timeout, "the chain never reached " + stem
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return "".join(seen)


@pytest.fixture(scope="module")
def chain_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    killed = tmp_path_factory.mktemp("killed")
    log_kill = _kill_during("03_head_identification", killed)
    half_written = [p.name for p in (killed / "results" / SMOKE).glob("*.json")
                    if not _parses(p)]
    state_after_kill = json.loads((killed / "results" / SMOKE / STATE_FILE).read_text())
    resumed = _mf(["reproduce", "--model", "tiny", "--smoke"], killed, timeout=900)
    again = _mf(["reproduce", "--model", "tiny", "--smoke"], killed, timeout=900)
    fresh = tmp_path_factory.mktemp("fresh")
    reference = _mf(["reproduce", "--model", "tiny", "--smoke", "--force"], fresh, timeout=900)
    spread = tmp_path_factory.mktemp("two_processes")
    two = _mf(["reproduce", "--model", "tiny", "--smoke", "--processes", "2"], spread, timeout=900)
    return {"killed": killed, "fresh": fresh, "log_kill": log_kill, "half_written": half_written,
            "state_after_kill": state_after_kill, "resumed": resumed, "again": again, "reference": reference,
            "spread": spread, "two": two}


def _parses(p: Path) -> bool:
    try:
        json.loads(p.read_text())
        return True
    except json.JSONDecodeError:
        return False


@pytest.mark.chain
def test_kill_leaves_no_half_written_results(chain_runs: dict) -> None:
    assert "==> 03_head_identification" in chain_runs["log_kill"]
    assert chain_runs["half_written"] == []
    # notebooks 00-02 finished before the kill; 03 had started, so it has no record
    assert sorted(chain_runs["state_after_kill"]["notebooks"]) == ["00_model", "01_data_construction",
                                                                  "02_information_flow"]


@pytest.mark.chain
def test_resume_skips_finished_notebooks_and_recomputes_the_rest(chain_runs: dict) -> None:
    res = chain_runs["resumed"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for stem in ("00_model", "01_data_construction", "02_information_flow"):
        assert f"--  {stem}.ipynb: SKIPPED" in res.stdout
    assert "resuming at 03_head_identification.ipynb: no record of a complete run" in res.stdout
    for stem in [p.stem for p in built_notebooks() if p.stem >= "03"]:
        assert f"==> {stem}.ipynb" in res.stdout
    again = chain_runs["again"]
    assert again.returncode == 0
    assert "==> " not in again.stdout, "an unchanged chain must recompute nothing"
    assert f"skipped {len(built_notebooks())} unchanged" in again.stdout


@pytest.mark.chain
def test_two_runs_give_bit_identical_results(chain_runs: dict) -> None:
    ref = chain_runs["reference"]
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    a, b = _results(chain_runs["killed"]), _results(chain_runs["fresh"])
    assert sorted(a) == sorted(b)
    assert len(a) >= 8
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs of the same chain"


@pytest.mark.chain
def test_the_chain_in_two_processes_gives_the_results_of_one(chain_runs: dict) -> None:
    """``mf reproduce --processes 2`` (torchrun, gloo, a kernel per rank and notebook) writes the same
    results as one process, bit for bit, records the process count, and only rank 0 writes."""
    two = chain_runs["two"]
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "running in 2 processes" in two.stdout
    starts = [line for line in two.stdout.splitlines() if line.startswith("==> ")]
    assert [line.split()[1] for line in starts] == [p.name for p in built_notebooks()]
    assert all("processes=2)" in line for line in starts)
    a, b = _results(chain_runs["fresh"]), _results(chain_runs["spread"])
    assert sorted(a) == sorted(b) and len(a) >= 8
    for name in a:
        assert a[name] == b[name], f"{name} differs between one and two processes"
    res = chain_runs["spread"] / "results" / SMOKE
    assert json.loads((res / "04_block_heads.json").read_text())["provenance"]["processes"] == 2
    assert json.loads((chain_runs["fresh"] / "results" / SMOKE / "04_block_heads.json").read_text()
                      )["provenance"]["processes"] == 1
    leftovers = [p.name for p in chain_runs["spread"].rglob("*") if ".partial" in p.name or "mf-not-main" in p.name]
    assert leftovers == []


@pytest.mark.chain
def test_every_results_file_and_executed_notebook_records_its_provenance(chain_runs: dict) -> None:
    import nbformat

    out = chain_runs["fresh"]
    index = json.loads((out / "results" / SMOKE / "PROVENANCE.json").read_text())
    for p in sorted((out / "results" / SMOKE).glob("*")):
        if p.name in (STATE_FILE, "PROVENANCE.json", "REPORT.md"):   # the report is written after the chain
            continue
        rel = str(p.relative_to(out))
        assert rel in index["files"], f"{rel} has no provenance entry"
        if p.suffix == ".json":
            prov = json.loads(p.read_text())["provenance"]
            assert prov["git_commit"] and prov["packages"]["torch"] and prov["packages"]["transformers"]
            assert len(prov["model"]["weights"]["model.safetensors"]) == 64
            assert prov["parameters"]["model"] == "tiny" and prov["parameters"]["smoke"] is True
            assert prov["wall_s"] > 0
            if prov["notebook"] >= "01":
                assert len(prov["dataset"]["splits"]["test"]["sha256"]) == 64
    for nb in (out / "figures" / SMOKE / "notebooks").glob("*.ipynb"):
        meta = nbformat.read(nb, as_version=4).metadata["mfutils"]
        assert meta["notebook"] == nb.name and meta["model"]["name"] == "tiny"
