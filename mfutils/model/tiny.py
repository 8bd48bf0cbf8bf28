"""Tiny models of each architecture, built offline: a word-level tokenizer and the processor and config
that the architecture table (``mfutils.model.archs.ARCHS``) makes for it.

Public API
----------
build_word_tokenizer(words, image_token="<image>", specials=()) -> PreTrainedTokenizerFast
                                   whitespace-split word-level tokenizer, ``<s>`` prepended, left padding
build_processor(arch, tokenizer, image_size=64) -> processor   ``ARCHS[arch].tiny_processor`` (16 image tokens)
tiny_parts(arch, words, n_layers=4, image_size=64, text=None, vision=None) -> (tokenizer, processor, config)
                                   everything a tiny model of ``arch`` needs except its weights

Example::

    tok, proc, cfg = tiny_parts("qwen2_vl", ["red", "blue"], n_layers=2)
    model = transformers.Qwen2VLForConditionalGeneration(cfg)      # random weights
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mfutils.model.archs import ARCHS

__all__ = ["build_word_tokenizer", "build_processor", "tiny_parts"]

# Special tokens every tiny tokenizer carries (the union of what the three templates need).
_SPECIALS = [
    "<pad>", "<unk>", "<s>", "</s>", "<image>",
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]


def _template_words() -> list[str]:
    words: list[str] = []
    for spec in ARCHS.values():
        text = spec.template.replace("{user}", " ")
        for sp in _SPECIALS:
            text = text.replace(sp, " ")
        words.extend(text.split())
    return words


def build_word_tokenizer(words: Iterable[str], image_token: str = "<image>",
                         specials: Iterable[tuple[str, str]] = ()) -> Any:
    """A word-level fast tokenizer (whitespace split, ``<s>`` prepended, left padding) over ``words``.

    The special tokens of the llava and Qwen chat templates are included, so one vocabulary serves those
    tiny architectures; ``image_token`` is the one its processor expands (``ArchSpec.image_token``).
    ``specials``: extra named special tokens an architecture's processor reads from its tokenizer
    (``ArchSpec.tokenizer_specials``, e.g. InternVL's ``start_image_token``); they get ids after every word,
    so the ids of the other tokens do not depend on them. Offsets mapping works, which ``mfutils.model.groups``
    relies on.

    Example::

        tok = build_word_tokenizer(["red", "blue"])
        tok("red blue").input_ids                      # [<s>, red, blue]
    """
    specials = tuple(specials)
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    extra = [t for _, t in specials if t not in _SPECIALS]
    for w in [*_SPECIALS, *_template_words(), *words, *extra]:
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": image_token, **dict(specials)},
    )
    hf.add_special_tokens({"additional_special_tokens": [*_SPECIALS[4:], *dict.fromkeys(extra)]})
    hf.padding_side = "left"
    return hf


def _spec(arch: str) -> Any:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; supported: {tuple(ARCHS)}")
    return ARCHS[arch]


def build_processor(arch: str, tokenizer: Any, image_size: int = 64) -> Any:
    """The processor of a tiny model of ``arch`` (images ``image_size`` square -> 16 image tokens).

    Example: ``proc = build_processor("llava", build_word_tokenizer(["red"]))``.
    """
    return _spec(arch).tiny_processor(tokenizer, image_size)


def tiny_parts(arch: str, words: Iterable[str], *, n_layers: int = 4, image_size: int = 64,
               text: Mapping[str, Any] | None = None, vision: Mapping[str, Any] | None = None
               ) -> tuple[Any, Any, Any]:
    """``(tokenizer, processor, config)`` of a tiny ``arch`` model that reads ``words``.

    The tokenizer carries the architecture's image token and special tokens; ``text`` / ``vision`` override
    keyword arguments of the config's text / vision part (``ArchSpec.tiny_config``).

    Example::

        tok, proc, cfg = tiny_parts("llava", vocabulary(), n_layers=8, text={"hidden_size": 192})
    """
    spec = _spec(arch)
    tok = build_word_tokenizer(words, image_token=spec.image_token, specials=spec.tokenizer_specials)
    proc = spec.tiny_processor(tok, image_size)
    return tok, proc, spec.tiny_config(tok, n_layers, image_size, text=text, vision=vision)
