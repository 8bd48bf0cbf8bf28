"""Time each fast path of mfutils against its plain twin, in ONE run, and write benchmarks/RESULTS.md.

Usage (from the repository root)::

    python -m benchmarks.run                       # full: default model + random:qwen2_5_vl, smoke-chain memory
    python -m benchmarks.run --quick --out /tmp/r.md   # CI-sized smoke test of this script

What is measured, per model (``--models``, default ``tiny`` and ``random:qwen2_5_vl``):

- **sweep**: a full window-1 knockout sweep over ``edges.MAIN_EDGES``: naive (one full forward per
  edge x window, ``method="naive"``) / prefix reuse (``method="prefix"``) and / prefix reuse with condition
  batching (``batch_conditions=True``). Equality: max |margin difference| against the naive sweep.
- **head scoring**: exhaustive with one full forward per head (``method="full"``) and exhaustive with
  prefix reuse (the reference implementation) / attribution + verification (``heads.head_scores_fast``);
  top-5% set of the fast scores vs the exhaustive ones.
- **hook overhead**: a forward under a no-op knockout (empty block, every layer) and a no-op
  ``scale_heads`` (all alphas 1, which by design installs no hook) / the same forward unhooked; the logits
  must be bit-identical.
- **forward-equivalents** (machine independent): decoder work of each way in full forwards of one batch.
- **processes**: the window-1 sweep in 2 processes x 1 thread (gloo) / 1 process x 2 threads, start-up included,
  with each process's work in forward-equivalents and the equality with one process at one thread.
- **memory**: peak resident set size of ``python -m mfutils reproduce --smoke`` run in a subprocess with
  ``MF_OUT`` in a temporary folder (``--quick``: of a small sweep subprocess instead).

Timings interleave the two ways of a pair (A, B, A, B, ...), after one warm-up of each; the ratio is
reported as the median over repeats of the per-repeat ratio, with its min..max spread. Numbers from a
shared or busy machine are noisy: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("Targets", "Machine", "Knockout sweep", "Head scoring", "Hook overhead", "Forward-equivalents", "Memory",
            "Processes", "GPU", "Equality checks")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up each, then ``repeats`` rounds A, B, C, A, B, C, ..."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> dict[str, float]:
    """Median and min..max over repeats of slow_r / fast_r (same round r)."""
    r = [a / b for a, b in zip(times[slow], times[fast])]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r),
            "slow_s": statistics.median(times[slow]), "fast_s": statistics.median(times[fast])}


def fmt_ratio(r: dict[str, float]) -> str:
    return f"**{r['median']:.2f}x** ({r['min']:.2f}-{r['max']:.2f}, {r['n']} repeats)"


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mfutils", "benchmarks"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": commit, "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in load]}


# ------------------------------------------------------------------------------------------------
# Benchmarks
# ------------------------------------------------------------------------------------------------
def bench_sweep(mm: Any, samples: Sequence[Any], repeats: int, batch_size: int) -> dict[str, Any]:
    from mfutils.model.edges import MAIN_EDGES
    from mfutils.study.knockout import knockout_sweep

    edges = list(MAIN_EDGES)
    out: dict[str, Any] = {}

    def run(method: str, batched: bool) -> Callable[[], Any]:
        def fn() -> None:
            out[(method, batched)] = knockout_sweep(mm, samples, edges, k=1, batch_size=batch_size,
                                                    progress=False, method=method, batch_conditions=batched)
        return fn

    times = interleaved({"naive": run("naive", False), "prefix": run("prefix", False),
                         "prefix+batched": run("prefix", True)}, repeats)
    naive = out[("naive", False)].knocked
    diff = {k: float(np.nanmax(np.abs(v.knocked - naive))) if np.isfinite(naive).any() else 0.0
            for k, v in out.items()}
    same_nan = all(np.array_equal(np.isnan(v.knocked), np.isnan(naive)) for v in out.values())
    return {"n": len(samples), "edges": len(edges), "windows": mm.n_layers, "batch_size": batch_size,
            "naive/prefix": ratio(times, "naive", "prefix"),
            "naive/prefix+batched": ratio(times, "naive", "prefix+batched"),
            "prefix/prefix+batched": ratio(times, "prefix", "prefix+batched"),
            "max_abs_diff_prefix": diff[("prefix", False)], "max_abs_diff_batched": diff[("prefix", True)],
            "nan_pattern_equal": same_nan,
            "fe": {k[0] + ("+batched" if k[1] else ""): v.info["forward_equivalents"] for k, v in out.items()}}


def bench_heads(mm: Any, samples: Sequence[Any], repeats: int, batch_size: int, share: float = 0.05
                ) -> dict[str, Any]:
    from mfutils.measure.follow import follows
    from mfutils.measure.prepared import prepare
    from mfutils.study import scoring
    from mfutils.study.selection import top_heads

    follow = follows(mm, samples, batch_size=batch_size)
    ident = [s for s, f in zip(samples, follow.tolist()) if f] or list(samples)
    data = prepare(mm, ident, batch_size)
    out: dict[str, Any] = {}

    def ex(method: str) -> Callable[[], None]:
        def fn() -> None:
            out[method] = scoring.head_scores_exhaustive(mm, data, progress=False, method=method)
        return fn

    def fast() -> None:
        out["fast"] = scoring.head_scores_fast(mm, data, share=share, progress=False)

    times = interleaved({"exhaustive_full": ex("full"), "exhaustive_prefix": ex("prefix"), "fast": fast}, repeats)
    L, H = mm.n_layers, mm.n_heads
    f = out["fast"]
    top_fast, top_ex = top_heads(f.scores, share), top_heads(out["prefix"], share)
    v = f.verified
    n_batches = len(data.batches)
    return {"n": len(ident), "heads": L * H, "k": len(top_ex), "verified": int(v.sum()), "rounds": f.rounds,
            "full/fast": ratio(times, "exhaustive_full", "fast"),
            "prefix/fast": ratio(times, "exhaustive_prefix", "fast"),
            "full/prefix": ratio(times, "exhaustive_full", "exhaustive_prefix"),
            "top_equal": set(top_fast) == set(top_ex), "top_fast": top_fast, "top_exhaustive": top_ex,
            "top_overlap": len(set(top_fast) & set(top_ex)) / len(top_ex),
            "verified_max_abs_diff": float((f.scores[v] - out["prefix"][v]).abs().max()) if v.any() else 0.0,
            "full_vs_prefix_max_abs_diff": float((out["full"] - out["prefix"]).abs().max()),
            "fe": {"exhaustive_full": n_batches * (1 + L * H), "fast": f.forward_equivalents,
                   "exhaustive_prefix": scoring.exact_drops(mm, data, scoring.all_heads(mm), batch_size, "prefix",
                                                             False, "").forward_equivalents}}


def bench_hooks(mm: Any, samples: Sequence[Any], repeats: int, batch_size: int) -> dict[str, Any]:
    from mfutils.model.groups import encode
    from mfutils.model.hooks import knockout, scale_heads

    enc = encode(mm, [s.prompt for s in samples[:batch_size]]).to(mm.device)
    B, T = enc.groups.shape
    empty = torch.zeros(B, T, T, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def plain() -> None:
        out["plain"] = mm.model(**enc.inputs).logits

    @torch.no_grad()
    def hooked() -> None:
        with knockout(mm, empty, range(mm.n_layers)), scale_heads(mm, torch.ones(mm.n_layers, mm.n_heads)):
            out["hooked"] = mm.model(**enc.inputs).logits

    inner = max(1, 20 if len(samples) > 8 else 5)

    def many(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                fn()
        return run

    times = interleaved({"hooked": many(hooked), "plain": many(plain)}, repeats)
    return {"batch": B, "forwards_per_timing": inner, "hooked/plain": ratio(times, "hooked", "plain"),
            "bit_identical": bool(torch.equal(out["plain"], out["hooked"]))}


def _layer_calls(mm: Any) -> Any:
    """A context manager counting the decoder-layer calls of ``mm`` (prefix reruns run only some layers)."""
    from contextlib import contextmanager

    from mfutils.model.archs import get_module

    @contextmanager
    def counting() -> Any:
        count = [0]
        layers = get_module(mm.model, mm.spec.layers)
        handles = [layer.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for layer in layers]
        try:
            yield count
        finally:
            for h in handles:
                h.remove()
    return counting()


def _sweep_per_rank(mm: Any, samples: Sequence[Any], batch_size: int) -> tuple[Any, list[float]]:
    """The window-1 sweep, and each process's decoder work in forward-equivalents (layer calls / layers)."""
    from mfutils.core.processes import gather_items
    from mfutils.study.knockout import knockout_sweep

    with _layer_calls(mm) as count:
        sweep = knockout_sweep(mm, samples, k=1, batch_size=batch_size, progress=False)
    return sweep, gather_items([count[0] / mm.n_layers])


