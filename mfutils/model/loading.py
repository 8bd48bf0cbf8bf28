"""Loading MLLMs by name: the shipped models (smol, tiny), tiny random models of each architecture, real checkpoints.

Public API
----------
MLLM                              a loaded model + processor + its architecture adapter (``ArchSpec``)
load_model(name, ...) -> MLLM     ``"smol"`` (the shipped default: SmolLM2 inside a Llava), ``"tiny"`` (the
                                  from-scratch contrast), ``"random:<arch>"``, a local path, or a Hugging Face id
                                  already in the local cache (never downloads)
RANDOM_ARCHS                      the ``random:<arch>`` names
resolve_model_path(name) -> Path  the checkpoint folder ``load_model(name)`` reads (never downloads)
DEFAULT_MODEL                     name of the default model ("smol")
SHIPPED                           shipped model name -> its folder under checkpoints/
random_model(arch, ...) -> MLLM   a tiny random model of ``arch`` in ``RANDOM_ARCHS`` (llava, qwen2_vl,
                                  qwen2_5_vl, internvl), built offline; or a skeleton on a pretrained LM
                                  (``mfutils.model.smol.SKELETONS``: ``random:smol``, SmolLM2 inside a Llava)
default_dtype(device)             bfloat16 on GPU, float32 on CPU
rank_gpus(device_count, local_rank, local_size) -> list[int]   one process's GPUs when several share a machine
ModelNotFoundError, CheckpointError   clear errors naming the path and the fix

Example::

    mm = load_model("random:qwen2_5_vl")          # tiny random Qwen2.5-VL, built offline
    mm.n_layers, mm.n_heads, mm.head_dim
    mm.o_proj(2)                                   # layer 2's attention output projection
    mm = load_model("/data/InternVL3-8B-hf", device="auto")   # bf16, spread over the GPUs by accelerate
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from mfutils.model.archs import ARCHS, ArchSpec, get_module, spec_for_model_type, without_video
from mfutils.model.smol import SKELETONS, is_parts_folder, load_parts
from mfutils.model.tiny import tiny_parts
from mfutils.core.paths import checkpoint_dir
from mfutils.core.processes import world

__all__ = [
    "MLLM",
    "load_model",
    "RANDOM_ARCHS",
    "resolve_model_path",
    "DEFAULT_MODEL",
    "SHIPPED",
    "random_model",
    "ModelNotFoundError",
    "CheckpointError",
    "default_dtype",
    "rank_gpus",
]

DEFAULT_MODEL = "smol"
# Models shipped under checkpoints/: name -> folder. "smol" is the pretrained-LM model (SmolLM2 inside a Llava;
# its folder holds only the trained parts, merged into the verified base at load: mfutils.model.smol).
SHIPPED: dict[str, str] = {"tiny": "tiny-llava", "smol": "smol-llava"}
RANDOM_ARCHS: tuple[str, ...] = tuple(ARCHS)        # every adapter builds a tiny random model ("llava", "qwen2_vl", ...)
SUPPORTED_ATTN = ("sdpa", "eager")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither known, nor a local path, nor in the local Hugging Face cache; or a
    checkpoint folder without weights."""


class CheckpointError(RuntimeError):
    """A checkpoint folder whose weights cannot be read (truncated or corrupt file)."""


