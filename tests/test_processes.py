"""Many processes: the analyses spread over a group of processes give the numbers of one process.

Two processes on CPU (gloo), one thread each, against one process with one thread: with the same batches and
the same kernels, every per-sample number must agree to 1e-6 (they are in fact bit-identical). One thread
against two threads differs by float rounding (a few 1e-6 on tiny's margins), which is not the distribution's
doing, so both sides use one thread. The smoke chain in two processes is compared in tests/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fake_repo

from mfutils.core import processes
from mfutils.data.world import make_samples
from mfutils.measure.follow import FlagCache, follows
from mfutils.measure.prefix import merge_statuses
from mfutils.measure.prepared import prepare
from mfutils.model.loading import load_model, rank_gpus
from mfutils.run.parallel import RankError, in_processes, kernel_env, launch_argv, primary_error
from mfutils.study.knockout import knockout_sweep
from mfutils.study.scoring import head_attribution, head_scores_exhaustive, head_scores_fast

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-6


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def conflict():
    return make_samples(36, seed=77, categories=["follow_image", "follow_text"])


def _one_thread(fn, *args, **kwargs):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


def _two(fn, *args, **kwargs):
    return in_processes(fn, *args, processes=2, threads=1, **kwargs)


# ------------------------------------------------------------------------------------------------
# The pieces, alone
# ------------------------------------------------------------------------------------------------
def test_alone_every_item_is_mine_and_gathers_change_nothing() -> None:
    assert processes.world() == processes.World()
    assert processes.share(5) == [0, 1, 2, 3, 4]
    a = np.arange(6.0).reshape(2, 3)
    processes.gather_rows([0], [(a, 1)])
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert processes.gather_items([3, 4]) == [3, 4]


def test_a_broken_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_WORLD", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(processes.ProcessGroupError, match="RANK"):
        processes.world()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(processes.ProcessGroupError, match="MASTER_ADDR"):
        processes.world()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(processes.ProcessGroupError, match="WORLD_SIZE='two'"):
        processes.world()
    monkeypatch.setattr(processes, "_WORLD", None)


def test_each_process_gets_its_own_gpus() -> None:
    assert rank_gpus(8, 0, 8) == [0] and rank_gpus(8, 7, 8) == [7]
    assert rank_gpus(8, 1, 4) == [2, 3]
    assert rank_gpus(8, 0, 1) == list(range(8))
    with pytest.raises(ValueError, match="at least one GPU"):
        rank_gpus(2, 0, 4)


def test_statuses_and_errors_of_several_processes() -> None:
    assert merge_statuses(["prefix-reuse", "not run"]) == "prefix-reuse"
    assert merge_statuses(["not run", "full forwards (x)", "prefix-reuse"]) == "full forwards (x)"
    records = [{"rank": 0, "secondary": True, "type": "ProcessGroupError"},
               {"rank": 1, "secondary": False, "type": "ValueError"}]
    assert primary_error(records)["rank"] == 1
    assert primary_error([]) is None


def test_the_kernel_gets_its_own_group_and_the_launch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    env = kernel_env(12345)
    assert env["MASTER_PORT"] == "12345" and "TORCHELASTIC_USE_AGENT_STORE" not in env
    assert env["MF_PARENT_PID"] == str(os.getpid()) and env["RANK"] == "0"
    argv = launch_argv(3, ["reproduce", "--model", "tiny"])
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert argv[-3:] == ["reproduce", "--model", "tiny"]


def test_processes_must_be_a_positive_count(tiny) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="processes must be an integer >= 1"):
            in_processes(len, [1], processes=bad)
    assert in_processes(len, [1, 2], processes=1) == 2


# ------------------------------------------------------------------------------------------------
# Two processes equal one
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prepared", [False, True], ids=["sample list", "Prepared"])
def test_knockout_sweep_in_two_processes_equals_one(tiny, conflict, prepared: bool) -> None:
    data = prepare(tiny, conflict, batch_size=8) if prepared else conflict
    kw = dict(k=2, batch_size=8, progress=False, stride=1)
    one = _one_thread(knockout_sweep, tiny, data, **kw)
    two = _two(knockout_sweep, tiny, data, **kw)
    assert one.knocked.shape == two.knocked.shape == (len(one.edges), len(one.windows), len(conflict))
    assert np.array_equal(np.isnan(one.knocked), np.isnan(two.knocked))
    assert np.nanmax(np.abs(one.knocked - two.knocked)) <= TOL
    assert np.max(np.abs(one.base - two.base)) <= TOL
    assert np.array_equal(one.follows, two.follows)
    assert one.info["forward_equivalents"] == pytest.approx(two.info["forward_equivalents"])
    for edge in one.edges:                                       # hence the same summaries (verdict inputs)
        assert one.summary(edge, n_boot=200) == two.summary(edge, n_boot=200)


def test_head_scores_in_two_processes_equal_one(tiny, conflict) -> None:
    data = prepare(tiny, conflict, batch_size=8)
    one = _one_thread(head_scores_exhaustive, tiny, data, batch_size=8, progress=False, per_sample=True)
    two = _two(head_scores_exhaustive, tiny, data, batch_size=8, progress=False, per_sample=True)
    assert one.shape == (len(conflict), tiny.n_layers, tiny.n_heads)
    assert float((one - two).abs().max()) <= TOL
    a1 = _one_thread(head_attribution, tiny, data, batch_size=8, progress=False)
    a2 = _two(head_attribution, tiny, data, batch_size=8, progress=False)
    assert float((a1.per_sample - a2.per_sample).abs().max()) <= TOL
    assert float((a1.scores - a2.scores).abs().max()) <= TOL
    f1 = _one_thread(head_scores_fast, tiny, data, batch_size=8, progress=False)     # attribution + verify
    f2 = _two(head_scores_fast, tiny, data, batch_size=8, progress=False)
    assert float((f1.scores - f2.scores).abs().max()) <= TOL
    assert torch.equal(f1.verified, f2.verified)


def _flags(mm, samples, heads):
    data = prepare(mm, samples, batch_size=8)
    cache = FlagCache(mm, data, "all")
    cache.fill([((), 1.0), (heads, 0.0), (heads, 3.0)], "", progress=False)
    return (follows(mm, samples, heads=heads, batch_size=8), cache(heads, 0.0), cache(heads, 3.0), cache.fast_path)


def test_blocking_and_amplification_flags_in_two_processes_equal_one(tiny, conflict) -> None:
    heads = [(0, 1), (3, 2), (5, 0)]
    one = _one_thread(_flags, tiny, conflict, heads)
    two = _two(_flags, tiny, conflict, heads)
    for a, b in zip(one[:3], two[:3]):
        assert torch.equal(a, b)
    assert one[3] == two[3]


def _write_then_read(folder: str) -> list[list[str]]:
    from mfutils.core.paths import atomic_write_text

    seen = []
    for i in range(20):
        path = Path(folder) / f"f{i % 3}.txt"
        atomic_write_text(path, f"version {i} by {processes.world().rank}")
        seen.append(path.read_text())                 # every process reads what "it" just wrote
    return processes.gather_items([seen])


def test_only_rank_zero_writes_and_every_rank_reads_the_new_file(tmp_path: Path) -> None:
    seen = _two(_write_then_read, str(tmp_path))
    assert seen[0] == seen[1] == [f"version {i} by 0" for i in range(20)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]     # no scratch left


# ------------------------------------------------------------------------------------------------
# Failures end the run with the failing process's error, and leave no process behind
# ------------------------------------------------------------------------------------------------
def _fails_on_rank_one() -> int:
    if processes.world().rank == 1:
        raise ValueError("rank one fails on purpose")
    processes.gather_items([0])               # rank 0 then fails in the gather: not the error to report
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(p.name))
    return out


def test_a_failing_process_ends_the_run_with_its_error() -> None:
    before = set(_children(os.getpid()))
    with pytest.raises(RankError, match=r"process 1 of 2 failed: ValueError: rank one fails on purpose"):
        in_processes(_fails_on_rank_one, processes=2, threads=1)
    time.sleep(0.5)
    assert set(_children(os.getpid())) - before == set(), "a worker process outlived the failed run"


FAILING_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "id": "parameters", "metadata": {"tags": ["parameters"]}, "execution_count": None,
         "outputs": [],
         "source": "model: str = \"tiny\"  # model\nsmoke: bool = False  # smoke"},
        {"cell_type": "code", "id": "fails", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "from mfutils.core.processes import gather_items, world\n"
                   "if world().rank == 1:\n    raise ValueError('rank one fails on purpose')\n"
                   "gather_items([0])"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _with_env(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (still alive)."""
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (p / "environ").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return found


