"""Every notebook's parameters cell parses with papermill: each assignment line is one parameter it sees.

papermill silently drops a parameter whose comment holds an "=" ("Unable to parse line"); the chain's
parameter checks and ``papermill --help-notebook`` would then not know it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from papermill.translators import PythonTranslator

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_parses(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', want 1"
    assigned = [m.group(1) for m in re.finditer(r"^(\w+)\s*:[^=\n]*=", cells[0].source, flags=re.M)]
    parsed = [p.name for p in PythonTranslator.inspect(cells[0])]
    assert parsed == assigned, (f"{path.name}: papermill parses {parsed} of {assigned}; a comment with '=' hides "
                                "a parameter from papermill")
