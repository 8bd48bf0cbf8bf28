"""Every architecture adapter (llava, qwen2_vl, qwen2_5_vl, internvl) on its tiny random model, end to end
through the library: token groups from a world prompt, knockout (no-op bit-identical, a cut changes only the
cut queries' logits), head scaling against a weight edit, the logit lens of the last layer equals the model's
logits; plus the llava-1.5 (llava-hf) chat template and vision settings."""

from __future__ import annotations

import pytest
import torch

from mfutils.model.archs import ARCHS
from mfutils.model.groups import edge_block, encode, render_prompt
from mfutils.model.hooks import active_hooks, knockout, logit_lens, residual_stream, scale_heads
from mfutils.model.loading import MLLM, RANDOM_ARCHS, random_model
from mfutils.data.world import make_sample

ARCHS_TESTED = ("llava", "qwen2_vl", "qwen2_5_vl", "internvl")


def test_every_adapter_has_a_random_model() -> None:
    assert set(ARCHS_TESTED) == set(RANDOM_ARCHS) == set(ARCHS)


@pytest.fixture(scope="module", params=ARCHS_TESTED)
def model(request: pytest.FixtureRequest) -> MLLM:
    return random_model(request.param, n_layers=3, seed=1)


@pytest.fixture(scope="module")
def batch(model: MLLM):  # type: ignore[no-untyped-def]
    samples = [make_sample(11, i, c) for i, c in enumerate(("follow_image", "follow_text", "agree", "image_only"))]
    samples.append(make_sample(11, 9, "follow_text", variant="system"))
    samples.append(make_sample(11, 10, "follow_image", variant="instruction_last"))
    return samples, encode(model, [s.prompt for s in samples])


def _logits(mm: MLLM, enc) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return mm.model(**enc.inputs).logits


def test_token_groups_found(model: MLLM, batch) -> None:  # type: ignore[no-untyped-def]
    samples, enc = batch
    g = enc.groups
    n_img = g.lengths("image")
    assert (n_img == 16).all(), n_img                        # every tiny processor: 16 image tokens
    assert (enc.inputs["input_ids"][g["image"]] == model.image_token_id).all()
    for b, s in enumerate(samples):
        for name, text in s.prompt.segments:
            if name != "image":
                assert g.lengths(name)[b] == len(text.split()), (model.spec.name, name, b)
    assert (g.lengths("last") == 1).all()
    # InternVL wraps the image in <img> ... </img>: those two tokens are template ("other"), not image
    if model.spec.name == "internvl":
        other_ids = enc.inputs["input_ids"][0][g["other"][0]].tolist()
        assert model.tokenizer.convert_tokens_to_ids("<img>") in other_ids
        assert model.tokenizer.convert_tokens_to_ids("</img>") in other_ids


def test_knockout_noop_and_cut(model: MLLM, batch) -> None:  # type: ignore[no-untyped-def]
    _, enc = batch
    ref = _logits(model, enc)
    empty = torch.zeros_like(edge_block(enc.groups, "image", "last"))
    with knockout(model, empty, layers=range(model.n_layers)):
        assert torch.equal(_logits(model, enc), ref)
    with knockout(model, edge_block(enc.groups, ["image", "context"], "last"), layers=range(model.n_layers)):
        cut = _logits(model, enc)
    last = enc.groups["last"]
    assert (cut[last] - ref[last]).abs().max() > 1e-4
    assert torch.equal(cut[~last & ~enc.groups.pad], ref[~last & ~enc.groups.pad])    # only the cut queries change
    assert active_hooks(model) == 0


def test_head_scaling_equals_a_weight_edit(model: MLLM, batch) -> None:  # type: ignore[no-untyped-def]
    _, enc = batch
    ref = _logits(model, enc)
    with scale_heads(model, {(1, 2): 1.0}):
        assert torch.equal(_logits(model, enc), ref)
    with scale_heads(model, {(1, 2): 0.0, (2, 0): 2.5}):
        hooked = _logits(model, enc)
    hd = model.head_dim
    w1, w2 = model.o_proj(1).weight, model.o_proj(2).weight
    saved = w1.data.clone(), w2.data.clone()
    try:
        w1.data[:, 2 * hd:3 * hd] *= 0.0
        w2.data[:, 0:hd] *= 2.5
        edited = _logits(model, enc)
    finally:
        w1.data.copy_(saved[0])
        w2.data.copy_(saved[1])
    assert (hooked - ref).abs().max() > 1e-5
    torch.testing.assert_close(hooked, edited, atol=2e-5, rtol=1e-4)
    assert torch.equal(_logits(model, enc), ref)


def test_logit_lens_of_the_last_layer_is_the_output(model: MLLM, batch) -> None:  # type: ignore[no-untyped-def]
    _, enc = batch
    ref = _logits(model, enc)
    with torch.no_grad():
        stream = residual_stream(model, enc)                 # [L+1, B, T, D]
        lens = logit_lens(model, stream[-1])
    assert stream.shape[0] == model.n_layers + 1
    torch.testing.assert_close(lens, ref, atol=1e-4, rtol=1e-4)


# ---- llava-1.5 as llava-hf ships it --------------------------------------------------------------------
# chat_template.json of llava-hf/llava-1.5-7b-hf: images first, then every text item followed by a space
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_llava_1_5_template_and_vision_settings() -> None:
    mm = random_model("llava", n_layers=2)
    cfg = mm.model.config
    cfg.vision_feature_layer = -2                            # llava-1.5's: the penultimate CLIP layer
    assert cfg.vision_feature_select_strategy == "default"   # CLS dropped: 16 patch tokens
    mm.processor.chat_template = LLAVA_HF_TEMPLATE
    try:
        s = make_sample(5, 0, "follow_text")
        text = render_prompt(mm, s.prompt)
        body = " ".join(t for n, t in s.prompt.segments if n != "image")
        assert text == f"USER: <image>\n{body} ASSISTANT:"
        # a system sentence before the image: llava-hf renders images first, the groups still find it
        sys_s = make_sample(5, 1, "follow_image", variant="system")
        enc = encode(mm, [s.prompt, sys_s.prompt])
        assert enc.texts[1].startswith("USER: <image>\n" + sys_s.prompt.text("system"))
        assert int(enc.groups.lengths("system")[1]) == len(sys_s.prompt.text("system").split())
        assert (enc.groups.lengths("image") == 16).all()
        with torch.no_grad():
            out = mm.model(**enc.inputs).logits
        assert torch.isfinite(out).all()
    finally:
        mm.processor.chat_template = None
