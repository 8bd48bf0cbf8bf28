"""Interventions: each equals a direct computation, does nothing when it should do nothing, and never leaks."""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from typing import Any, Callable, Iterator

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfutils.model.batching import BatchOutOfMemoryError, is_out_of_memory, run_batched
from mfutils.model.groups import Encoded, edge_block, encode
from mfutils.model.hooks import (KnockoutError, active_hooks, capture, check_head, knockout, logit_lens,
                                 registered, residual_stream, scale_heads)
from mfutils.model.prefix import prefix_trace
from mfutils.measure.answers import answer_logits
from mfutils.model.loading import MLLM, RANDOM_ARCHS
from mfutils.data.prompts import GROUP_NAMES, Prompt


@pytest.fixture
def enc(mm: MLLM, prompts: list[Prompt]) -> Encoded:
    return encode(mm, prompts)


@torch.no_grad()
def logits(mm: MLLM, enc: Encoded, **kwargs: Any) -> torch.Tensor:
    return mm.model(**enc.inputs, **kwargs).logits


def all_layers(mm: MLLM) -> range:
    return range(mm.n_layers)


# ------------------------------------------------------------------------------------------------
# Knockout
# ------------------------------------------------------------------------------------------------
def test_noop_interventions_are_bit_identical(mm: MLLM, enc: Encoded) -> None:
    base = logits(mm, enc)
    B, T = enc.groups.shape
    with knockout(mm, torch.zeros(B, T, T, dtype=torch.bool), all_layers(mm)):
        assert torch.equal(logits(mm, enc), base)
    with scale_heads(mm, torch.ones(mm.n_layers, mm.n_heads)), scale_heads(mm, {(1, 2): 1.0}):
        assert torch.equal(logits(mm, enc), base)
    # a heads-restricted knockout of a block that is empty anyway
    with knockout(mm, edge_block(enc.groups, "image", "last") & False, [0], heads=[1]):
        assert torch.equal(logits(mm, enc), base)


def test_knockout_changes_only_the_target(mm: MLLM, enc: Encoded) -> None:
    g = enc.groups
    base = logits(mm, enc)
    with knockout(mm, edge_block(g, "image", "last"), all_layers(mm)):
        cut = logits(mm, enc)
    others = ~g["last"] & ~g.pad       # eager's padded query rows attend everywhere (uniformly): skip them
    assert torch.equal(cut[others], base[others])
    assert (cut[g["last"]] - base[g["last"]]).abs().amax(-1).gt(1e-4).all()
    # a mid-prompt target: positions before it are untouched, its own logits change
    with knockout(mm, edge_block(g, "context", "instruction"), all_layers(mm)):
        cut = logits(mm, enc)
    first = g["instruction"].long().argmax(-1)
    for b in range(len(first)):
        before = ~g.pad[b, : first[b]]
        assert torch.equal(cut[b, : first[b]][before], base[b, : first[b]][before])
    assert not torch.allclose(cut[g["instruction"]], base[g["instruction"]], atol=1e-4)


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_knockout_zeroes_attention_on_cut_edges(tiny_models: Callable[[str, str], MLLM], arch: str,
                                                prompts: list[Prompt]) -> None:
    mm = tiny_models(arch, "eager")
    enc = encode(mm, prompts)
    block = edge_block(enc.groups, "image", ["instruction", "last"])
    edges = block[:, None].expand(-1, mm.n_heads, -1, -1)
    with torch.no_grad():
        base = mm.model(**enc.inputs, output_attentions=True).attentions
        with knockout(mm, block, layers=[1, 2]):
            att = mm.model(**enc.inputs, output_attentions=True).attentions
    assert torch.equal(att[0], base[0])
    for layer in (1, 2):
        assert att[layer][edges].eq(0).all()
        assert att[layer][~edges].ne(base[layer][~edges]).any()
    for layer in (0, 3):
        assert att[layer][edges].gt(0).all()


