"""The knockout-edge registry (mfutils.model.edges) is the one source of every edge list: panels, sweeps, plots."""

from __future__ import annotations

import inspect

import pytest

from mfutils.data.prompts import GROUP_NAMES
from mfutils.model.edges import CONTROL_EDGES, EDGES, MAIN_EDGES, PANELS, SALIENCY_PAIRS, edge_groups, parse_edge
from mfutils.present.plots_flow import plot_knockout_panels
from mfutils.study.knockout import knockout_sweep


def test_every_main_edge_has_a_panel_and_every_panel_edge_is_registered() -> None:
    in_panels = [e for edges in PANELS.values() for e in edges]
    missing = [e for e in MAIN_EDGES if e not in in_panels]
    assert not missing, f"main edges without a figure panel (give them one in mfutils.model.edges): {missing}"
    assert len(in_panels) == len(set(in_panels)), "an edge sits in two panels"
    unregistered = [e for e in in_panels if e not in EDGES]
    assert not unregistered, f"panel edges missing from mfutils.model.edges.EDGES: {unregistered}"
    assert all(EDGES[e].panel == title for title, edges in PANELS.items() for e in edges)


def test_every_edge_list_is_registered_and_well_formed() -> None:
    lists = {"MAIN_EDGES": MAIN_EDGES, "SALIENCY_PAIRS": SALIENCY_PAIRS,
             **{f"CONTROL_EDGES[{k!r}]": v for k, v in CONTROL_EDGES.items()}}
    for name, edges in lists.items():
        assert len(edges) == len(set(edges)), name
        assert [e for e in edges if e not in EDGES] == [], name
    for e in EDGES.values():
        assert (e.src, e.dst) == parse_edge(e.name) and e.src and e.dst and not set(e.src) & set(e.dst)
        assert set(e.src) | set(e.dst) <= set(GROUP_NAMES), e.name
        assert e.claims
    assert [e for e in MAIN_EDGES if EDGES[e].panel is None] == []
    assert set(edge_groups("dst")) >= {"instruction", "last"}
    with pytest.raises(ValueError, match="src->dst"):
        parse_edge("image-last")
    with pytest.raises(ValueError, match="side"):
        edge_groups("key")


def test_the_sweep_and_the_figures_default_to_the_registry() -> None:
    assert inspect.signature(knockout_sweep).parameters["edges"].default is MAIN_EDGES
    assert inspect.signature(plot_knockout_panels).parameters["panels"].default is PANELS
