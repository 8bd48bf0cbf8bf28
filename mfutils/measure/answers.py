"""What counts as an answer: candidate token ids, targets per sample, and the answer-position logits.

Candidate answers of real data (MC2) are scored by their first token at the answer position: P+ sums the
probabilities of the instructed side's first tokens, P- the other side's. The first scored token of a candidate
carries content (``first_tokens``): the word's first token as the model writes it right after the prompt; when
that is a bare space (an English byte-level BPE puts "Ġ" before a Chinese word), the word attached without the
space; a token that is the unknown token, or that decodes to whitespace or to part of a character (a byte
fragment of a UTF-8 character, shared by every word that starts with the same byte), is never scored. A sample
that cannot be scored says why (``UnscorableError.cause``, one of ``UNSCORABLE_CAUSES``). Full-sequence scoring
(every token of a candidate) is ``mfutils.measure.sequence``. The synthetic world's one-token answers
(``candidate_ids``) are scored as they always were.

Public API
----------
candidate_ids(mm, words) -> list[int]     one token id per answer word, [len(words)] (cached per tokenizer)
FirstToken                                a word's first scored token, or why it has none
first_tokens(mm, words) -> list[FirstToken]   per word: the first token that carries content, as it follows the prompt
first_token_ids(mm, words) -> list[int]   deduplicated first tokens of answers (those with one)
answer_tokens(mm, word) -> list[int]      every token of an answer as the model writes it after the prompt
Targets                                   per-sample token ids: instructed answers, other answers, candidates
targets_for(mm, samples) -> Targets       per sample: candidate lists when the sample has them, else the
                                          world's one-token answers
targets_from_candidates(mm, samples) -> Targets   from ``answer_img_candidate_list`` / ``answer_text_candidate_list``
UNSCORABLE_CAUSES                         unknown_token, no_content_token, empty_side, shared_first_token
UnscorableError                           a sample whose candidates give no binary measure; ``.cause`` says why
CandidateOverlapError                     the two sides' candidates share every first token (cause shared_first_token)
answer_logits(mm, enc) -> Tensor[B, V]    logits at the answer position

Example::

    t = targets_for(mm, samples); enc = encode(mm, [s.prompt for s in samples])
    logits = answer_logits(mm, enc)           # [B, V]; margins(logits, t) in mfutils.measure.margins
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch

from mfutils.model.groups import SENTINEL, chat_template, render_chat
from mfutils.model.loading import MLLM

__all__ = ["candidate_ids", "FirstToken", "first_tokens", "first_token_ids", "answer_tokens", "Targets", "targets_for",
           "targets_from_candidates", "UNSCORABLE_CAUSES", "UnscorableError", "CandidateOverlapError", "answer_logits"]

# Why a sample cannot be scored, checked in this order: a side without candidates; a side whose candidates all
# lack a first token that carries content (at least one the unknown token: unknown_token; else no_content_token);
# a side whose every first token is also one of the other side's.
UNSCORABLE_CAUSES = ("empty_side", "unknown_token", "no_content_token", "shared_first_token")


@dataclass(frozen=True)
class Targets:
    """Token ids per sample: ``pos`` (instructed modality's candidate answers), ``neg`` (the other
    modality's), ``cand`` (every candidate answer of the question, for the MFR argmax), and
    ``answer_index`` (position of the instructed answer in ``cand``). ``answer_set`` (candidate lists only):
    the positions in ``cand`` that count as the instructed answer (all of ``pos``)."""

    pos: list[list[int]]
    neg: list[list[int]]
    cand: list[list[int]]
    answer_index: list[int]
    answer_set: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.pos)

    def subset(self, idx: Sequence[int]) -> "Targets":
        return Targets([self.pos[i] for i in idx], [self.neg[i] for i in idx], [self.cand[i] for i in idx],
                       [self.answer_index[i] for i in idx],
                       None if self.answer_set is None else [self.answer_set[i] for i in idx])


class UnscorableError(ValueError):
    """A sample whose candidate lists give no binary measure; ``cause`` is one of ``UNSCORABLE_CAUSES``."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class CandidateOverlapError(UnscorableError):
    """Every first token of one side's candidate answers is also a first token of the other side's."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "shared_first_token")


def candidate_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """One token id per answer word, [len(words)]: the word's token when it is one token (the tiny world), else
    the first token of the word as it follows the prompt (``first_token_ids``; real tokenizers and MC2
    answers). Raises a clear error if two words of the list would get the same id.

    Called once per sample on hot paths, so the lookup of each word list is cached per tokenizer.

    Example::

        candidate_ids(mm, ["red", "green"])          # [id_red, id_green]
    """
    ids = list(_candidate_ids(mm.tokenizer, mm.name, tuple(words)))
    if any(i is None for i in ids):
        resolved = []
        for i, w in zip(ids, words):
            if i is None:
                first = _natural_first_ids(mm, [w])
                if not first:
                    raise ValueError(f"answer word {w!r} has no known first token for {mm.name!r} (its first piece is "
                                     "the unknown token): it cannot be scored; reword it or drop the sample")
                i = first[0]
            resolved.append(i)
        ids = resolved
    if len(set(ids)) != len(ids):
        dup = [w for w, i in zip(words, ids) if ids.count(i) > 1]
        raise ValueError(f"answer words {dup} start with the same token for {mm.name!r}, so they cannot be told apart "
                         "by the answer position's logits; use words with distinct first tokens")
    return ids  # type: ignore[return-value]


@lru_cache(maxsize=256)
def _candidate_ids(tokenizer: Any, name: str, words: tuple[str, ...]) -> tuple[int | None, ...]:
    ids: list[int | None] = []
    for w in words:
        toks = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        ids.append(int(toks[0]) if len(toks) == 1 else None)     # None: resolved by its first token
    return tuple(ids)


def _answer_prefix(mm: MLLM) -> str:
    """The rendered text that an answer follows (the end of the chat template after the user turn)."""
    if chat_template(mm):
        return render_chat(mm, [{"type": "text", "text": SENTINEL}]).split(SENTINEL, 1)[1]
    return mm.spec.template.format(user=SENTINEL).split(SENTINEL, 1)[1]


def _natural_sep(prefix: str) -> str:
    """What goes between the prompt and an answer: a space unless the template's prefix ends in whitespace."""
    return "" if not prefix or prefix[-1].isspace() else " "


@lru_cache(maxsize=8192)
def _continuation(tokenizer: Any, prefix: str, sep: str, word: str) -> tuple[int, ...]:
    """The tokens of ``sep + word`` as they follow ``prefix`` (alone, if the answer merges into the prompt's end)."""
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(prefix + sep + word, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return tuple(int(t) for t in full[len(head):])
    return tuple(int(t) for t in tokenizer(sep + word, add_special_tokens=False)["input_ids"])


def _natural_first_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """The first token of each word as written after the prompt, the unknown token left out (what
    ``first_token_ids`` returned before MC2 scoring by content-carrying tokens; ``candidate_ids`` keeps it for the world's words)."""
    prefix = _answer_prefix(mm)
    unk = getattr(mm.tokenizer, "unk_token_id", None)
    out: dict[int, None] = {}
    for w in words:
        if not w.strip():
            raise ValueError(f"empty candidate answer in {list(words)!r}")
        toks = _continuation(mm.tokenizer, prefix, _natural_sep(prefix), w.strip())
        if not toks:
            raise ValueError(f"answer {w!r} tokenizes to nothing")
        if toks[0] != unk:
            out.setdefault(toks[0], None)
    return list(out)


@lru_cache(maxsize=65536)
def _carries_content(tokenizer: Any, tid: int) -> bool:
    """Does token ``tid`` alone decode to at least one whole, non-blank character? (Not a bare space, not a byte
    fragment of a UTF-8 character, which decodes to U+FFFD.)"""
    text = tokenizer.decode([tid])
    return bool(text.strip()) and "\ufffd" not in text


@dataclass(frozen=True)
class FirstToken:
    """A word's first scored token: ``token`` (None when it has none), ``spaced`` (written after a space),
    ``cause`` (None, ``"unknown_token"`` or ``"no_content_token"``) and ``tried`` (the first token strings tried)."""

    word: str
    token: int | None
    spaced: bool
    cause: str | None
    tried: tuple[str, ...] = ()


def first_tokens(mm: MLLM, words: Sequence[str]) -> list[FirstToken]:
    """Per word, the first token that the answer position scores: the word's first token as the model writes it
    right after the prompt (after the template's assistant prefix, with a space unless that prefix ends in
    whitespace); if that token is a bare space or a byte fragment, the word attached without the space. A word
    whose first token is still the unknown token, blank or a fragment of a character has none (``cause`` says
    which). Raises ``ValueError`` for an empty word.

    Example::

        [t.token for t in first_tokens(mm, ["wood", "木材"])]      # e.g. [5463, None] on an English BPE
    """
    prefix = _answer_prefix(mm)
    tok = mm.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    natural = _natural_sep(prefix)
    out = []
    for w in words:
        if not w.strip():
            raise ValueError(f"empty candidate answer in {list(words)!r}")
        word, found, tried = w.strip(), None, []
        for sep in dict.fromkeys([natural, ""]):
            toks = _continuation(tok, prefix, sep, word)
            if not toks:
                continue
            tried.append(tok.convert_ids_to_tokens(toks[0]))
            if toks[0] != unk and _carries_content(tok, toks[0]):
                found = FirstToken(word, toks[0], bool(sep), None, tuple(tried))
                break
            if toks[0] == unk and sep == natural:
                break                        # the word as the model would write it is unknown: no fallback
        if found is None:
            first = _continuation(tok, prefix, natural, word)
            cause = "unknown_token" if first and first[0] == unk else "no_content_token"
            found = FirstToken(word, None, bool(natural), cause, tuple(tried))
        out.append(found)
    return out


def first_token_ids(mm: MLLM, words: Sequence[str]) -> list[int]:
    """Deduplicated ids of the first scored token of each answer in ``words`` (``first_tokens``); answers
    without one (unknown token, blank or a byte fragment) are left out.

    Example::

        first_token_ids(mm, ["dog", "Dog", "puppy"])      # e.g. [5562, 14777, 41189]
    """
    return list(dict.fromkeys(t.token for t in first_tokens(mm, words) if t.token is not None))


def answer_tokens(mm: MLLM, word: str) -> list[int]:
    """Every token of ``word`` as the model writes it right after the prompt (with a space unless the
    template's assistant prefix ends in whitespace): what full-sequence scoring teacher-forces.

    Example: ``answer_tokens(mm, "站立")``  -> e.g. [47287, 243, 47287, 229]
    """
    prefix = _answer_prefix(mm)
    if not word.strip():
        raise ValueError("empty candidate answer")
    return list(_continuation(mm.tokenizer, prefix, _natural_sep(prefix), word.strip()))


def _sides(s: Any) -> tuple[str, str]:
    """("image"|"text" for P+, the other for P-) of a sample with candidate lists."""
    if s.instructed in ("image", "text"):
        side = s.instructed
    elif s.image_answer is not None and s.answer == s.image_answer:
        side = "image"
    elif s.text_answer is not None and s.answer == s.text_answer:
        side = "text"
    else:
        raise ValueError(f"sample {s.index}: cannot tell which side's candidates are the answer {s.answer!r}")
    return side, ("text" if side == "image" else "image")


def _side_ids(mm: MLLM, side: str, words: Sequence[str], where: str) -> list[int]:
    """A side's deduplicated first tokens, or ``UnscorableError`` (empty side, unknown or content-free tokens)."""
    if not words:
        raise UnscorableError(f"{where}: the {side}-side candidates are empty (nothing to sum for that side)",
                              "empty_side")
    toks = first_tokens(mm, words)
    ids = list(dict.fromkeys(t.token for t in toks if t.token is not None))
    if not ids:
        unknown = [t.word for t in toks if t.cause == "unknown_token"]
        blank = [f"{t.word} ({'/'.join(t.tried)})" for t in toks if t.cause == "no_content_token"]
        detail = "; ".join(x for x in (f"unknown to it: {unknown}" if unknown else "",
                                       f"first token a space or part of a character: {blank}" if blank else "") if x)
        raise UnscorableError(f"{where}: the {side}-side candidates {list(words)} have no first token that carries "
                              f"content for {mm.name!r} ({detail})", "unknown_token" if unknown else "no_content_token")
    return ids


def targets_from_candidates(mm: MLLM, samples: Sequence[Any]) -> Targets:
    """Targets from candidate lists: P+ sums the first-token probabilities of the instructed side's candidates
    (``answer_img_candidate_list`` or ``answer_text_candidate_list``), P- the other side's.

    Each candidate is scored by its first token that carries content (``first_tokens``); first tokens are
    deduplicated within a side; a first token shared by both sides counts for neither (it cannot tell them
    apart). A sample that cannot be scored raises ``UnscorableError`` naming the sample, with ``cause``: a side
    with no candidates (``empty_side``), a side whose candidates have no first token that carries content
    (``unknown_token`` when one is the unknown token, else ``no_content_token``), or a side left empty by the
    shared tokens (``shared_first_token``, a ``CandidateOverlapError``). ``cand`` = pos + neg; following (MFR) =
    the argmax over ``cand`` is one of ``pos`` (``answer_set``).

    Example::

        t = targets_from_candidates(mm, mc2_samples)
        m = margins(answer_logits(mm, encode(mm, [s.prompt for s in mc2_samples])), t)   # [B]
    """
    pos, neg, cand, ai, aset = [], [], [], [], []
    for s in samples:
        lists = {"image": s.answer_img_candidate_list, "text": s.answer_text_candidate_list}
        if lists["image"] is None or lists["text"] is None:
            raise ValueError(f"sample {s.index} has no answer_img_candidate_list / answer_text_candidate_list")
        where = f"sample {s.index} ({(s.meta or {}).get('task', s.category)})"
        for side in ("image", "text"):
            if not lists[side]:
                _side_ids(mm, side, lists[side], where)               # raises: empty side, before any other
        ids = {k: _side_ids(mm, k, v, where) for k, v in lists.items()}
        shared = set(ids["image"]) & set(ids["text"])
        ids = {k: [i for i in v if i not in shared] for k, v in ids.items()}
        if not ids["image"] or not ids["text"]:
            raise CandidateOverlapError(
                f"{where}: the image-side candidates {list(lists['image'])} and the text-side candidates "
                f"{list(lists['text'])} start with the same tokens for {mm.name!r}, so P+ and P- cannot be told "
                "apart. Drop the sample (mfutils.study.mc2_eval.scorable(mm, samples) does) or give candidates "
                "with distinct first tokens."
            )
        p_side, n_side = _sides(s)
        pos.append(ids[p_side])
        neg.append(ids[n_side])
        cand.append(ids[p_side] + ids[n_side])
        ai.append(0)
        aset.append(list(range(len(ids[p_side]))))
    return Targets(pos, neg, cand, ai, aset)


def _has_candidate_lists(s: Any) -> bool:
    return getattr(s, "answer_img_candidate_list", None) is not None


def targets_for(mm: MLLM, samples: Sequence[Any]) -> Targets:
    """Targets of a list of samples, per sample: candidate lists when it carries them
    (``targets_from_candidates``), else the world's one-token answers (conflict samples need
    ``other_answer``; others use the best wrong candidate as ``neg`` at scoring time, so ``neg`` lists every
    wrong candidate).

    Example::

        t = targets_for(mm, samples)          # world and MC2 samples alike
    """
    if any(_has_candidate_lists(s) for s in samples):
        parts = [targets_from_candidates(mm, [s]) if _has_candidate_lists(s) else targets_for(mm, [s]) for s in samples]
        return Targets([p.pos[0] for p in parts], [p.neg[0] for p in parts], [p.cand[0] for p in parts],
                       [p.answer_index[0] for p in parts],
                       [p.answer_set[0] if p.answer_set is not None else [p.answer_index[0]] for p in parts])
    pos, neg, cand, ai = [], [], [], []
    for s in samples:
        ids = candidate_ids(mm, s.candidates)
        a = s.candidates.index(s.answer)
        pos.append([ids[a]])
        if s.other_answer is not None:
            neg.append([ids[s.candidates.index(s.other_answer)]])
        else:
            neg.append([i for j, i in enumerate(ids) if j != a])
        cand.append(ids)
        ai.append(a)
    return Targets(pos, neg, cand, ai)


def answer_logits(mm: MLLM, enc: Any, **forward_kwargs: Any) -> torch.Tensor:
    """Logits at the position that predicts the answer (the ``last`` group), [B, V].

    Without appended answers that is the final position (left padding), and only its logits are computed;
    with answers appended (``encode(..., answers=...)``) it is each sample's ``last`` position.

    Example::

        logits = answer_logits(mm, encode(mm, [s.prompt for s in samples]).to(mm.device))   # [B, V]
    """
    if not bool(enc.groups.answer.any()):
        return mm.model(**enc.inputs, logits_to_keep=1, **forward_kwargs).logits[:, -1]
    logits = mm.model(**enc.inputs, **forward_kwargs).logits
    idx = enc.groups.last_index().to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]
