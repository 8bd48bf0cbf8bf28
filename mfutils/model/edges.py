"""The knockout edges: one registry that the sweep, the plots and the explorer read.

An edge ``"a+b->c"`` cuts attention from the query tokens of group(s) ``c`` to the key tokens of group(s)
``a`` and ``b`` (token groups: ``mfutils.data.prompts.GROUP_NAMES``).

API
---
Edge                         name, src, dst, panel (the figure panel that draws it; None for controls), claims
EDGES: dict[str, Edge]       every named edge, in drawing order
MAIN_EDGES                   the edges swept on the standard prompts (C1, C2, C10, C12)
CONTROL_EDGES                variant -> the C11 control edges swept on that prompt variant
SALIENCY_PAIRS               the group pairs of the attention x gradient saliency
PANELS                       panel title -> its edges (every main edge sits in exactly one panel)
parse_edge(name) -> (src groups, dst groups)     a registered edge, or any "a+b->c"
edge_groups(side) -> tuple[str, ...]             the group names (joined by "+") that edges use as sources / targets

Example::

    src, dst = parse_edge("image+context->instruction")      # (("image", "context"), ("instruction",))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Edge", "EDGES", "MAIN_EDGES", "CONTROL_EDGES", "SALIENCY_PAIRS", "PANELS", "parse_edge", "edge_groups"]

Groups = tuple[str, ...]

_INTO_INSTRUCTION = "into the instruction (C1)"
_INTO_LAST = "into the answer position (C2)"


@dataclass(frozen=True)
class Edge:
    """A knockout edge: attention from the ``dst`` groups' queries to the ``src`` groups' keys."""

    name: str
    src: Groups
    dst: Groups
    panel: str | None
    claims: tuple[str, ...]


def _split(name: str) -> tuple[Groups, Groups]:
    if name.count("->") != 1 or not all(name.split("->")):
        raise ValueError(f"edge {name!r} must read 'src->dst' (groups joined by '+'); known: {list(EDGES)}")
    src, dst = name.split("->")
    return tuple(src.split("+")), tuple(dst.split("+"))


def _edge(name: str, panel: str | None, claims: tuple[str, ...]) -> Edge:
    return Edge(name, *_split(name), panel, claims)


EDGES: dict[str, Edge] = {e.name: e for e in (
    _edge("image->instruction", _INTO_INSTRUCTION, ("C1",)),
    _edge("context->instruction", _INTO_INSTRUCTION, ("C1",)),
    _edge("image+context->instruction", _INTO_INSTRUCTION, ("C1", "C11")),
    _edge("image->context", _INTO_INSTRUCTION, ("C1",)),
    _edge("instruction->last", _INTO_LAST, ("C2", "C10")),
    _edge("image->last", _INTO_LAST, ("C2",)),
    _edge("context->last", _INTO_LAST, ("C2",)),
    _edge("question->last", _INTO_LAST, ("C2",)),
    # C11 controls: the modality cues cut from a format constraint / a system prompt instead
    _edge("image+context->constraint", None, ("C11",)),
    _edge("image+context->system", None, ("C11",)),
)}

MAIN_EDGES: tuple[str, ...] = (
    "image->instruction", "context->instruction", "image->context", "instruction->last", "image->last",
    "context->last", "question->last", "image+context->instruction",
)
CONTROL_EDGES: dict[str, tuple[str, ...]] = {
    "system": ("image+context->instruction", "image+context->constraint", "image+context->system"),
    "instruction_last": ("image+context->instruction", "image+context->constraint"),
}
SALIENCY_PAIRS: tuple[str, ...] = (
    "image->instruction", "context->instruction", "instruction->last", "image->last", "context->last",
)


def _panels() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for e in EDGES.values():
        if e.panel is not None:
            out.setdefault(e.panel, []).append(e.name)
    return {k: tuple(v) for k, v in out.items()}


PANELS: dict[str, tuple[str, ...]] = _panels()


def parse_edge(name: str) -> tuple[Groups, Groups]:
    """(source groups, destination groups) of an edge name: a registered edge, or parsed as ``"a+b->c"``."""
    if name in EDGES:
        return EDGES[name].src, EDGES[name].dst
    return _split(name)


def edge_groups(side: str) -> tuple[str, ...]:
    """The group names (``"+"``-joined) that the registered edges use on one ``side`` ("src" or "dst"), in order."""
    if side not in ("src", "dst"):
        raise ValueError(f"side must be 'src' or 'dst', not {side!r}")
    seen: dict[str, None] = {}
    for e in EDGES.values():
        seen["+".join(getattr(e, side))] = None
    return tuple(seen)
