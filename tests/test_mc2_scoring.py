"""Candidate scoring on real tokenizers, Chinese included: the first scored token carries
content (never a bare space or a byte fragment), unscorable samples say their real cause, the world's one-token
answers are scored as before, and full-sequence scoring equals a direct computation.

Real tokenizers without their models: SmolLM2's byte-level BPE from the project's cache (loaded alone, never the
model), and a byte-level BPE of the Qwen kind trained here offline with the ``tokenizers`` library."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from authors_file import write_authors_file
from mfutils.data import mc2
from mfutils.data.world import COLORS, SHAPES, make_samples
from mfutils.measure import answers
from mfutils.measure.answers import UnscorableError, first_tokens, targets_for, targets_from_candidates
from mfutils.model.loading import MLLM

CHATML = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"     # SmolLM2 / Qwen: ends in a newline
LLAVA = "USER: <image>\n{user} ASSISTANT:"                                  # LLaVA-1.5: the answer after a space


def _tokenizer_model(tok: Any, template: str, name: str) -> MLLM:
    """An MLLM holding only a tokenizer and a prompt template: enough for every candidate-token function."""
    return MLLM(model=None, processor=SimpleNamespace(tokenizer=tok, chat_template=None),
                spec=SimpleNamespace(template=template), name=name)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def smol_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from mfutils.model.pretrained import cache_dir

    folder = cache_dir()
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"the SmolLM2 tokenizer is not cached at {folder} (mf train --model smol or the first load of the "
                    "smol model writes it)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def qwen_kind_tokenizer() -> Any:
    pytest.importorskip("tokenizers", reason="the `tokenizers` library builds the Qwen-kind BPE offline")
    return qwen_kind_bpe()


def qwen_kind_bpe() -> Any:
    """A byte-level BPE with Qwen2's pre-tokenizer (its split pattern, then bytes), trained on English and Chinese
    words in the contexts where answers appear, so that Chinese words get whole-character tokens as in Qwen."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    from authors_file import BASE

    words = {w for b in BASE for w in (b[2], *b[3], b[4], *b[5])}
    words |= {w.capitalize() for w in words}
    corpus = [f"{p}{w}" for w in sorted(words) for p in ("assistant\n", "ASSISTANT: ", "\n", " ")] * 5
    corpus += ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", "USER: <image>\nhello ASSISTANT:"] * 5
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=3000, min_frequency=2, special_tokens=["<|endoftext|>",
                                             "<|im_start|>", "<|im_end|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _file_samples(tmp_path: Path) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = mc2.load_records(write_authors_file(tmp_path, "text", images=False))
    return mc2.record_samples(records, [np.zeros((4, 4, 3), dtype=np.uint8)] * len(records))


def _words(samples: list[Any]) -> list[str]:
    return list(dict.fromkeys(w for s in samples for w in (*s.answer_img_candidate_list,
                                                            *s.answer_text_candidate_list)))


def _content(tok: Any, tid: int) -> bool:
    text = tok.decode([tid])
    return bool(text.strip()) and "\ufffd" not in text


@pytest.mark.parametrize("template", [CHATML, LLAVA], ids=["chatml", "llava"])
def test_smol_first_tokens_carry_content(smol_tokenizer: Any, template: str, tmp_path: Path) -> None:
    tok = smol_tokenizer
    mm = _tokenizer_model(tok, template, "smollm2-tokenizer")
    samples = _file_samples(tmp_path)
    words = _words(samples)
    got = first_tokens(mm, words)
    # every scored token carries content before, the first token as written was scored whatever it was
    assert all(_content(tok, t.token) for t in got if t.token is not None)
    natural = {w: answers._natural_first_ids(mm, [w])[0] for w in words}
    bad_before = [w for w in words if not _content(tok, natural[w])]
    assert {"红色", "金属", "木材", "站立", "狗"} <= set(bad_before)
    if template == LLAVA:                        # " 金属" -> "Ġ" + bytes: the bare space token
        assert tok.decode([natural["金属"]]) == " " and tok.decode([natural["绿色"]]) == " "
    by_word = {t.word: t for t in got}
    assert tok.decode([by_word["行走"].token]) == "行" and not by_word["行走"].spaced       # attached, not after "Ġ"
    assert by_word["金属"].token is None and by_word["金属"].cause == "no_content_token"
    assert tok.decode([by_word["wood"].token]).strip() == "wood"
    # per record: the English answers carry each side; the record whose image side is empty says so
    causes = []
    for s in samples:
        try:
            targets_from_candidates(mm, [s])
            causes.append("ok")
        except UnscorableError as exc:
            causes.append(exc.cause)
    assert causes == ["ok", "ok", "ok", "ok", "empty_side", "ok"]


def test_smol_all_chinese_side_is_no_content_not_shared(smol_tokenizer: Any, tmp_path: Path) -> None:
    """The issue's failure: a side of Chinese words only, after a space, on an English BPE. Before, every such word
    scored the bare space token, shared by the other side, so the sample was "shared first token"; now the words
    have no content token and the sample says so."""
    from dataclasses import replace

    mm = _tokenizer_model(smol_tokenizer, LLAVA, "smollm2-tokenizer")
    s = replace(_file_samples(tmp_path)[3], answer_img_candidate_list=("木材",), answer_text_candidate_list=("金属",))
    natural = [answers._natural_first_ids(mm, [w]) for w in ("木材", "金属")]
    assert natural[0] == natural[1]                                           # both the bare space token
    with pytest.raises(UnscorableError, match="no first token that carries content") as err:
        targets_from_candidates(mm, [s])
    assert err.value.cause == "no_content_token"
    # full-sequence scoring teacher-forces every byte of them, so they stay apart
    assert answers.answer_tokens(mm, "木材") != answers.answer_tokens(mm, "金属")


def test_smol_world_candidates_are_unchanged(smol_tokenizer: Any) -> None:
    """The world's answers: one token each, the word after a space (as encode(..., answers=) appends it)."""
    mm = _tokenizer_model(smol_tokenizer, CHATML, "smollm2-tokenizer")
    words = [*COLORS, *SHAPES]
    assert [smol_tokenizer.decode([i]) for i in answers.candidate_ids(mm, words)] == [" " + w for w in words]
    t = targets_for(mm, make_samples(4, 3, ["follow_image", "follow_text", "image_only"]))
    ids = answers.candidate_ids(mm, words)
    assert all(set(c) <= set(ids) and len(p) == 1 for c, p in zip(t.cand, t.pos))


@pytest.mark.parametrize("template", [CHATML, LLAVA], ids=["chatml", "llava"])
def test_qwen_kind_bpe_scores_chinese_words(qwen_kind_tokenizer: Any, template: str, tmp_path: Path) -> None:
    tok = qwen_kind_tokenizer
    mm = _tokenizer_model(tok, template, "qwen-kind-bpe")
    samples = _file_samples(tmp_path)
    got = {t.word: t for t in first_tokens(mm, _words(samples))}
    chinese = [w for w in got if not w.isascii()]
    assert chinese and all(got[w].token is not None for w in chinese), {w: got[w] for w in chinese}
    assert all(tok.decode([got[w].token]).strip() and w.startswith(tok.decode([got[w].token]).strip())
               for w in chinese)
    t = targets_from_candidates(mm, [samples[0]])
    # record 0: blue, Blue, 蓝色, 蓝 (instructed: text) against red, Red, 红色, 红: each side's own tokens
    assert len(t.pos[0]) >= 3 and len(t.neg[0]) >= 3 and not set(t.pos[0]) & set(t.neg[0])


# ---- full-sequence scoring on tiny random models of each architecture ------------------------------------
@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl", "internvl"])
def test_sequence_logprobs_equal_a_direct_computation(arch: str) -> None:
    from mfutils.measure.sequence import sequence_logprobs, sequence_margins
    from mfutils.model.groups import encode
    from mfutils.model.loading import random_model

    words = "the red blue green star circle a is what color ? . answer one word if follow image text".split()
    mm = random_model(arch, words=words, n_layers=2)
    recs = [{"image_id": "1", "task": "color", "question": "what color ?", "answer_vision": "red",
             "answer_text": "blue", "context": "the star is blue ."},
            {"image_id": "2", "task": "color", "question": "what color is the star ?", "answer_vision": "green",
             "answer_text": "red", "context": "a red circle ."}]
    rng = np.random.default_rng(1)
    samples = mc2.record_samples(recs, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in recs],
                                 instructions=("image",))
    cands = [["red", "red star", "blue circle ."], ["green", "a red circle", "crimson"]]
    enc = encode(mm, [s.prompt for s in samples])
    lp = sequence_logprobs(mm, enc, cands)
    with torch.no_grad():
        first = torch.log_softmax(answers.answer_logits(mm, enc).float(), -1)
    tid = mm.tokenizer.convert_tokens_to_ids
    assert torch.allclose(lp[0][0], first[0, tid("red")], atol=1e-4)        # one token: the answer position
    assert torch.allclose(lp[1][0], first[1, tid("green")], atol=1e-4)      # (sample 1 is left-padded)
    assert lp[1][2] == float("-inf")                                          # an unknown word: probability 0
    for b, k in [(0, 1), (0, 2), (1, 1)]:                                     # several tokens: teacher forcing
        one = encode(mm, [samples[b].prompt], answers=[cands[b][k]])
        with torch.no_grad():
            logits = mm.model(**one.inputs).logits[0].float()
        last = int(one.groups.last_index()[0])
        ids = one.inputs["input_ids"][0, last + 1:]
        direct = torch.log_softmax(logits[last:last + len(ids)], -1).gather(-1, ids[:, None]).sum()
        assert torch.allclose(lp[b][k], direct, atol=1e-4), (b, k)
    m, ok = sequence_margins(mm, enc, samples)
    for b, s in enumerate(samples):
        v = sequence_logprobs(mm, encode(mm, [s.prompt]), [list(s.answer_img_candidate_list)
                                                         + list(s.answer_text_candidate_list)])[0]
        n_pos = len(s.answer_img_candidate_list)
        assert torch.allclose(m[b], torch.logsumexp(v[:n_pos], 0) - torch.logsumexp(v[n_pos:], 0), atol=1e-3)
        assert bool(ok[b]) == (int(torch.argmax(v)) < n_pos)


def test_sequence_scoring_refuses_appended_answers() -> None:
    from mfutils.measure.sequence import sequence_logprobs
    from mfutils.model.groups import encode
    from mfutils.model.loading import random_model

    mm = random_model("llava", n_layers=1)
    s = make_samples(1, 1, ["follow_image"])[0]
    with pytest.raises(ValueError, match="without answers"):
        sequence_logprobs(mm, encode(mm, [s.prompt], answers=["red"]), [["red"]])
    with pytest.raises(ValueError, match="1 candidate lists for 2 prompts"):
        sequence_logprobs(mm, encode(mm, [s.prompt, s.prompt]), [["red"]])