def test_eager_and_sdpa_agree_under_knockout(tiny_models: Callable[[str, str], MLLM],
                                             prompts: list[Prompt]) -> None:
    for arch in RANDOM_ARCHS:
        # the full batch (padding: a bool mask under sdpa) and one prompt (sdpa passes no mask at all)
        for batch in (prompts, prompts[:1]):
            results = []
            for impl in ("sdpa", "eager"):
                mm = tiny_models(arch, impl)
                enc = encode(mm, batch)
                with knockout(mm, edge_block(enc.groups, ["image", "context"], ["question", "last"]), [0, 2]):
                    results.append(logits(mm, enc)[~enc.groups.pad])
            base = logits(mm, enc)[~enc.groups.pad]
            assert (results[0] - results[1]).abs().max() <= 1e-4, arch
            assert (results[0] - base).abs().max() > 1e-3, arch


def test_knockout_heads(mm: MLLM, enc: Encoded) -> None:
    block = edge_block(enc.groups, ["image", "context"], "last")
    layers = [0, 1]
    with knockout(mm, block, layers):
        plain = logits(mm, enc)
    with knockout(mm, block, layers, heads=range(mm.n_heads)):
        every = logits(mm, enc)
    with knockout(mm, block, layers, heads=[0, 2]):
        some = logits(mm, enc)
    assert torch.allclose(every, plain, atol=1e-6, rtol=0)
    last = enc.groups["last"]
    assert (some[last] - plain[last]).abs().max() > 1e-4
    assert (some[last] - logits(mm, enc)[last]).abs().max() > 1e-4


def test_knockout_stranded_query_raises(mm: MLLM, enc: Encoded) -> None:
    B, T = enc.groups.shape
    block = torch.zeros(B, T, T, dtype=torch.bool)
    block[2, enc.groups.last_index()[2], :] = True          # the last token of sample 2 loses every key
    n = active_hooks(mm)
    with pytest.raises(KnockoutError, match=rf"query position {T - 1} of sample 2 .*layer 1.*itself"):
        with knockout(mm, block, [1, 3]):
            logits(mm, enc)
    with pytest.raises(KnockoutError, match=r"sample 2 .*head 3"):
        with knockout(mm, block, [0], heads=[3]):
            logits(mm, enc)
    assert active_hooks(mm) == n


def test_knockout_rejects_bad_arguments(mm: MLLM, enc: Encoded, monkeypatch: pytest.MonkeyPatch) -> None:
    block = edge_block(enc.groups, "image", "last")
    with pytest.raises(ValueError, match="BoolTensor"):
        knockout(mm, block.float(), [0]).__enter__()
    with pytest.raises(ValueError, match="out of range"):
        knockout(mm, block, [mm.n_layers]).__enter__()
    with pytest.raises(ValueError, match="heads"):
        knockout(mm, block, [0], heads=[mm.n_heads]).__enter__()
    with pytest.raises(ValueError, match="covers 3 samples"), knockout(mm, block[:3], [0]):
        logits(mm, enc)
    monkeypatch.setattr(mm.text_config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="flash_attention_2"):
        knockout(mm, block, [0]).__enter__()


# ------------------------------------------------------------------------------------------------
# Head scaling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.5])
def test_scale_heads_equals_weight_edit(mm: MLLM, enc: Encoded, alpha: float) -> None:
    layer, head, hd = 1, 2, mm.head_dim
    with scale_heads(mm, {(layer, head): alpha}):
        hooked = logits(mm, enc)
    weight = mm.o_proj(layer).weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, head * hd:(head + 1) * hd] *= alpha
        edited = logits(mm, enc)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert torch.allclose(hooked, edited, atol=1e-5, rtol=0)
    assert (hooked - logits(mm, enc)).abs().max() > 1e-4


def test_scale_heads_at_positions(mm: MLLM, enc: Encoded) -> None:
    g = enc.groups
    positions = g.union("question", "last")
    base = logits(mm, enc)
    with scale_heads(mm, {(0, 1): 0.0, (2, 3): 2.5}, positions=positions):
        scaled = logits(mm, enc)
    first = positions.long().argmax(-1)
    for b in range(len(first)):   # eager's padded query rows attend everywhere (uniformly): skip them
        before = ~g.pad[b, : first[b]]
        assert torch.equal(scaled[b, : first[b]][before], base[b, : first[b]][before])
    assert (scaled[positions] - base[positions]).abs().amax(-1).gt(1e-4).all()