@dataclass
class MLLM:
    """A loaded multimodal LLM with the facts of its architecture.

    Attributes: ``model`` (transformers model, eval mode), ``processor`` (its processor), ``spec``
    (``ArchSpec``), ``name`` (what it was loaded as), ``info`` (free-form provenance, e.g. the model card).
    """

    model: Any
    processor: Any
    spec: ArchSpec
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    # ---- configuration facts -------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def text_config(self) -> Any:
        return getattr(self.model.config, self.spec.text_config_attr)

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.text_config, "head_dim", None)
        return int(hd) if hd else int(self.text_config.hidden_size) // self.n_heads

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    @property
    def image_token_id(self) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(self.spec.image_token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer of {self.name!r} has no image token {self.spec.image_token!r}")
        return int(tid)

    @property
    def attn_implementation(self) -> str:
        return str(self.text_config._attn_implementation)

    # ---- modules ---------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.model, self.spec.layers)  # type: ignore[return-value]

    def attn(self, layer: int) -> nn.Module:
        return get_module(self.layers[layer], self.spec.attn)

    def o_proj(self, layer: int) -> nn.Module:
        return get_module(self.layers[layer], self.spec.o_proj)

    def mlp(self, layer: int) -> nn.Module:
        return get_module(self.layers[layer], self.spec.mlp)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.spec.final_norm)

    @property
    def unembed(self) -> nn.Linear:
        return get_module(self.model, self.spec.unembed)  # type: ignore[return-value]

    def set_attn_implementation(self, impl: str) -> None:
        """Switch the language model (and vision tower) between ``"sdpa"`` and ``"eager"``."""
        if impl not in SUPPORTED_ATTN:
            raise ValueError(f"attention implementation {impl!r} not supported; use one of {SUPPORTED_ATTN}")
        self.model.set_attn_implementation(impl)

    def __repr__(self) -> str:
        return (f"MLLM({self.name!r}, arch={self.spec.name}, layers={self.n_layers}, heads={self.n_heads}, "
                f"head_dim={self.head_dim}, attn={self.attn_implementation})")


