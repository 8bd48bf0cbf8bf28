"""Shared fixtures: tiny random MLLMs of every architecture (built once per session) and prompt batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mfutils.model.loading import MLLM, RANDOM_ARCHS, random_model
from mfutils.data.prompts import Prompt

import os as _os

REPO = Path(__file__).resolve().parents[1]

from hypothesis import settings as _settings

# CI runs a fixed sequence of hypothesis examples (a red run must be reproducible); locally each run explores anew.
_settings.register_profile("ci", derandomize=True, deadline=None)
if _os.environ.get("CI"):
    _settings.load_profile("ci")


ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# The tiny models' vocabulary (passed explicitly, so these tests do not depend on mfutils.data.world).
WORDS = tuple(
    "the object is a an red green blue yellow purple star circle square cross diamond answer based on "
    "image picture text what which color shape of ? . , in one word only please use describe".split()
)


def random_prompt(rng: np.random.Generator, n_words: int, with_constraint: bool = True) -> Prompt:
    """A prompt with image, context, instruction, question (and constraint) segments of about ``n_words``."""

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS, size=max(1, n)))

    segments = [("image", ""), ("context", words(n_words)), ("instruction", words(n_words - 1)),
                ("question", words(n_words // 2))]
    if with_constraint:
        segments.append(("constraint", words(2)))
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return Prompt(segments=tuple(segments), image=image)


@pytest.fixture(scope="session")
def tiny_models() -> Callable[[str, str], MLLM]:
    """``get(arch, impl)``: the session's tiny random model of ``arch``, switched to ``impl`` attention."""
    cache: dict[str, MLLM] = {}

    def get(arch: str, impl: str = "sdpa") -> MLLM:
        if arch not in cache:
            cache[arch] = random_model(arch, words=WORDS, n_layers=4, seed=0)
        cache[arch].set_attn_implementation(impl)
        return cache[arch]

    return get


@pytest.fixture(params=[(a, i) for a in RANDOM_ARCHS for i in ATTN_IMPLEMENTATIONS], ids=lambda p: f"{p[0]}-{p[1]}")
def mm(request: pytest.FixtureRequest, tiny_models: Callable[[str, str], MLLM]) -> MLLM:
    """Every architecture under every attention implementation."""
    arch, impl = request.param
    return tiny_models(arch, impl)


@pytest.fixture(params=RANDOM_ARCHS)
def mm_arch(request: pytest.FixtureRequest, tiny_models: Callable[[str, str], MLLM]) -> MLLM:
    """Every architecture, sdpa attention."""
    return tiny_models(request.param, "sdpa")


@pytest.fixture
def prompts() -> list[Prompt]:
    """Four prompts of different lengths (so the batch is left-padded); the last has no constraint."""
    rng = np.random.default_rng(0)
    return [random_prompt(rng, n, with_constraint=i < 3) for i, n in enumerate((7, 3, 5, 2))]


@pytest.fixture
def small_memory(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``small_memory(module)`` makes ``module.answer_logits`` raise a CUDA-style out-of-memory error on batches of
    more than ``max_rows`` samples, so that the out-of-memory halving is exercised on CPU."""
    def patch(module: object, name: str = "answer_logits", max_rows: int = 3) -> None:
        real = getattr(module, name)

        def fake(mm, enc, *args, **kwargs):  # type: ignore[no-untyped-def]
            if enc.groups.shape[0] > max_rows:
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
            return real(mm, enc, *args, **kwargs)

        monkeypatch.setattr(module, name, fake)
    return patch


@pytest.fixture(scope="module")
def llava() -> MLLM:
    """A tiny random Llava that reads the world's vocabulary (4 layers x 4 heads), one per test module."""
    return random_model("llava", seed=0)


# ---- nbval: every notebook on its default model (smol) at smoke size -------------------------------------------
# The full-size chain is `make reproduce` (about 22 minutes for smol alone); `make test` (pytest tests notebooks
# --nbval-lax) only checks that each notebook runs end to end and that its `# NBVAL_CHECK_OUTPUT` cells print what
# the sources store (the outputs of a smoke chain on smol, copied in with `mf store-checked --model smol --smoke`
# after `mf reproduce --model smol --smoke`). This hook appends `smoke = True` to each notebook's parameters cell as
# nbval collects it, as papermill's injected-parameters cell would; the notebook files are not changed. It lives
# here (pytest calls a session's collection hooks in every conftest it loaded) because a notebooks/conftest.py
# would shadow this module's `from conftest import ...` in the tests.
NBVAL_SMOKE_LINE = "\nsmoke = True  # injected by tests/conftest.py: nbval runs the notebooks at smoke size"


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        if NBVAL_SMOKE_LINE not in cell.source:
            cell.source = cell.source + NBVAL_SMOKE_LINE


# ---- a repository with one notebook, for chain tests that need a notebook of their own ---------------------------
def fake_repo(tmp_path: Path, notebook: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """A repository root (MF_ROOT) whose only notebook is ``notebook`` (as ``00_test.ipynb``), the output root
    (MF_OUT) and the environment to run the chain in: ``(out, env)``."""
    import json

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "00_test.ipynb").write_text(json.dumps(notebook))
    for shared in ("checkpoints", "paper"):                  # read only: outputs go to MF_OUT
        (root / shared).symlink_to(REPO / shared)
    out = tmp_path / "out"
    env = {**_os.environ, "MF_ROOT": str(root), "MF_OUT": str(out), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return out, env