def bench_processes(mm: Any, samples: Sequence[Any], repeats: int, batch_size: int) -> dict[str, Any]:
    """The knockout sweep in 2 processes x 1 thread (``run.parallel.in_processes``, gloo, start-up included)
    against 1 process x 2 threads, interleaved; and 1 process x 1 thread for the equality check."""
    from mfutils.run.parallel import in_processes

    out: dict[str, Any] = {}
    before = torch.get_num_threads()

    def alone(threads: int) -> Callable[[], None]:
        def fn() -> None:
            torch.set_num_threads(threads)
            try:
                out[f"1x{threads}"] = _sweep_per_rank(mm, samples, batch_size)
            finally:
                torch.set_num_threads(before)
        return fn

    def two() -> None:
        out["2x1"] = in_processes(_sweep_per_rank, mm, samples, batch_size, processes=2, threads=1)

    times = interleaved({"1x2": alone(2), "2x1": two}, repeats)
    alone(1)()
    (s12, fe12), (s21, fe21), (s11, _) = out["1x2"], out["2x1"], out["1x1"]
    return {"n": len(samples), "batch_size": batch_size, "batches": -(-len(samples) // batch_size),
            "1x2/2x1": ratio(times, "1x2", "2x1"), "fe_per_rank": fe21, "fe_alone": fe12[0],
            "max_abs_diff_vs_1x1": float(np.nanmax(np.abs(s21.knocked - s11.knocked))),
            "max_abs_diff_vs_1x2": float(np.nanmax(np.abs(s21.knocked - s12.knocked)))}


_SWEEP_CHILD = """
import os, sys
from mfutils.model.edges import MAIN_EDGES
from mfutils.study.knockout import knockout_sweep
from mfutils.model.loading import load_model
from mfutils.data.world import make_split
mm = load_model(sys.argv[1])
knockout_sweep(mm, make_split("test", int(sys.argv[2])), MAIN_EDGES, k=1, progress=False)
"""


def peak_memory(quick: bool, model: str) -> dict[str, Any]:
    """Peak RSS (MiB) of a child process: the smoke chain, or (``quick``) a small sweep."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        env["MF_OUT"] = tmp
        if quick:
            cmd = [sys.executable, "-c", _SWEEP_CHILD, model, "8"]
            what = f"a window-1 sweep of 8 samples on {model} (--quick; not the chain)"
        else:
            cmd = [sys.executable, "-m", "mfutils", "reproduce", "--smoke"]
            what = "`python -m mfutils reproduce --smoke` (the smoke chain, default model)"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the maximum over every child waited for (KiB on Linux): the largest process
    # of the chain (papermill kernels are children of the runner and are included once they exit)
    return {"what": what, "peak_rss_mib": after / 1024, "previous_children_peak_mib": before / 1024,
            "returncode": proc.returncode, "wall_s": wall, "stderr_tail": proc.stderr[-400:] if proc.returncode else ""}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def gpu_section() -> list[str]:
    """The recorded GPU runs of ``benchmarks.gpu_llava_sweep`` (benchmarks/gpu_sweep*.json), as Markdown."""
    runs = [json.loads(p.read_text()) for p in sorted((REPO / "benchmarks").glob("gpu_sweep*.json"))]
    if not runs:
        return ["No GPU run recorded (no benchmarks/gpu_sweep*.json; run `python -m benchmarks.gpu_llava_sweep` "
                "on a GPU machine and save its JSON line there)."]
    lines = ["Recorded by `python -m benchmarks.gpu_llava_sweep` (randomly initialised model with the full "
             "LLaVA-1.5-7B config: 32 layers, hidden 4096, CLIP ViT-L/14-336 -> 576 image tokens; one batch; "
             "window-1 sweep over every layer); files benchmarks/gpu_sweep*.json.", "",
             "| device | dtype | torch / transformers | samples x tokens | conditions | naive s | prefix s | "
             "naive sample-windows/s | prefix sample-windows/s | ratio | max abs logit diff (mean) | "
             "same-path rounding floor | forward-equivalents naive / prefix | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in runs:
        lines.append(
            f"| {d['gpu']} | {d['dtype']} | {d['torch']} / {d['transformers']} | {d['n_samples']} x {d['seq_len']} | "
            f"{len(d['edges'])} edges x {d['n_windows']} layers | {d['naive_s']:.2f} | {d['prefix_s']:.2f} | "
            f"{d['naive_throughput']:.1f} | {d['prefix_throughput']:.1f} | **{d['speedup']:.1f}x** | "
            f"{d['max_abs_logit_diff']:.2e} ({d['mean_abs_logit_diff']:.1e}) | "
            f"{d.get('rounding_floor_no_intervention', float('nan')):.1e} | {d['fe_naive']} / {d['fe_prefix']} | "
            f"{(d.get('peak_gpu_mem_gib') or float('nan')):.1f} |")
    lines += ["", "Logits span about +-6 and single-layer knockouts move them by up to about 1 "
              "(`knockout_effect_across_layers` in the JSON). In float32 the prefix-reuse logits equal the naive ones "
              "to 5e-5, the size of the same-path floor (the clean rows recomputed from layer 0 against the full "
              "forward): the method is exact up to rounding. In bfloat16 they differ by up to 0.17 (mean 0.006), "
              "a few bf16 steps (one step is 0.03 at |logit| ~ 6) accumulated over 32 layers; there the same-path "
              "floor happens to be 0, so it does not isolate where the bf16 differences arise (different kernel "
              "shapes under a modified mask are the likely source). Use float32 where bit-level agreement matters."]
    return lines


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = ["# Benchmarks: fast paths against their plain twins", "",
             f"Written by `python -m benchmarks.run{' --quick' if doc['quick'] else ''}` in one run "
             f"({doc['wall_s']:.0f} s). Ratios are slow / fast: above 1 means the fast path is faster. Each is the "
             "median over interleaved repeats (A, B, A, B, ...) of the per-repeat ratio, with the min-max spread. "
             "Tests check equality only, never these timings.", ""]
    if doc.get("note"):
        lines += [f"Note: {doc['note']}.", ""]
    if doc["quick"]:
        lines += ["**--quick run: tiny sample counts for a smoke test of this script; the ratios mean little.**", ""]
    first = next(iter(doc["models"]))
    fm = doc["models"][first]
    targets = [
        ("full window-1 sweep, naive / prefix reuse, default model", fm["sweep"]["naive/prefix"]["median"], ">= 1.6x", 1.6),
        ("head scoring, exhaustive (one forward per head) / attribution + verify, default model",
         fm["heads"]["full/fast"]["median"], ">= 5x", 5.0),
    ]
    lines += [f"## Targets, on {first}", "", "| target | measured (median) | wanted | met |", "|---|---|---|---|"]
    lines += [f"| {t} | {v:.2f}x | {w} | {'yes' if v >= th else 'no'} |" for t, v, w, th in targets]
    worst = max(r["hooks"]["hooked/plain"]["median"] for r in doc["models"].values())
    lines += [f"| hook overhead, hooked / unhooked forward, worst model | {worst:.3f}x | <= 1.10x | "
              f"{'yes' if worst <= 1.10 else 'no'} |",
              f"| top-5% heads of attribution + verify equal to exhaustive, default model | "
              f"{'equal' if fm['heads']['top_equal'] else 'differs (overlap %.2f)' % fm['heads']['top_overlap']} | "
              "equal or reported | reported |", ""]
    pf = {name: r["heads"]["prefix/fast"]["median"] for name, r in doc["models"].items()}
    faster = [name for name, v in pf.items() if v < 1]
    lines += [f"Exhaustive scoring with prefix reuse (the reference `head_scores_exhaustive`, exact) against "
              f"attribution + verify: prefix / fast = {', '.join(f'{v:.2f}x on {k}' for k, v in pf.items())}; "
              f"exact scoring is the faster of the two on {', '.join(faster) if faster else 'none of these models'}. "
              "`heads.identify_heads` defaults to exact scoring; `method=\"fast\"` selects attribution + verify.", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    lines += ["", "## Knockout sweep", "",
              "Full window-1 sweep over the 8 main edges (every layer a window). naive: one full forward per "
              "(edge, window); prefix: `knockout_sweep(method=\"prefix\")` (clean prefix once per batch, only layers "
              ">= the window and rows >= the first cut query recomputed); batched: prefix + `batch_conditions=True`.",
              "", "| model | samples | naive s | prefix s | naive / prefix | naive / prefix+batched | "
              "prefix / prefix+batched |", "|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        s = r["sweep"]
        lines.append(f"| {name} | {s['n']} | {s['naive/prefix']['slow_s']:.2f} | {s['naive/prefix']['fast_s']:.2f} | "
                     f"{fmt_ratio(s['naive/prefix'])} | {fmt_ratio(s['naive/prefix+batched'])} | "
                     f"{fmt_ratio(s['prefix/prefix+batched'])} |")
    lines += ["", "## Head scoring", "",
              "exhaustive-full: one full forward per head per batch (the plain twin); exhaustive-prefix: the "
              "reference `head_scores_exhaustive` (prefix reuse: layers >= l at the answer rows); fast: "
              "`head_scores_fast` (attribution patching, then exact ablation of the top 3k candidates). Scored on "
              "the samples the model follows (as notebook 03).", "",
              "| model | samples | heads | verified | full / fast | prefix / fast | full / prefix | top-5% equal |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        h = r["heads"]
        eq = "yes" if h["top_equal"] else f"no (overlap {h['top_overlap']:.2f}: fast {h['top_fast']} vs exhaustive {h['top_exhaustive']})"
        lines.append(f"| {name} | {h['n']} | {h['heads']} | {h['verified']} | {fmt_ratio(h['full/fast'])} | "
                     f"{fmt_ratio(h['prefix/fast'])} | {fmt_ratio(h['full/prefix'])} | {eq} |")
    lines += ["", "## Hook overhead", "",
              "Forward under a no-op knockout (empty block, pre-hooks on every layer) and a no-op `scale_heads` "
              "(all alphas 1: by design it installs no hook) / the same forward unhooked.", "",
              "| model | batch | hooked / plain | logits bit-identical |", "|---|---|---|---|"]
    for name, r in doc["models"].items():
        k = r["hooks"]
        lines.append(f"| {name} | {k['batch']} | {fmt_ratio(k['hooked/plain'])} | {k['bit_identical']} |")
    lines += ["", "## Forward-equivalents", "",
              "Decoder work in full forwards of one batch, summed over batches (machine independent; the rerun of "
              "q of T rows through m of L layers counts m*q/(L*T); the attribution pass counts 3).", "",
              "| model | sweep naive | sweep prefix | sweep prefix+batched | heads exhaustive-full | "
              "heads exhaustive-prefix | heads fast |",
              "|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        fe, he = r["sweep"]["fe"], r["heads"]["fe"]
        lines.append(f"| {name} | {fe['naive']:.1f} | {fe['prefix']:.1f} | {fe['prefix+batched']:.1f} | "
                     f"{he['exhaustive_full']:.1f} | {he.get('exhaustive_prefix', float('nan')):.1f} | "
                     f"{he['fast']:.1f} |")
    mem = doc["memory"]
    lines += ["", "## Memory", "", f"Peak resident set size of {mem['what']}: **{mem['peak_rss_mib']:.0f} MiB** "
              f"(exit code {mem['returncode']}, {mem['wall_s']:.0f} s).", ""]
    if mem["stderr_tail"]:
        lines += ["```", mem["stderr_tail"], "```", ""]
    lines += ["## Processes", "",
              "The window-1 knockout sweep spread over 2 processes x 1 thread (`mfutils.run.parallel.in_processes`: "
              "gloo, batches b with b % 2 == rank, per-sample results gathered; process start-up included) against "
              "1 process x 2 threads, on this machine's cores. Ratio above 1: the two processes are faster. Work per "
              "process in forward-equivalents (decoder-layer calls / layers).", "",
              "| model | samples | batches | 1x2 s | 2x1 s | (1 process x 2 threads) / (2 processes x 1 thread) | "
              "work per process | work alone | max abs diff vs 1x1 | vs 1x2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        q = r["processes"]
        lines.append(f"| {name} | {q['n']} | {q['batches']} | {q['1x2/2x1']['slow_s']:.2f} | {q['1x2/2x1']['fast_s']:.2f} | "
                     f"{fmt_ratio(q['1x2/2x1'])} | {' + '.join(f'{x:.1f}' for x in q['fe_per_rank'])} | "
                     f"{q['fe_alone']:.1f} | {q['max_abs_diff_vs_1x1']:.1e} | {q['max_abs_diff_vs_1x2']:.1e} |")
    lines += ["", "## GPU: full-size LLaVA-1.5-7B sweep", ""] + gpu_section()
    lines += ["", "## Equality checks", "", "| check | value | passed |", "|---|---|---|"]
    for c in doc["checks"]:
        lines.append(f"| {c['name']} | {c['value']} | {'PASS' if c['passed'] else 'FAIL'} |")
    lines += ["", f"ALL EQUALITY CHECKS {'PASSED' if all(c['passed'] for c in doc['checks']) else 'FAILED'}", ""]
    return "\n".join(lines)


def checks(models: dict[str, Any], memory: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, r in models.items():
        s, h, k = r["sweep"], r["heads"], r["hooks"]
        out += [
            {"name": f"{name}: sweep prefix vs naive, max abs margin diff <= 1e-4", "value": f"{s['max_abs_diff_prefix']:.2e}",
             "passed": s["max_abs_diff_prefix"] <= 1e-4 and s["nan_pattern_equal"]},
            {"name": f"{name}: sweep prefix+batched vs naive, max abs margin diff <= 1e-4",
             "value": f"{s['max_abs_diff_batched']:.2e}", "passed": s["max_abs_diff_batched"] <= 1e-4},
            {"name": f"{name}: exhaustive full vs prefix, max abs score diff <= 1e-4",
             "value": f"{h['full_vs_prefix_max_abs_diff']:.2e}", "passed": h["full_vs_prefix_max_abs_diff"] <= 1e-4},
            {"name": f"{name}: verified fast scores equal exhaustive (<= 1e-4)", "value": f"{h['verified_max_abs_diff']:.2e}",
             "passed": h["verified_max_abs_diff"] <= 1e-4},
            {"name": f"{name}: no-op hooks leave logits bit-identical", "value": str(k["bit_identical"]),
             "passed": k["bit_identical"]},
            {"name": f"{name}: sweep in 2 processes vs 1 process, 1 thread each, max abs margin diff <= 1e-6",
             "value": f"{r['processes']['max_abs_diff_vs_1x1']:.2e}",
             "passed": r["processes"]["max_abs_diff_vs_1x1"] <= 1e-6},
            {"name": f"{name}: the 2 processes' work adds up to one process's (forward-equivalents)",
             "value": f"{sum(r['processes']['fe_per_rank']):.2f} vs {r['processes']['fe_alone']:.2f}",
             "passed": abs(sum(r["processes"]["fe_per_rank"]) - r["processes"]["fe_alone"]) < 1e-9},
        ]
    out.append({"name": "memory child process exited cleanly", "value": str(memory["returncode"]),
                "passed": memory["returncode"] == 0})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sample counts (CI smoke test of this script)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"), help="where to write the Markdown")
    p.add_argument("--models", nargs="+", default=["tiny", "random:qwen2_5_vl"])
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per pair (default 5, --quick 1)")
    p.add_argument("--samples", type=int, default=None, help="samples per model (default 64, --quick 6)")
    args = p.parse_args(argv)
    from mfutils import seed_everything
    from mfutils.model.loading import load_model
    from mfutils.data.world import make_split

    repeats = args.repeats or (1 if args.quick else 5)
    n = args.samples or (6 if args.quick else 64)
    t0 = time.perf_counter()
    seed_everything(0)
    doc: dict[str, Any] = {"quick": args.quick, "machine": machine(), "models": {}}
    for name in args.models:
        mm = load_model(name)
        print(f"[bench] {mm}", flush=True)
        batch = n
        doc["models"][name] = {
            "sweep": bench_sweep(mm, make_split("test", n), repeats, batch),
            "heads": bench_heads(mm, make_split("identify", n), repeats, batch),
            "hooks": bench_hooks(mm, make_split("test", n), repeats, batch),
            "processes": bench_processes(mm, make_split("test", n), repeats, max(1, n // 8)),
        }
        print(f"[bench] {name}: sweep {doc['models'][name]['sweep']['naive/prefix']['median']:.2f}x, heads "
              f"{doc['models'][name]['heads']['full/fast']['median']:.2f}x, hooks "
              f"{doc['models'][name]['hooks']['hooked/plain']['median']:.3f}x", flush=True)
    doc["memory"] = peak_memory(args.quick, args.models[0])
    doc["checks"] = checks(doc["models"], doc["memory"])
    doc["wall_s"] = time.perf_counter() - t0
    text = render(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    print(text)
    return 0 if all(c["passed"] for c in doc["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
