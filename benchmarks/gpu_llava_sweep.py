"""Knockout sweep on a randomly initialised model with the FULL LLaVA-1.5-7B config: naive vs prefix reuse.

No weights are needed: the model (Llama-2-7B text, CLIP ViT-L/14 at 336 px, mlp2x_gelu
projector) is built with random weights directly on the device in the chosen dtype (bf16 on a GPU; it is
never built on the CPU first). Then, for ``--samples`` synthetic world samples in one batch, a window-1
knockout sweep over every layer and one or two edges runs twice: naive (one full forward per edge x layer
under ``mfutils.model.hooks.knockout``) and with prefix reuse (``mfutils.model.hooks.prefix_trace`` once, then
``PrefixTrace.rerun`` per condition: layers >= the window, rows >= the first cut query). Prints ONE JSON
line (throughputs in sample-windows per second, their ratio, the max |answer-logit difference| between the
two ways, forward-equivalents, versions, device) and writes it to ``$OUT/gpu_sweep.json`` when ``OUT`` is
set.

Usage::

    python -m benchmarks.gpu_llava_sweep                          # full config, cuda, bfloat16
    python -m benchmarks.gpu_llava_sweep --config small --device cpu   # 2-layer shrunken config, float32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

EDGES = ("image->instruction", "instruction->last")


def llava_config(which: str, tokenizer: Any) -> tuple[Any, int, int]:
    """(LlavaConfig, image size, patch size): the LLaVA-1.5-7B config, or a 2-layer shrunken one."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tid = tokenizer.convert_tokens_to_ids
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if which == "full":            # llava-hf/llava-1.5-7b-hf: Llama-2-7B + CLIP ViT-L/14-336
        image, patch = 336, 14
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                           hidden_act="silu", tie_word_embeddings=False, **ids)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=image, patch_size=patch, projection_dim=768,
                                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
    elif which == "small":
        image, patch = 64, 16
        text = LlamaConfig(vocab_size=max(len(tokenizer), 128), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=512, rms_norm_eps=1e-5,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **ids)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=image, patch_size=patch, projection_dim=32, hidden_act="quick_gelu")
    else:
        raise ValueError(f"--config must be 'full' or 'small', got {which!r}")
    n_image = (image // patch) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tid("<image>"),
                      projector_hidden_act="gelu", vision_feature_select_strategy="default",
                      vision_feature_layer=-2, image_seq_length=n_image, multimodal_projector_bias=True)
    return cfg, image, patch


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(which: str, device: str, dtype: torch.dtype) -> Any:
    """An ``mfutils.model.loading.MLLM`` with random weights, created on ``device`` in ``dtype``."""
    import transformers

    from mfutils.model.archs import ARCHS
    from mfutils.model.loading import MLLM
    from mfutils.model.tiny import build_processor, build_word_tokenizer
    from mfutils.data.world import vocabulary

    tok = build_word_tokenizer(vocabulary(), image_token="<image>")
    cfg, image, patch = llava_config(which, tok)
    processor = build_processor("llava", tok, image_size=image)
    processor.patch_size = patch                 # build_processor assumes 16 image tokens; the 7B has 576
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = transformers.LlavaForConditionalGeneration(cfg)
    model.eval()
    return MLLM(model=model, processor=processor, spec=ARCHS["llava"], name=f"random:llava-1.5-7b-config({which})")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def sweep(mm: Any, enc: Any, cuts: Sequence[torch.Tensor], way: str) -> tuple[torch.Tensor, float]:
    """Answer logits [E, L, B, V] (float32, on CPU) of a window-1 sweep, and the forward-equivalents spent."""
    from mfutils.model.hooks import knockout
    from mfutils.model.prefix import prefix_trace

    L = mm.n_layers
    out = []
    if way == "naive":
        work = 1.0
        mm.model(**enc.inputs, logits_to_keep=1)                 # the clean forward the sweep compares to
        for cut in cuts:
            row = []
            for l in range(L):
                with knockout(mm, cut, [l]):
                    row.append(mm.model(**enc.inputs, logits_to_keep=1).logits[:, -1].float().cpu())
                work += 1.0
            out.append(torch.stack(row))
    else:
        trace = prefix_trace(mm, enc)
        for cut in cuts:
            out.append(torch.stack([trace.rerun(l, l + 1, cut=cut).cpu() for l in range(L)]))
        work = trace.work
        del trace
    return torch.stack(out), work


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_llava_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("full", "small"), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: bfloat16 on cuda, else float32)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--edges", nargs="+", default=list(EDGES))
    p.add_argument("--json-name", default="gpu_sweep.json", help="file name under $OUT")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    import transformers

    from mfutils.model.edges import parse_edge
    from mfutils.model.groups import edge_cut
    from mfutils.model.groups import encode
    from mfutils.data.world import make_split

    t0 = time.perf_counter()
    mm = build(args.config, args.device, dtype)
    sync(args.device)
    t_build = time.perf_counter() - t0
    samples = make_split("test", args.samples)
    enc = encode(mm, [s.prompt for s in samples]).to(mm.device)
    if "pixel_values" in enc.inputs:
        enc.inputs["pixel_values"] = enc.inputs["pixel_values"].to(dtype)
    groups = enc.groups.to("cpu")
    cuts = [edge_cut(groups, *parse_edge(e))[0].to(mm.device) for e in args.edges]
    # warm-up (kernels, allocator): one knocked-out forward and one rerun
    from mfutils.model.hooks import knockout
    from mfutils.model.prefix import prefix_trace
    with torch.no_grad():
        with knockout(mm, cuts[0], [0]):
            mm.model(**enc.inputs, logits_to_keep=1)
        prefix_trace(mm, enc).rerun(mm.n_layers - 1, cut=cuts[0])
    sync(args.device)
    times, logits, work = {}, {}, {}
    for way in ("naive", "prefix"):
        sync(args.device)
        t = time.perf_counter()
        logits[way], work[way] = sweep(mm, enc, cuts, way)
        sync(args.device)
        times[way] = time.perf_counter() - t
    # numerical floor of the dtype: the clean logits recomputed from layer 0 for the trailing rows only (no
    # intervention at all) against the full forward; prefix-vs-naive differences of this size are rounding
    with torch.no_grad():
        trace = prefix_trace(mm, enc)
        p0 = int(cuts[0].any(-1).any(0).nonzero()[0])
        floor = float((trace.rerun(0, rows_from=p0) - trace.logits).abs().max())
        del trace
    units = len(samples) * mm.n_layers * len(cuts)           # sample-windows (per edge) of the sweep
    diff = (logits["naive"] - logits["prefix"]).abs()
    effect = (logits["naive"] - logits["naive"][:, :1]).abs().max()
    doc = {
        "config": args.config, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "n_layers": mm.n_layers, "hidden_size": mm.hidden_size, "n_heads": mm.n_heads,
        "n_params": sum(p.numel() for p in mm.model.parameters()),
        "n_samples": len(samples), "seq_len": int(enc.groups.shape[1]),
        "n_image_tokens": int(enc.groups["image"].sum(-1).max()), "edges": list(args.edges),
        "n_windows": mm.n_layers, "build_s": round(t_build, 2),
        "naive_s": round(times["naive"], 3), "prefix_s": round(times["prefix"], 3),
        "naive_throughput": units / times["naive"], "prefix_throughput": units / times["prefix"],
        "speedup": times["naive"] / times["prefix"],
        "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
        "max_abs_logit_range": float(logits["naive"].abs().max()), "rounding_floor_no_intervention": floor, "knockout_effect_across_layers": float(effect),
        "fe_naive": round(work["naive"], 2), "fe_prefix": round(work["prefix"], 2),
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if args.device.startswith("cuda") else None,
    }
    line = json.dumps(doc)
    print(line, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], args.json_name).write_text(line + "\n")
    return doc


if __name__ == "__main__":
    main()