def test_blocking_every_head_removes_attention(mm: MLLM, enc: Encoded) -> None:
    layer = 2

    def zero_attention(module: torch.nn.Module, args: Any, output: Any) -> Any:
        return (torch.zeros_like(output[0]), *output[1:])

    handle = mm.attn(layer).register_forward_hook(zero_attention)
    try:
        removed = logits(mm, enc)
    finally:
        handle.remove()
    alphas = torch.ones(mm.n_layers, mm.n_heads)
    alphas[layer] = 0
    with scale_heads(mm, alphas):
        blocked = logits(mm, enc)
    assert torch.equal(blocked, removed)


def test_scale_heads_rejects_bad_arguments(mm: MLLM) -> None:
    with pytest.raises(ValueError, match="out of range"):
        scale_heads(mm, {(0, mm.n_heads): 0.0}).__enter__()
    with pytest.raises(ValueError, match="shape"):
        scale_heads(mm, torch.ones(mm.n_layers, mm.n_heads + 1)).__enter__()


# ------------------------------------------------------------------------------------------------
# Capture, residual stream, logit lens
# ------------------------------------------------------------------------------------------------
def test_capture_decomposes_the_residual_stream(mm: MLLM, enc: Encoded) -> None:
    L = mm.n_layers
    with torch.no_grad(), capture(mm, ("attn", "mlp", "resid")) as cap:
        out = mm.model(**enc.inputs, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == L + 1 and sorted(cap.attn) == sorted(cap.mlp) == list(range(L))
    recon = hidden[0] + sum(cap.attn[l] + cap.mlp[l] for l in range(L))
    assert torch.allclose(recon, cap.resid[L], atol=1e-4, rtol=0)
    # transformers 5 returns the final-normed state as hidden_states[-1]; the others are un-normed
    assert torch.equal(hidden[-1], mm.final_norm(cap.resid[L]))
    resid = residual_stream(mm, enc)
    assert resid.shape == (L + 1, *enc.groups.shape, mm.hidden_size)
    for l in range(L):
        assert torch.equal(resid[l], hidden[l])
    with torch.no_grad():
        assert torch.allclose(logit_lens(mm, resid[-1]), out.logits, atol=1e-5, rtol=0)
        assert logit_lens(mm, resid).shape == (L + 1, *out.logits.shape)


def test_capture_rejects_unknown_parts(mm: MLLM) -> None:
    with pytest.raises(ValueError, match="cannot capture"):
        capture(mm, ("attn", "heads")).__enter__()


# ------------------------------------------------------------------------------------------------
# No leaks
# ------------------------------------------------------------------------------------------------
def contexts(mm: MLLM, enc: Encoded) -> Iterator[tuple[str, Callable[[], AbstractContextManager[Any]]]]:
    block = edge_block(enc.groups, "image", "last")
    yield "knockout", lambda: knockout(mm, block, all_layers(mm))
    yield "knockout-heads", lambda: knockout(mm, block, [1], heads=[0])
    yield "scale_heads", lambda: scale_heads(mm, {(0, 0): 0.0, (3, 1): 2.0}, positions=enc.groups["last"])
    yield "capture", lambda: capture(mm, ("attn", "mlp", "resid"))


def test_no_hook_left_after_exception(mm: MLLM, enc: Encoded) -> None:
    n = active_hooks(mm)
    for name, make in contexts(mm, enc):
        with pytest.raises(RuntimeError, match="boom"), make():
            assert active_hooks(mm) > n, name
            logits(mm, enc)
            raise RuntimeError("boom")
        assert active_hooks(mm) == n, name
    # all of them nested, failing inside the innermost forward
    with pytest.raises(RuntimeError, match="inner"), ExitStack() as stack:
        for _, make in contexts(mm, enc):
            stack.enter_context(make())

        def fail(module: torch.nn.Module, args: Any) -> None:
            raise RuntimeError("inner")

        stack.callback(mm.mlp(3).register_forward_pre_hook(fail).remove)
        logits(mm, enc)
    assert active_hooks(mm) == n



# ------------------------------------------------------------------------------------------------
# Prefix reuse: reruns equal full forwards under the same interventions
# ------------------------------------------------------------------------------------------------
def no_self(block: torch.Tensor) -> torch.Tensor:
    return block & ~torch.eye(block.shape[-1], dtype=torch.bool)


def test_registered_removes_every_handle_also_when_registering_fails(mm_arch: MLLM) -> None:
    before = active_hooks(mm_arch)

    def handles() -> Iterator[Any]:
        yield mm_arch.attn(0).register_forward_hook(lambda *a: None)
        yield mm_arch.mlp(0).register_forward_hook(lambda *a: None)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with registered(handles()):
            pass
    assert active_hooks(mm_arch) == before
    with registered(mm_arch.attn(l).register_forward_hook(lambda *a: None) for l in range(mm_arch.n_layers)):
        assert active_hooks(mm_arch) == before + mm_arch.n_layers
    assert active_hooks(mm_arch) == before


@torch.no_grad()
def test_prefix_trace_equals_full_forwards(mm: MLLM, enc: Encoded) -> None:
    """Every architecture x attention implementation: knockouts, batched knockouts, head scaling."""
    g = enc.groups
    trace = prefix_trace(mm, enc)
    base = answer_logits(mm, enc).float()
    assert torch.equal(trace.logits, base)
    n = active_hooks(mm)
    cuts = [no_self(edge_block(g, ["image", "context"], "instruction")), edge_block(g, "image", "last"),
            edge_block(g, "question", "last")]
    for start, stop in ((0, 1), (1, 3), (mm.n_layers - 1, mm.n_layers)):
        refs = []
        for cut in cuts:
            with knockout(mm, cut, range(start, stop)):
                refs.append(answer_logits(mm, enc).float())
            got = trace.rerun(start, stop, cut=cut)                      # rows from the first cut query
            assert (got - refs[-1]).abs().max() <= 1e-4, (start, stop)
        batched = trace.rerun_many(start, stop, cuts)
        assert batched.shape == (len(cuts), *base.shape)
        for ref, got in zip(refs, batched):
            assert (got - ref).abs().max() <= 1e-4
    assert (refs[1] - base).abs().max() > 1e-3                           # the knockouts did something
    with knockout(mm, cuts[1], [1], heads=[0, 2]):
        ref = answer_logits(mm, enc).float()
    assert (trace.rerun(1, 2, cut=cuts[1], heads=[0, 2]) - ref).abs().max() <= 1e-4
    for positions, rows_from in ((g["last"], int(trace.last.min())), (None, 0)):
        with scale_heads(mm, {(2, 1): 0.0, (3, 0): 3.0}, positions=positions):
            ref = answer_logits(mm, enc).float()
            got = trace.rerun(2, rows_from=rows_from)
        assert (got - ref).abs().max() <= 1e-4 and (ref - base).abs().max() > 1e-4
    empty = torch.zeros_like(cuts[0])                                   # a cut of nothing under head scaling
    with scale_heads(mm, {(2, 1): 0.0}):
        ref = answer_logits(mm, enc).float()
        got = trace.rerun_many(0, 1, [empty, empty])
    assert (got - ref[None]).abs().max() <= 1e-4 and (ref - base).abs().max() > 1e-4
    assert torch.equal(trace.rerun_many(0, 1, [empty]), base[None])      # no hook in force: the clean logits
    assert active_hooks(mm) == n                                         # reruns leave no hook behind


@torch.no_grad()
def test_prefix_trace_rejects_bad_windows_and_rows(mm_arch: MLLM, prompts: list[Prompt]) -> None:
    enc = encode(mm_arch, prompts)
    trace = prefix_trace(mm_arch, enc)
    L = mm_arch.n_layers
    with pytest.raises(ValueError, match=rf"window \[0, {L + 1}\) out of range: the model has {L} layers"):
        trace.rerun(0, L + 1)
    with pytest.raises(ValueError, match="out of range"):
        trace.rerun(L)
    with pytest.raises(ValueError, match="rows_from"):
        trace.rerun(0, rows_from=int(trace.last.min()) + 1)
    with pytest.raises(ValueError, match="before rows_from"):
        trace.rerun(0, 1, cut=edge_block(enc.groups, "image", ["instruction", "last"]),
                    rows_from=int(trace.last.min()))
    with pytest.raises(ValueError, match=r"BoolTensor \[B, T, T\]"):
        trace.rerun(0, 1, cut=edge_block(enc.groups, "image", "last")[:2])
    slim = prefix_trace(mm_arch, enc, keep_kv=False)
    with pytest.raises(ValueError, match="keep_kv=True"):
        slim.rerun(0, 1, cut=edge_block(enc.groups, "image", "last"))
    assert torch.equal(slim.rerun(0), trace.rerun(0))


# ------------------------------------------------------------------------------------------------
# clear errors for bad hook arguments
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [-0.5, float("nan"), float("inf")])
def test_scale_heads_rejects_negative_or_non_finite_alpha(mm_arch: MLLM, alpha: float) -> None:
    n = active_hooks(mm_arch)
    with pytest.raises(ValueError, match=r"alpha .* for head \(1, 2\) is not allowed: alpha must be finite and >= 0"):
        scale_heads(mm_arch, {(1, 2): alpha}).__enter__()
    table = torch.ones(mm_arch.n_layers, mm_arch.n_heads)
    table[0, 3] = alpha
    with pytest.raises(ValueError, match=r"head \(0, 3\)"):
        scale_heads(mm_arch, table).__enter__()
    assert active_hooks(mm_arch) == n


