"""The shipped smol parts are verified at load: a truncated or changed file is one line naming it, both hashes and
the fix, before any tensor is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mfutils.core.paths import repo_root
from mfutils.core.provenance import sha256_file
from mfutils.model.smol import PARTS_FILE, PartsIntegrityError, expected_parts_sha256, verify_parts

SHIPPED = repo_root() / "checkpoints" / "smol-llava"


def _copy(tmp_path: Path, cut: int | None) -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    for f in SHIPPED.glob("*.json"):
        shutil.copy(f, folder / f.name)
    data = (SHIPPED / PARTS_FILE).read_bytes()
    (folder / PARTS_FILE).write_bytes(data[:cut] if cut else data)
    return folder


def test_shipped_parts_match_their_record() -> None:
    want = expected_parts_sha256(SHIPPED)
    assert want is not None and want[0] == sha256_file(SHIPPED / PARTS_FILE)
    verify_parts(SHIPPED)


def test_truncated_parts_are_refused(tmp_path: Path) -> None:
    folder = _copy(tmp_path, 1_000_000)
    with pytest.raises(PartsIntegrityError) as err:
        verify_parts(folder)
    msg = str(err.value)
    assert "\n" not in msg and str(folder / PARTS_FILE) in msg and "1,000,000 bytes" in msg
    assert expected_parts_sha256(SHIPPED)[0] in msg and sha256_file(folder / PARTS_FILE) in msg  # type: ignore[index]
    assert "git checkout" in msg and "mf train --model smol" in msg


def test_a_record_beside_the_parts_wins_over_the_card(tmp_path: Path) -> None:
    folder = _copy(tmp_path, None)
    record = json.loads((folder / "parts.json").read_text())
    (folder / "parts.json").write_text(json.dumps({**record, "parts_sha256": "0" * 64}))
    with pytest.raises(PartsIntegrityError, match="parts.json records 0000"):
        verify_parts(folder)
    (folder / "parts.json").write_text(json.dumps({k: v for k, v in record.items() if k != "parts_sha256"}))
    (folder / "model_card.json").unlink()
    verify_parts(folder)                     # nothing recorded: nothing to check against


def test_cli_prints_one_line_for_truncated_parts(tmp_path: Path) -> None:
    folder = _copy(tmp_path, 1_000_000)
    res = subprocess.run([sys.executable, "-m", "mfutils", "eval", "--model", str(folder)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "truncated or changed" in lines[0] and "Traceback" not in res.stderr
