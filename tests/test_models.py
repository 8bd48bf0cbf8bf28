"""Loading by name: clear errors for bad input, the adapters' facts on every architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfutils.model.archs import ARCHS, spec_for_model_type
from mfutils.model.loading import RANDOM_ARCHS, ModelNotFoundError, load_model


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'.*random:llava"):
        load_model("no-such-model")


def test_unknown_random_arch_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="random:qwen2_5_vl"):
        load_model("random:mamba")


def test_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_uncached_hub_id_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_model("llava-hf/llava-1.5-7b-hf")


def test_bad_attention_implementation() -> None:
    with pytest.raises(ValueError, match="flash"):
        load_model("random:llava", attn_implementation="flash_attention_2")


def test_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="no architecture adapter for model_type 'mamba'"):
        spec_for_model_type("mamba")


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_adapter_paths_resolve(arch: str) -> None:
    mm = load_model(f"random:{arch}")
    assert mm.spec is ARCHS[arch]
    assert len(mm.layers) == mm.n_layers
    assert mm.o_proj(0).in_features == mm.n_heads * mm.head_dim
    assert mm.unembed.out_features == len(mm.tokenizer)
    assert mm.final_norm.weight.shape[0] == mm.hidden_size
    assert mm.image_token_id == mm.tokenizer.convert_tokens_to_ids(mm.spec.image_token)


# ---- real-model loading: device_map, dtype and its errors -------------------------------------
import json

import torch

from mfutils.model.archs import UnsupportedArchitectureError
from mfutils.model.loading import CheckpointError, default_dtype, random_model


@pytest.fixture(scope="module")
def saved_internvl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A random InternVL saved as a checkpoint folder, and its logits on one prompt."""
    from mfutils.model.groups import encode
    from mfutils.data.world import make_sample

    mm = random_model("internvl", n_layers=2)
    path = tmp_path_factory.mktemp("internvl")
    mm.model.save_pretrained(path)
    mm.processor.save_pretrained(path)
    enc = encode(mm, [make_sample(3, 0, "follow_image").prompt])
    with torch.no_grad():
        return path, mm.model(**enc.inputs).logits


def test_device_auto_loads_through_accelerate(saved_internvl: tuple[Path, torch.Tensor]) -> None:
    from mfutils.model.groups import encode
    from mfutils.data.world import make_sample

    path, ref = saved_internvl
    mm = load_model(str(path), device="auto")
    assert mm.spec is ARCHS["internvl"] and mm.model.dtype == default_dtype("auto")
    enc = encode(mm, [make_sample(3, 0, "follow_image").prompt])
    with torch.no_grad():
        got = mm.model(**enc.inputs).logits
    assert torch.equal(got, ref) if not torch.cuda.is_available() else torch.allclose(got.float().cpu(), ref, atol=0.1)


def test_default_dtype() -> None:
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    assert default_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such"))


def test_unsupported_architecture_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedArchitectureError, match=rf"{tmp_path}: no architecture adapter for model_type 'mamba'"):
        load_model(str(tmp_path))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_weights_say_how_to_fetch_them(saved_internvl: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    path = _copy(saved_internvl[0], tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as err:
        load_model(str(path))
    msg = str(err.value)
    assert f"no weights in {path}" in msg
    assert f"huggingface-cli download OpenGVLab/InternVL3-8B-hf --local-dir {path}" in msg


def test_truncated_checkpoint_is_a_clear_error(saved_internvl: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    path = _copy(saved_internvl[0], tmp_path / "ckpt")
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"the weights file {f} cannot be read.*truncated or corrupt"):
        load_model(str(path))


def test_incomplete_sharded_download(saved_internvl: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    path = _copy(saved_internvl[0], tmp_path / "ckpt")
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelNotFoundError, match="1 of 2 weight shards are missing.*model-00002-of-00002"):
        load_model(str(path))


# ---- the architecture table's tiny-model factories (mfutils.model.tiny) ------------------------------
from mfutils.model.loading import resolve_model_path
from mfutils.model.tiny import build_processor, build_word_tokenizer, tiny_parts


def test_resolve_model_path_is_load_models_resolution(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path.parent))


def test_build_processor_of_an_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'mamba'.*qwen2_5_vl"):
        build_processor("mamba", build_word_tokenizer(["red"]))


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_tiny_parts_apply_the_text_and_vision_overrides(arch: str) -> None:
    tok, proc, cfg = tiny_parts(arch, ["red", "blue"], n_layers=2,
                                text={"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1})
    text = getattr(cfg, ARCHS[arch].text_config_attr)
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (32, 2, 1)
    assert text.num_hidden_layers == 2 and text.vocab_size == len(tok)
    assert proc.tokenizer is tok and tok.convert_tokens_to_ids(ARCHS[arch].image_token) != tok.unk_token_id
    _, _, default = tiny_parts(arch, ["red", "blue"])
    assert getattr(default, ARCHS[arch].text_config_attr).hidden_size == 64


def test_llava_tiny_config_counts_image_tokens_from_the_patch_size() -> None:
    tok = build_word_tokenizer(["red"])
    cfg = ARCHS["llava"].tiny_config(tok, 1, 64, vision={"patch_size": 8, "hidden_size": 16})
    assert cfg.image_seq_length == 64 and cfg.vision_config.hidden_size == 16
    assert ARCHS["llava"].tiny_config(tok, 1, 64).image_seq_length == 16