def test_head_out_of_range_names_the_valid_range(mm_arch: MLLM) -> None:
    L, H = mm_arch.n_layers, mm_arch.n_heads
    for bad in ((L, 0), (0, H), (-1, 0)):
        with pytest.raises(ValueError, match=rf"valid heads are \(layer 0..{L - 1}, head 0..{H - 1}\)"):
            check_head(mm_arch, bad)
        with pytest.raises(ValueError, match=rf"layer 0..{L - 1}, head 0..{H - 1}"):
            scale_heads(mm_arch, {bad: 0.0}).__enter__()
    assert check_head(mm_arch, (L - 1, H - 1)) == (L - 1, H - 1)


def test_knockout_window_larger_than_the_model(mm_arch: MLLM, prompts: list[Prompt]) -> None:
    enc = encode(mm_arch, prompts)
    block = edge_block(enc.groups, "image", "last")
    L = mm_arch.n_layers
    with pytest.raises(ValueError, match=rf"layers \[{L}\] out of range: the model has {L} layers, valid layers are "
                                         rf"0..{L - 1}"):
        knockout(mm_arch, block, range(L + 1)).__enter__()
    with pytest.raises(ValueError, match=rf"0..{mm_arch.n_heads - 1}"):
        knockout(mm_arch, block, [0], heads=[-1]).__enter__()


