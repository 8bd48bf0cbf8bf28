"""Loading by name: clear errors for bad input, the adapters' facts on every architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfutils.archs import ARCHS, spec_for_model_type
from mfutils.models import RANDOM_ARCHS, ModelNotFoundError, load_model


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
