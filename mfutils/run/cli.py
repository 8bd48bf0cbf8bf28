"""The command line: ``python -m mfutils <command>`` (also installed as ``mf``). The Makefile is a thin front.

Commands
--------
info        what is installed, which models are available, what the chain has built
train       train the embedded default model (``make retrain``) and write its model card
card        (re)write the model card of a trained checkpoint (evaluation included)
eval        accuracy per category on fresh samples, with n and 95% intervals (``--json``: one JSON line)
reproduce   run the notebook chain with papermill and write paper/REPORT.md (``make reproduce``)
store-checked  copy the outputs of NBVAL_CHECK_OUTPUT cells of the last full run into the source notebooks

Every command has ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from mfutils import __version__
    from mfutils.run.chain import describe_chain
    from mfutils.model.loading import RANDOM_ARCHS
    from mfutils.core.paths import checkpoint_dir, display_path, repo_root

    print(f"mfutils {__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"repository: {repo_root()}")            # where it is on this machine: the one absolute path printed
    from mfutils.model.loading import DEFAULT_MODEL, SHIPPED
    from mfutils.model.smol import is_parts_folder

    for name, folder in SHIPPED.items():
        ck = checkpoint_dir(folder)
        there = (ck / "config.json").exists() or is_parts_folder(ck)
        print(f"shipped model {name!r}{' (default)' if name == DEFAULT_MODEL else ''}: {display_path(ck)} "
              f"({'present' if there else f'MISSING: run mf train --model {name}'})")
    print("random models: " + ", ".join(f"random:{a}" for a in RANDOM_ARCHS))
    print(describe_chain())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from mfutils.core.paths import display_path

    if args.model == "smol":
        return _train_smol(args)
    from mfutils.study.train import TrainConfig, train

    torch.manual_seed(args.seed)
    cfg = TrainConfig(seed=args.seed, steps=args.steps)
    command = "python -m mfutils " + " ".join(shlex.quote(a) for a in args.argv)
    out = Path(args.out or "checkpoints/tiny-llava")
    print(f"training the tiny model: {cfg.steps} steps of batch {cfg.batch_size} -> {display_path(out)}", flush=True)
    train(cfg, out, eval_n=args.monitor_n, command=command, progress=not args.no_progress)
    from mfutils.present.card import write_card

    write_card(out, n=args.eval_n, seed=args.eval_seed)
    print(f"wrote {display_path(out)} and its model card ({display_path(out / 'MODEL_CARD.md')})")
    return 0


def _train_smol(args: argparse.Namespace) -> int:
    from mfutils.core.paths import checkpoint_dir, display_path
    from mfutils.study.train_smol import SmolTrainConfig, train_smol

    cfg = SmolTrainConfig(seed=args.seed)
    out = Path(args.out) if args.out else checkpoint_dir("smol-llava")
    command = "python -m mfutils " + " ".join(shlex.quote(a) for a in args.argv)
    log = Path(args.log) if args.log else None
    print(f"training the SmolLM2 model: stages a1 {cfg.a1_steps}, a2 {cfg.a2_steps}, b {cfg.b_steps} steps "
          f"-> {display_path(out)}" + (f" (log: {display_path(log)})" if log else ""), flush=True)
    train_smol(cfg, out, eval_n=min(args.monitor_n, 32), command=command, progress=not args.no_progress,
               log_file=log)
    from mfutils.present.card_smol import write_smol_card
    write_smol_card(out, n=args.eval_n, seed=args.eval_seed)
    print(f"wrote {display_path(out)} and its model card ({display_path(out / 'MODEL_CARD.md')})")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from mfutils.core.paths import display_path
    from mfutils.present.card import write_card

    from mfutils.model.smol import is_parts_folder

    folder = Path(args.model)
    if is_parts_folder(folder):              # the pretrained-LM model (mf train --model smol)
        from mfutils.present.card_smol import write_smol_card

        write_smol_card(folder, n=args.n, seed=args.seed)
    else:
        write_card(folder, n=args.n, seed=args.seed)
    print(f"wrote {display_path(folder / 'MODEL_CARD.md')}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mfutils.study.evaluate import EVAL_CATEGORIES, evaluate
    from mfutils.model.loading import load_model

    if args.dataset == "mc2" and (not args.mc2_json or not args.coco_root):
        print("mf eval --dataset mc2 needs --mc2-json <evaluate_final.json> and --coco-root <COCO 2014 folder>",
              file=sys.stderr)
        return 2
    mm = load_model(args.model, device=args.device)
    t0 = time.time()
    if args.dataset == "mc2":
        from mfutils.data import mc2
        from mfutils.study.mc2_eval import evaluate_mc2, scorable

        records = mc2.load_records(args.mc2_json)[: args.n]
        images = mc2.find_images(records, args.coco_root)
        samples, dropped = scorable(mm, mc2.record_samples(records, images, form=args.form))
        if not samples:
            print(_unscorable_message(mm.name, len(records), dropped), file=sys.stderr)
            return 2
        res = evaluate_mc2(mm, samples, batch_size=args.batch_size)
        causes: dict[str, int] = {}
        for d in dropped:
            causes[d["cause"]] = causes.get(d["cause"], 0) + 1
        res.update({"dataset": "mc2", "form": args.form, "mc2_json": args.mc2_json,
                    "mc2_sha256": mc2.file_sha256(args.mc2_json), "n_unscorable": len(dropped),
                    "unscorable_by_cause": causes})
        cats: Sequence[str] = ("follow_image", "follow_text", "image_only", "text_only")
    else:
        res = evaluate(mm, n=args.n, seed=args.seed, batch_size=args.batch_size, progress=not args.json)
        res["dataset"] = "world"
        cats = EVAL_CATEGORIES
    res["wall_s"] = round(time.time() - t0, 2)
    if args.model.startswith("random:"):
        res["note"] = "random weights: smoke only"
    if not args.json:
        why = "".join(f", {k} {v}" for k, v in res.get("unscorable_by_cause", {}).items())
        what = (f"{res['n_records']} MC2 records ({args.form} form; {res.get('n_unscorable', 0)} samples unscorable{why})"
                if args.dataset == "mc2" else f"{args.n} fresh samples per category, seed {args.seed}")
        print(f"{mm.name}: {what} (Wilson 95% intervals)")
        for cat in cats:
            r = res[cat]
            print(f"  {cat:15s} {r['rate']:.3f}  [{r['lo']:.3f}, {r['hi']:.3f}]  ({r['k']}/{r['n']})")
    print(json.dumps(res) if args.json else f"  ({res['wall_s']} s)")
    return 0


def _unscorable_message(model: str, n_records: int, dropped: Sequence[dict]) -> str:
    """One line: no sample of the ``n_records`` MC2 records can be scored, with the first reason ``scorable`` gave."""
    first = dropped[0] if dropped else {"record": "?", "task": "?", "reason": "no samples"}
    why = first["reason"].split(". ", 1)[0].rstrip(".")
    if why == first["reason"] and len(why) >= 200:           # scorable keeps 200 characters: end on a whole word
        why = why.rsplit(" ", 1)[0] + " ..."
    return (f"error: none of the {len(dropped)} samples of the {n_records} MC2 records can be scored by {model}; "
            f"first: record {first['record']} ({first['task']}): {why}. Use a model "
            "whose tokenizer tells the two answers apart (random:<arch> models know only the synthetic world's "
            "words), or more records (--n)")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mfutils.core.processes import world
    from mfutils.run.chain import parse_parameter, run_chain

    if args.processes > 1 and world().size == 1:
        return _relaunch(args)
    if args.processes > 1 and world().size != args.processes:
        raise ValueError(f"--processes {args.processes} inside a group of {world().size} processes started by a "
                         "launcher: drop --processes (the launcher's process count is used)")

    params = dict(parse_parameter(t) for t in args.param)
    for name in ("dataset", "mc2_json", "coco_root"):  # passed only when given: the world needs none of them
        value = getattr(args, name, None)
        if value:
            params[name] = value
    if args.model:
        return run_chain(model=args.model, smoke=args.smoke, only=args.only, force=args.force, params=params)
    from mfutils.run.profiles import SHIPPED_ORDER

    for model in SHIPPED_ORDER:              # every shipped model: the pretrained-LM default, then the tiny contrast
        print(f"\n######## model {model} ########", flush=True)
        rc = run_chain(model=model, smoke=args.smoke, only=args.only, force=args.force, params=params)
        if rc:
            return rc
    return 0


def _relaunch(args: argparse.Namespace) -> int:
    """``mf reproduce --processes N``: the same command in N processes under torchrun (``run.parallel``),
    each with its share of this machine's cores (unless OMP_NUM_THREADS is set)."""
    import subprocess

    from mfutils.run.parallel import launch_argv

    argv, skip = [], False
    for a in args.argv:                       # the same arguments without --processes
        if skip:
            skip = False
            continue
        if a == "--processes":
            skip = True
            continue
        if a.startswith("--processes="):
            continue
        argv.append(a)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.processes)))
    print(f"running in {args.processes} processes ({env['OMP_NUM_THREADS']} threads each): torchrun", flush=True)
    return subprocess.run(launch_argv(args.processes, argv), env=env).returncode


