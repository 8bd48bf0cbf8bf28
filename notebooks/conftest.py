"""nbval runs every notebook on its default model (``smol``) at smoke size.

The full-size chain is ``make reproduce`` (about 30 minutes for smol alone); ``make test`` only checks that each
notebook runs end to end and that its ``# NBVAL_CHECK_OUTPUT`` cells print what the sources store (the outputs of
a smoke chain on the default model, copied in with ``mf store-checked`` after ``mf reproduce --model smol
--smoke``). This hook appends ``smoke = True`` to each notebook's ``parameters`` cell as nbval collects it, as
papermill's injected-parameters cell would; the notebook files are not changed.
"""

from __future__ import annotations

from typing import Any

SMOKE_LINE = "\nsmoke = True  # injected by notebooks/conftest.py: nbval runs the notebooks at smoke size"


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        if SMOKE_LINE not in cell.source:
            cell.source = cell.source + SMOKE_LINE
