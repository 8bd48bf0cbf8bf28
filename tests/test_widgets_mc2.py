"""The explorers on MC2 samples as the loader builds them: the image is a ``pathlib.Path`` to a COCO file
(``mfutils.data.mc2.find_images``), not a PIL image or an array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfutils.data import mc2
from mfutils.model.hooks import active_hooks
from mfutils.model.loading import load_model
from mfutils.present.widgets.browser import sample_browser
from mfutils.present.widgets.common import image_png

# words of the synthetic world, so the random model's word-level tokenizer tells the two answers apart
RECORDS = [{"image_id": f"{i + 1:012d}", "task": "color", "question": "what color ?", "answer_vision": "red",
            "answer_text": "blue", "context": "a blue star ."} for i in range(2)]


@pytest.fixture(scope="module")
def mm():
    return load_model("random:llava")


def _coco(root: Path) -> list[Path]:
    """Stand-in COCO images, one per record, found as the loader finds real ones."""
    for i, r in enumerate(RECORDS):
        arr = np.full((20, 24, 3), 60 + 100 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"COCO_val2014_{r['image_id']}.jpg")
    return mc2.find_images(RECORDS, root)


def test_sample_browser_shows_an_mc2_sample_whose_image_is_a_path(mm, tmp_path: Path) -> None:
    paths = _coco(tmp_path)
    samples = mc2.record_samples(RECORDS, paths)
    assert all(isinstance(s.prompt.image, Path) for s in samples)
    sb = sample_browser(mm, samples)
    assert sb.error is None
    first = bytes(sb.image.value)                            # the Image widget holds a memoryview of PNG bytes
    assert first.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(first)).size == (192, 192)
    assert set(sb.probabilities) == {"red", "blue"}
    sb.set_sample(2)                                         # the second record: another image
    assert sb.error is None and bytes(sb.image.value) != first
    assert active_hooks(mm) == 0


def test_image_png_reads_paths_and_strings_and_names_a_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "img.png"
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255
    Image.fromarray(arr).save(f)
    assert image_png(f, size=8) == image_png(str(f), size=8) == image_png(arr, size=8)
    gone = tmp_path / "COCO_val2014_000000000009.jpg"
    with pytest.raises(FileNotFoundError, match=str(gone)):
        image_png(gone)


def test_sample_browser_shows_a_missing_image_as_an_error(mm, tmp_path: Path) -> None:
    paths = _coco(tmp_path)
    paths[0].unlink()
    sb = sample_browser(mm, mc2.record_samples(RECORDS, paths))
    assert sb.error is not None and str(paths[0]) in sb.error and "does not exist" in sb.error