# ------------------------------------------------------------------------------------------------
# Tiny random models (their parts come from the architecture table, see mfutils.model.tiny)
# ------------------------------------------------------------------------------------------------
def random_model(arch: str, *, seed: int = 0, n_layers: int = 4, words: Iterable[str] | None = None,
                 attn_implementation: str = "sdpa", image_size: int = 64) -> MLLM:
    """A tiny randomly initialised MLLM of ``arch`` with a word-level tokenizer, built offline.

    ``words`` defaults to the vocabulary of the synthetic world, so the random model reads world prompts.
    The weights are drawn under ``torch.manual_seed(seed)`` inside ``fork_rng``: the global RNG is untouched.

    Example: ``mm = random_model("internvl", n_layers=2)``.
    """
    import transformers

    if arch in SKELETONS:     # a pretrained LM inside: its own size and tokenizer (n_layers, words, image_size unused)
        sk = SKELETONS[arch]
        model, proc = sk.build(seed=seed, attn_implementation=attn_implementation)
        return MLLM(model=model, processor=proc, spec=ARCHS[sk.arch], name=f"random:{arch}",
                    info={"seed": seed, **sk.info})
    if arch not in RANDOM_ARCHS:
        raise ValueError(f"unknown random architecture {arch!r}; use one of "
                         f"{', '.join('random:' + a for a in (*RANDOM_ARCHS, *SKELETONS))}")
    if words is None:
        from mfutils.data.world import vocabulary

        words = vocabulary()
    spec = ARCHS[arch]
    _, proc, cfg = tiny_parts(arch, words, n_layers=n_layers, image_size=image_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(cfg)
    model.set_attn_implementation(attn_implementation)
    model.eval()
    return MLLM(model=model, processor=proc, spec=spec, name=f"random:{arch}", info={"seed": seed})


# ------------------------------------------------------------------------------------------------
# Loading by name
# ------------------------------------------------------------------------------------------------
def _load_processor(path: Path, spec: ArchSpec) -> Any:
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except Exception:
        if spec.processor_class is None:
            raise
        # no torchvision -> no video processor: build the processor without it (see the notes)
        base = getattr(transformers, spec.processor_class)
        return without_video(base).from_pretrained(path, local_files_only=True)


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def _fetch_hint(name: str, path: Path, spec: ArchSpec | None) -> str:
    hub_id = name if _looks_like_hub_id(name) else (spec.hub_id if spec and spec.hub_id else "<org>/<model>")
    return (f"On a machine with network access run `huggingface-cli download {hub_id} --local-dir {path}` "
            f"(or `hf download {hub_id} --local-dir {path}`), copy the folder here and pass it as the model.")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not Path(name).exists()


def _check_weights(path: Path, name: str, spec: ArchSpec) -> list[Path]:
    """The weight files of a checkpoint folder; clear errors for missing or unreadable ones."""
    files = sorted(f for pat in _WEIGHT_PATTERNS for f in path.glob(pat))
    if not files:
        raise ModelNotFoundError(
            f"no weights in {path}: it has a config.json ({spec.name} architecture) but no *.safetensors or *.bin "
            f"file. {_fetch_hint(name, path, spec)}"
        )
    index = path / "model.safetensors.index.json"
    if index.exists():
        import json

        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise ModelNotFoundError(
                f"{len(missing)} of {len(shards)} weight shards are missing in {path} (first: {missing[0]}): the "
                f"download was incomplete. {_fetch_hint(name, path, spec)}"
            )
    from safetensors import safe_open

    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:  # reads the header and checks it against the file size: a truncated file fails here
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as exc:
            raise CheckpointError(
                f"the weights file {f} cannot be read ({type(exc).__name__}: {exc}); it is probably truncated or "
                f"corrupt (size {f.stat().st_size} bytes). Fetch it again. {_fetch_hint(name, path, spec)}"
            ) from exc
    return files


def resolve_model_path(name: str) -> Path:
    """The checkpoint folder that ``load_model(name)`` reads: ``"tiny"``, a local folder, or a Hugging Face id
    in the local cache (never downloaded); ``ModelNotFoundError`` naming the fix otherwise.

    Example: ``resolve_model_path("tiny") / "config.json"``.
    """
    if name in SHIPPED:
        p = checkpoint_dir(SHIPPED[name])
        if not ((p / "config.json").exists() or is_parts_folder(p)):
            raise ModelNotFoundError(
                f"the shipped model {name!r} is missing at {p}: run `mf train --model {name}` or restore "
                "checkpoints/ from git"
            )
        return p
    p = Path(name).expanduser()
    if p.exists():
        if not ((p / "config.json").exists() or is_parts_folder(p)):
            raise ModelNotFoundError(f"{p} exists but holds no config.json: is it a transformers checkpoint folder?")
        return p
    # A Hugging Face id: only from the local cache, never a download.
    if _looks_like_hub_id(name):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception as exc:
            raise ModelNotFoundError(
                f"weights for {name!r} are not in the local Hugging Face cache and this project never downloads "
                "at run time. On a machine with network access run `huggingface-cli download "
                f"{name} --local-dir <folder>`, copy the folder here and pass it as the model."
            ) from exc
    if name.startswith(("/", ".", "~")) or os.sep in name:
        raise ModelNotFoundError(f"model path {str(p)!r} does not exist: pass an existing checkpoint folder")
    raise ModelNotFoundError(
        f"unknown model {name!r}: use 'smol' (the shipped default), 'tiny' (the from-scratch contrast), "
        f"{', '.join('random:' + a for a in (*RANDOM_ARCHS, *SKELETONS))}, a local checkpoint folder, or a cached "
        "Hugging Face id such as llava-hf/llava-1.5-7b-hf"
    )


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on a GPU (``"cuda"``, ``"cuda:N"``, or ``"auto"`` when CUDA is available), float32 on CPU."""
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return torch.bfloat16 if on_gpu else torch.float32


def rank_gpus(device_count: int, local_rank: int, local_size: int) -> list[int]:
    """The GPUs of one process when ``local_size`` processes share a machine's ``device_count`` GPUs: an equal,
    disjoint block each (``load_model(device="auto")`` spreads the model over it).

    Example: ``rank_gpus(8, 1, 4)`` -> [2, 3].
    """
    per = device_count // local_size
    if per < 1:
        raise ValueError(f"{local_size} processes on a machine with {device_count} GPU(s): each process needs at least "
                         "one GPU; start at most as many processes per machine as it has GPUs")
    return list(range(local_rank * per, (local_rank + 1) * per))


def _placement(device: str) -> tuple[str, dict[int | str, Any] | None]:
    """(device, max_memory) for this process: in a group of processes on GPUs, ``cuda`` becomes the process's own
    GPU and ``auto`` its block of GPUs (``rank_gpus``); otherwise unchanged."""
    w = world()
    if w.size == 1 or not torch.cuda.is_available() or not (device == "auto" or device.startswith("cuda")):
        return device, None
    gpus = rank_gpus(torch.cuda.device_count(), w.local_rank, w.local_size)
    if device == "cuda":
        return f"cuda:{gpus[0]}", None
    if device == "auto":
        memory: dict[int | str, Any] = {i: (torch.cuda.mem_get_info(i)[1] if i in gpus else 0)
                                        for i in range(torch.cuda.device_count())}
        return "auto", memory
    return device, None


def load_model(name: str = DEFAULT_MODEL, *, attn_implementation: str = "sdpa", device: str = "cpu",
               dtype: torch.dtype | None = None) -> MLLM:
    """Load an MLLM by name, in eval mode.

    ``name``: ``"tiny"``, ``"random:<arch>"`` (``RANDOM_ARCHS``), a local folder, or a Hugging Face id present
    in the local cache (never downloaded). ``device``: ``"cpu"``, ``"cuda[:N]"``, or ``"auto"``, which spreads
    a large model over the available GPUs (or the CPU) with accelerate's ``device_map="auto"``. ``dtype``:
    default bfloat16 on GPU, float32 on CPU (``default_dtype``). Raises ``ModelNotFoundError`` (unknown name,
    missing path or weights), ``UnsupportedArchitectureError`` (no adapter for the config's model_type) or
    ``CheckpointError`` (unreadable weights), each naming the path and the fix. In a group of processes on GPUs
    (``mfutils.core.processes``), ``"cuda"`` is the process's own GPU and ``"auto"`` spreads the model over the
    process's block of GPUs only (``rank_gpus``: 8 GPUs, 4 processes -> 2 each).

    Example::

        mm = load_model("/data/llava-1.5-7b-hf", device="auto")      # bf16 over the GPUs
    """
    import json

    import transformers

    from mfutils.model.archs import UnsupportedArchitectureError

    if attn_implementation not in SUPPORTED_ATTN:
        raise ValueError(f"attention implementation {attn_implementation!r} not supported; use one of {SUPPORTED_ATTN}")
    device, max_memory = _placement(device)
    if name.startswith("random:"):
        mm = random_model(name.split(":", 1)[1], attn_implementation=attn_implementation)
        mm.model.to(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        mm.model.to(dtype or default_dtype(device))         # as for checkpoints: bf16 on GPU, float32 on CPU
        return mm
    path = resolve_model_path(name)
    if is_parts_folder(path):                 # trained parts on a pretrained base (the "smol" model)
        model, processor, info = load_parts(path, attn_implementation=attn_implementation)
        info = {"path": str(path), "dtype": str(dtype or default_dtype(device)).replace("torch.", ""), **info}
        model.to(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(dtype or default_dtype(device))
        card = path / "model_card.json"
        if card.exists():
            info["card"] = json.loads(card.read_text())
        return MLLM(model=model, processor=processor, spec=ARCHS["llava"], name=name, info=info)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({exc}): the checkpoint is corrupt") from exc
    model_type = config.get("model_type", "")
    try:
        spec = spec_for_model_type(model_type)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{path}: {exc}") from None
    _check_weights(path, name, spec)
    cls = getattr(transformers, spec.model_class)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, "dtype": dtype or default_dtype(device)}
    if device == "auto":
        kwargs["device_map"] = "auto"
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    try:
        model = cls.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        from mfutils.model.batching import is_out_of_memory

        if is_out_of_memory(exc) or (isinstance(exc, ValueError) and "device_map" in str(exc)):
            raise                 # not a checkpoint problem: memory, or accelerate's placement
        raise CheckpointError(
            f"loading {path} as {spec.model_class} failed ({type(exc).__name__}: {str(exc)[:300]}). The weights do "
            f"not match the config or are corrupt. {_fetch_hint(name, path, spec)}"
        ) from exc
    if device != "auto":
        model.to(device)
    model.eval()
    processor = _load_processor(path, spec)
    if getattr(processor.tokenizer, "padding_side", "left") != "left":
        processor.tokenizer.padding_side = "left"
    info: dict[str, Any] = {"path": str(path), "dtype": str(kwargs["dtype"]).replace("torch.", "")}
    if device == "auto":
        info["device_map"] = {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    card = path / "model_card.json"
    if card.exists():
        info["card"] = json.loads(card.read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return MLLM(model=model, processor=processor, spec=spec, name=name, info=info)