# ------------------------------------------------------------------------------------------------
# out of memory -> retry at half the batch size
# ------------------------------------------------------------------------------------------------
def fake_model(limit: int, calls: list[tuple[int, int]], error: type[BaseException] | None = None) -> Any:
    """fn(start, stop) that runs out of memory on more than ``limit`` items and returns the range."""

    def fn(start: int, stop: int) -> list[int]:
        calls.append((start, stop))
        if stop - start > limit:
            if error is not None:
                raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate; out of memory")
        return list(range(start, stop))

    return fn


@pytest.mark.parametrize("error", [None, getattr(torch, "OutOfMemoryError", RuntimeError)])
def test_run_batched_halves_the_batch_on_out_of_memory(error: type[BaseException] | None) -> None:
    calls: list[tuple[int, int]] = []
    with pytest.warns(RuntimeWarning) as record:
        out = run_batched(fake_model(3, calls, error), 20, 16, desc="test loop")
    assert [i for part in out for i in part] == list(range(20))               # every item, once, in order
    messages = [str(w.message) for w in record]
    assert messages[0].startswith("out of memory at batch size 16; retrying at 8")
    assert messages[1].startswith("out of memory at batch size 8; retrying at 4")
    assert messages[2].startswith("out of memory at batch size 4; retrying at 2")
    assert len(messages) == 3 and all(b - a <= 2 for a, b in calls[3:])     # the smaller size is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_batched(fake_model(100, [], error), 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_run_batched_gives_up_at_one_sample_and_passes_other_errors() -> None:
    with pytest.warns(RuntimeWarning), pytest.raises(BatchOutOfMemoryError, match="batch of 1 sample in sweep.*device"):
        run_batched(fake_model(0, []), 5, 4, desc="sweep")

    def broken(start: int, stop: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batched(broken, 5, 4)
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    with pytest.raises(ValueError, match="batch_size"):
        run_batched(broken, 5, 0)


# ------------------------------------------------------------------------------------------------
# property tests (random groups, layers and heads)
# ------------------------------------------------------------------------------------------------
PROPERTY = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GROUPS = [g for g in GROUP_NAMES if g not in ("system",)]


@PROPERTY
@given(data=st.data())
def test_property_noop_interventions_are_bit_identical(tiny_models: Any, prompts: list[Prompt],
                                                       data: st.DataObject) -> None:
    arch = data.draw(st.sampled_from(RANDOM_ARCHS))
    mm = tiny_models(arch, data.draw(st.sampled_from(["sdpa", "eager"])))
    enc = encode(mm, prompts)
    layers = data.draw(st.lists(st.integers(0, mm.n_layers - 1), min_size=1, max_size=mm.n_layers))
    heads = data.draw(st.none() | st.lists(st.integers(0, mm.n_heads - 1), min_size=1, max_size=mm.n_heads))
    chosen = data.draw(st.lists(st.tuples(st.integers(0, mm.n_layers - 1), st.integers(0, mm.n_heads - 1)),
                                min_size=1, max_size=6))
    src = data.draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True))
    dst = data.draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True))
    base = logits(mm, enc)
    empty = edge_block(enc.groups, src, dst) & False                  # random groups, nothing cut
    with knockout(mm, empty, layers, heads=heads), scale_heads(mm, {h: 1.0 for h in chosen}):
        assert torch.equal(logits(mm, enc), base)