RANKS_NOTEBOOK = {
    "cells": [
        FAILING_NOTEBOOK["cells"][0],
        {"cell_type": "code", "id": "ranks", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import json\nfrom mfutils.core.paths import atomic_write_text, results_dir\n"
                   "from mfutils.core.processes import gather_items, world\n"
                   "ranks = gather_items([world().rank])\n"
                   "atomic_write_text(results_dir(model) / 'ranks.json', json.dumps({'ranks': ranks, 'by': world().rank}))"},
    ],
    "metadata": FAILING_NOTEBOOK["metadata"], "nbformat": 4, "nbformat_minor": 5,
}

LAUNCHERS = {
    "mf --processes": [sys.executable, "-m", "mfutils", "reproduce", "--model", "tiny", "--smoke", "--processes", "2"],
    "accelerate launch": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "mfutils", "reproduce", "--model", "tiny", "--smoke"],
}


@pytest.mark.chain
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_chain_runs_in_two_processes_under_each_launcher(tmp_path: Path, launcher: str) -> None:
    out, env = fake_repo(tmp_path, RANKS_NOTEBOOK)
    res = subprocess.run(LAUNCHERS[launcher], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "processes=2)" in res.stdout
    doc = json.loads((out / "results" / "tiny--smoke" / "ranks.json").read_text())
    assert {k: doc[k] for k in ("ranks", "by")} == {"ranks": [0, 1], "by": 0}      # gathered; written by rank 0 only
    assert doc["provenance"]["processes"] == 2
    assert list((out / "figures" / "tiny--smoke" / "notebooks").glob("*.ipynb")) == [
        out / "figures" / "tiny--smoke" / "notebooks" / "00_test.ipynb"]


@pytest.mark.chain
def test_a_chain_whose_process_fails_stops_with_that_processes_error(tmp_path: Path) -> None:
    out, env = fake_repo(tmp_path, FAILING_NOTEBOOK)
    marker = f"MF_OUT={out}"
    res = subprocess.run(LAUNCHERS["mf --processes"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "FAILED in 00_test.ipynb (process 1 of 2): ValueError: rank one fails on purpose" in res.stderr, \
        res.stdout[-2000:] + res.stderr[-3000:]
    deadline = time.time() + 10
    while _with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert _with_env(marker) == [], "a runner or kernel outlived the failed chain"


KERNEL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "id": "launch", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import numpy as np\nfrom mfutils.core.processes import gather_items, world\n"
                   "from mfutils.run.parallel import in_processes\n"
                   "def ranks():\n    return gather_items([world().rank])\n"
                   "result = in_processes(ranks, processes=2, threads=1)\n"
                   "assert result == [0, 1], f'ranks gathered from a kernel: {result}'\n"
                   "assert world().size == 1, 'the kernel itself stays alone'\n"
                   "print('ranks', result)"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@pytest.mark.chain
def test_in_processes_starts_its_group_from_a_notebook_kernel(tmp_path: Path) -> None:
    """accelerate's notebook_launcher, as its docs use it: from inside a Jupyter kernel (papermill runs one)."""
    import papermill as pm

    from mfutils.run.chain import kernel_name

    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    src.write_text(json.dumps(KERNEL_NOTEBOOK))
    pm.execute_notebook(str(src), str(dst), kernel_name=kernel_name(), progress_bar=False, cwd=str(tmp_path))
    outputs = json.loads(dst.read_text())["cells"][0]["outputs"]
    assert any("ranks [0, 1]" in "".join(o.get("text", "")) for o in outputs), outputs