def _cmd_store_checked(args: argparse.Namespace) -> int:
    from mfutils.run.outputs import store_checked_outputs

    changed = store_checked_outputs(args.model, smoke=args.smoke)
    print("updated: " + (", ".join(changed) if changed else "nothing (no executed copies or no checked cells)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mfutils.study.train import TrainConfig
    from mfutils.data.world import HELDOUT_SEEDS, TRAIN_SEED
    from mfutils.run.args import count, seed     # checked ranges: a bad number stops argparse with status 2

    p = argparse.ArgumentParser(prog="mf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="what is installed and built")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("train", help="train the default tiny model and write its model card",
                       description="Train the tiny Llava on the synthetic world (about 25 minutes on 2 cores) "
                                   "and write checkpoint + model card. The folder is replaced atomically.")
    s.add_argument("--model", choices=("tiny", "smol"), default="tiny",
                   help="tiny: from scratch (about 25 min); smol: SmolLM2-135M inside a Llava, two stages "
                        "(about 75 min on 2 cores) (default: %(default)s)")
    s.add_argument("--out", default="", help="checkpoint folder (default: checkpoints/tiny-llava or "
                                            "checkpoints/smol-llava)")
    s.add_argument("--log", default="", help="append every log point as a JSON line to this file (smol)")
    s.add_argument("--seed", type=seed, default=TRAIN_SEED, help="training seed (default: %(default)s)")
    s.add_argument("--steps", type=count, default=TrainConfig.steps, help="optimiser steps of batch 64 (default: %(default)s)")
    s.add_argument("--monitor-n", type=count, default=256, help="samples per category for the training curve")
    s.add_argument("--eval-n", type=count, default=1000, help="held-out samples per category for the card")
    s.add_argument("--eval-seed", type=seed, default=HELDOUT_SEEDS["eval"], help="held-out seed for the card")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("card", help="(re)write the model card of a checkpoint")
    s.add_argument("--model", default="checkpoints/tiny-llava",
                   help="checkpoint folder, a full one (tiny) or a parts one (checkpoints/smol-llava) "
                        "(default: %(default)s)")
    s.add_argument("--n", type=count, default=1000, help="held-out samples per category")
    s.add_argument("--seed", type=seed, default=HELDOUT_SEEDS["eval"], help="held-out seed")
    s.set_defaults(func=_cmd_card)

    s = sub.add_parser("eval", help="accuracy per category with n and 95%% intervals",
                       description="World: accuracy per category on fresh samples. MC2 (--dataset mc2): the "
                                   "modality-following ratio per instruction on the first --n records and the "
                                   "accuracy on their image-only and text-only versions.")
    s.add_argument("--model", default="smol", help="'smol' (the default), 'tiny', 'random:<arch>', a checkpoint folder or "
                                                  "a cached HF id (default: %(default)s)")
    s.add_argument("--dataset", choices=("world", "mc2"), default="world", help="(default: %(default)s)")
    s.add_argument("--mc2-json", default="", help="MC2's evaluate_final.json (with --dataset mc2)")
    s.add_argument("--coco-root", default="", help="folder of the MS-COCO 2014 images (with --dataset mc2)")
    s.add_argument("--form", choices=("open", "mc"), default="open",
                   help="MC2: open-ended answers (candidate lists) or A/B options in both orders (default: %(default)s)")
    s.add_argument("--n", type=count, default=1000, help="fresh samples per category / MC2 records (default: %(default)s)")
    s.add_argument("--seed", type=seed, default=HELDOUT_SEEDS["eval"], help="sample seed (default: %(default)s)")
    s.add_argument("--batch-size", type=count, default=128, help="samples per forward (default: %(default)s)")
    s.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto' (accelerate over the GPUs; default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("reproduce", help="run the notebook chain and write paper/REPORT.md")
    s.add_argument("--model", default="", help="model for every notebook (default: every shipped model, smol "
                                              "then tiny; paper/REPORT.md puts them side by side)")
    s.add_argument("--smoke", action="store_true", help="tiny sample counts (CI-sized run)")
    s.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (e.g. 00 01)")
    s.add_argument("--force", action="store_true",
                   help="recompute every notebook (default: skip notebooks whose inputs and outputs are unchanged)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a notebook parameter, checked against the notebooks' parameters cells (repeatable)")
    s.add_argument("--dataset", default=None, choices=("world", "mc2"), help="'world' (default) or 'mc2'")
    s.add_argument("--mc2-json", dest="mc2_json", default=None, help="the MC2 evaluation JSON (dataset mc2)")
    s.add_argument("--coco-root", dest="coco_root", default=None, help="folder of the COCO 2014 images (dataset mc2)")
    s.add_argument("--processes", type=count, default=1,
                   help="spread each notebook's analyses over N processes on this machine (torchrun; one GPU each "
                        "when there are GPUs); results equal one process's (default: %(default)s). Several "
                        "machines: accelerate launch, see the README's 'Many GPUs'")
    s.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser("store-checked", help="store the outputs of NBVAL_CHECK_OUTPUT cells in the sources",
                       description="After a deliberate change and a full `make reproduce`, copy the outputs of "
                                   "the cells marked # NBVAL_CHECK_OUTPUT from figures/<model>/notebooks/ into "
                                   "notebooks/, where nbval compares them.")
    s.add_argument("--model", default="smol")
    s.add_argument("--smoke", action="store_true", help="read the smoke run's executed copies (figures/<model>--smoke/)")
    s.set_defaults(func=_cmd_store_checked)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine a spinning torch thread pool
    # ran training 8x slower (measured); uncontended speed is unchanged. Must precede importing torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted. Results are written atomically; `make reproduce` resumes where this run stopped.",
              file=sys.stderr)
        return 130
    except Exception as exc:  # user errors: one clear line, no traceback wall (MF_DEBUG=1 shows it)
        if os.environ.get("MF_DEBUG") or not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(set MF_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    """Errors about the user's input or machine: mfutils' own error classes, files, memory."""
    import torch

    if isinstance(exc, (OSError, MemoryError, torch.OutOfMemoryError)):
        return True
    return any(c.__module__.startswith("mfutils") for c in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