@PROPERTY
@given(data=st.data())
def test_property_interventions_are_local_in_depth(tiny_models: Any, prompts: list[Prompt],
                                                   data: st.DataObject) -> None:
    """A knockout of layers >= l leaves the residual stream entering l unchanged; so does scaling heads
    of layer l (and every earlier layer's input)."""
    mm = tiny_models(data.draw(st.sampled_from(RANDOM_ARCHS)), data.draw(st.sampled_from(["sdpa", "eager"])))
    enc = encode(mm, prompts)
    g = enc.groups
    L = mm.n_layers
    l = data.draw(st.integers(0, L - 1))
    layers = data.draw(st.lists(st.integers(l, L - 1), min_size=1, max_size=L)) + [l]
    src = data.draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True))
    dst = data.draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True))
    block = edge_block(g, src, dst) & torch.ones(g.shape[1], g.shape[1], dtype=torch.bool).tril(-1)
    block &= ~g.pad[:, None, :] & ~g.pad[:, :, None]
    head = data.draw(st.integers(0, mm.n_heads - 1))
    alpha = data.draw(st.sampled_from([0.0, 0.5, 2.0, 8.0]))
    clean = residual_stream(mm, enc)
    for intervention in (lambda: knockout(mm, block, layers), lambda: scale_heads(mm, {(l, head): alpha})):
        with intervention():
            resid = residual_stream(mm, enc)
        for before in range(l + 1):
            assert torch.equal(resid[before], clean[before]), before
