"""Wings: exact zero init, single add, textual causality, KV-cache generation, mixed batches,
save/load, training-stage parameter groups, bad input. All on the tiny offline LLaVA."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mlan.config.base import validate_config
from mlan.errors import MlanError
from mlan.paths import BUNDLED_DATA_DIR
from mlan.wings import (
    WingsConfig,
    add_wings,
    is_wings_dir,
    load_wings_model,
    load_wings_weights,
    save_wings_model,
    wings_layers,
    wings_parameter_groups,
)

ROUTERS = [("modality", "sdpa"), ("modality", "eager"), ("attention", "eager")]


@pytest.fixture(scope="module")
def tiny():
    """(base model, processor, image) built once; tests work on deep copies."""
    from PIL import Image

    from mlan.tiny import build_tiny_llava

    torch.manual_seed(0)
    model, processor = build_tiny_llava("tiny", seed=0)
    image = Image.open(BUNDLED_DATA_DIR / "images" / "skimage_coins.png").convert("RGB")
    return model, processor, image


def _prompt(processor, text, image=False):
    content = [{"type": "image"}, {"type": "text", "text": text}] if image else text
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def _batch(tiny, rows):
    """rows: list of (text, has_image) -> processor output with left padding."""
    _, processor, image = tiny
    texts = [_prompt(processor, t, img) for t, img in rows]
    images = [image for _, img in rows if img] or None
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


MIXED = [("What is two plus two? Answer briefly please.", False), ("What is shown?", True)]


def _wings(tiny, router="modality", attn="sdpa", **kw):
    base = copy.deepcopy(tiny[0])
    base.set_attn_implementation(attn)
    return add_wings(base, WingsConfig(rank=8, router=router, **kw))


def _randomize(model, seed=1, std=0.3):
    """Make every learner and router non-zero (B projections start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wings_layers(model).values():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@torch.no_grad()
def _logits(model, inputs):
    return model(**inputs).logits


@pytest.mark.parametrize(("router", "attn"), ROUTERS)
def test_zero_init_logits_equal_base_exactly(tiny, router, attn):
    base = copy.deepcopy(tiny[0])
    base.set_attn_implementation(attn)
    mixed, text = _batch(tiny, MIXED), _batch(tiny, [MIXED[0]])
    ref_mixed, ref_text = _logits(base, mixed), _logits(base, text)
    model = add_wings(base, WingsConfig(rank=8, router=router))
    assert torch.equal(_logits(model, mixed), ref_mixed)
    assert torch.equal(_logits(model, text), ref_text)
    # Not vacuous: non-zero learners do change the logits, on text and on image rows.
    _randomize(model)
    changed = (_logits(model, mixed) - ref_mixed).abs().amax(dim=(1, 2))
    assert (changed > 1e-3).all()


def test_each_learner_output_added_once(tiny):
    model = _randomize(_wings(tiny))
    inputs = _batch(tiny, MIXED)
    layer = model.model.language_model.layers[1]
    seen = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("x", a[0] if a else k["hidden_states"]), with_kwargs=True
        ),
        # The main attention's own output (Wings adds its learners to the attention module's output).
        layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o)),
        layer.wings.visual.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o)),
        layer.wings.textual.register_forward_hook(lambda m, i, o: seen.__setitem__("t", o)),
        layer.wings.router.register_forward_hook(lambda m, i, o: seen.__setitem__("w", o)),
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])),
    ]
    _logits(model, inputs)
    for h in hooks:
        h.remove()
    h = seen["x"] + seen["attn"]
    w = seen["w"]
    expected = h + (w[..., :1] * seen["v"] + w[..., 1:] * seen["t"])
    assert torch.allclose(seen["h"], expected, atol=1e-6)
    twice = h + 2 * (w[..., :1] * seen["v"] + w[..., 1:] * seen["t"])
    assert not torch.allclose(seen["h"], twice, atol=1e-3)
    # The text-only row (row 0) has the visual learner switched off: w_v = 0, w_t = 1.
    assert torch.equal(w[0, :, 0], torch.zeros_like(w[0, :, 0]))
    assert torch.equal(w[0, :, 1], torch.ones_like(w[0, :, 1]))
    assert (w[1, :, 0] > 0).all()


@pytest.mark.parametrize("image", [False, True])
def test_textual_learner_is_causal(tiny, image):
    model = _randomize(_wings(tiny))
    _, processor, _ = tiny
    a = _batch(tiny, [("The capital of France is Paris and the sky is blue today.", image)])
    b = {k: v.clone() for k, v in a.items()}
    cut = a["input_ids"].shape[1] - 6
    future = b["input_ids"][:, cut:]
    b["input_ids"][:, cut:] = torch.where(future == processor.tokenizer.pad_token_id, future, (future + 7) % 1000 + 10)
    la, lb = _logits(model, a), _logits(model, b)
    assert torch.allclose(la[:, :cut], lb[:, :cut], atol=1e-6)
    assert not torch.allclose(la[:, cut:], lb[:, cut:], atol=1e-3)
    # Same check on the textual learner alone (its output before routing).
    outs = []
    hook = model.model.language_model.layers[0].wings.textual.register_forward_hook(
        lambda m, i, o: outs.append(o) if torch.is_tensor(o) else None  # outputs, not keys_values' pairs
    )
    _logits(model, a), _logits(model, b)
    hook.remove()
    assert torch.allclose(outs[0][:, :cut], outs[1][:, :cut], atol=1e-6)
    assert not torch.allclose(outs[0][:, cut:], outs[1][:, cut:], atol=1e-4)


@pytest.mark.parametrize(("router", "attn"), ROUTERS)
def test_generation_with_cache_equals_without(tiny, router, attn):
    model = _randomize(_wings(tiny, router, attn))
    for rows in ([MIXED[0]], [MIXED[1]], MIXED):
        inputs = _batch(tiny, rows)
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached), rows


def test_decoder_layers_receive_the_cache(tiny):
    """The transformers behaviour Wings relies on by name (mlan.wings.runtime._layer_cache): during
    cached generation every decoder layer is called with the cache object as a keyword argument,
    `cache` (transformers >= 5.24) or `past_key_values` (before)."""
    from transformers import Cache

    from mlan.wings.runtime import _layer_cache

    model = copy.deepcopy(tiny[0])
    seen = []
    hook = model.model.language_model.layers[0].register_forward_pre_hook(
        lambda m, a, k: seen.append(_layer_cache(k)), with_kwargs=True
    )
    model.generate(**_batch(tiny, [MIXED[0]]), max_new_tokens=3, do_sample=False)
    hook.remove()
    assert len(seen) == 3 and all(isinstance(c, Cache) for c in seen)
    assert seen[0] is seen[-1] and seen[-1].get_seq_length() > 0


def test_mixed_batch_rows_match_single_rows(tiny):
    model = _randomize(_wings(tiny))
    rows = [MIXED[0], MIXED[1], ("Name a colour.", False), ("Describe it in one word.", True)]
    batch = _batch(tiny, rows)
    together = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
    pos = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batched_logits = _logits(model, {**batch, "position_ids": pos})
    for i, row in enumerate(rows):
        single = _batch(tiny, [row])
        alone = model.generate(**single, max_new_tokens=5, do_sample=False)[:, -5:]
        assert torch.equal(together[i], alone[0]), row
        n = single["input_ids"].shape[1]
        assert torch.allclose(batched_logits[i, -n:], _logits(model, single)[0], atol=1e-5)


def test_save_and_load_round_trip(tiny, tmp_path):
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    from mlan.models import extract_language_model

    base = copy.deepcopy(tiny[0])
    inputs = _batch(tiny, MIXED)
    base_logits = _logits(base, inputs)
    # With the processor: the system prompt left out of the textual learner's keys is saved and restored.
    model = _randomize(add_wings(base, WingsConfig(rank=8, layers=[1], router="modality"), processor=tiny[1]))
    expected = _logits(model, inputs)
    out = save_wings_model(model, tmp_path / "wings-model", tiny[1])
    assert is_wings_dir(out) and (out / "wings.safetensors").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not any("wings" in k for k in names)
    # The base folder is a standard LLaVA folder: it loads alone and gives the base model back.
    plain = LlavaForConditionalGeneration.from_pretrained(out)
    assert torch.equal(_logits(plain, inputs), base_logits)
    loaded, processor = load_wings_model(out, device="cpu")
    assert processor is not None
    assert torch.equal(_logits(loaded, inputs), expected)
    assert sorted(wings_layers(loaded)) == [1]
    # Saving again over it needs overwrite.
    with pytest.raises(MlanError, match="already exists"):
        save_wings_model(loaded, out, processor)
    # The text-only LLM extracted for text evaluation keeps the (textual) learners.
    text = _batch(tiny, [MIXED[0]])
    lm = extract_language_model(loaded)
    assert torch.equal(lm(**text).logits, _logits(loaded, text))
    # save_pretrained itself (what the Trainer calls, with a full state dict) writes the same layout,
    # and load_wings_weights restores the learners into a fresh Wings model (resume).
    ckpt = tmp_path / "checkpoint"
    model.save_pretrained(ckpt, state_dict=model.state_dict())
    tiny[1].save_pretrained(ckpt)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert not any("wings" in k for k in list(f.keys()))
    assert torch.equal(_logits(load_wings_model(ckpt, device="cpu")[0], inputs), expected)
    fresh = add_wings(copy.deepcopy(tiny[0]), WingsConfig(rank=8, layers=[1], router="modality"), processor=tiny[1])
    load_wings_weights(fresh, ckpt)
    assert torch.equal(_logits(fresh, inputs), expected)
    assert torch.equal(_logits(copy.deepcopy(fresh), inputs), expected)


def _train_step(model, inputs):
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model.zero_grad(set_to_none=True)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_parameter_groups_per_stage(tiny):
    model = _wings(tiny)
    inputs = _batch(tiny, MIXED)
    model.train()
    groups = wings_parameter_groups(model, 1)
    assert [g["name"] for g in groups] == ["projector", "visual_learners"]
    assert groups[0]["lr"] == 2e-4  # Wings' run/pretrain_wings_llama3_1.sh
    grads = _train_step(model, inputs)
    assert grads and all("multi_modal_projector" in n or ".wings.visual." in n for n in grads)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".wings.visual." in n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "multi_modal_projector" in n)

    _randomize(model)
    groups = wings_parameter_groups(model, 2)
    assert [g["name"] for g in groups] == ["language_model", "projector", "learners", "router"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("vision_tower" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and "lm_head.weight" in trainable
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == len(trainable)
    grads = _train_step(model, inputs)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".wings.router." in n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".wings.textual." in n)
    # Gradient checkpointing replays layers with the same side inputs: identical gradients.
    model.gradient_checkpointing_enable()
    checkpointed = _train_step(model, inputs)
    assert grads.keys() == checkpointed.keys()
    for n, g in grads.items():
        assert torch.allclose(g, checkpointed[n], atol=1e-6), n
    torch.optim.AdamW(groups).step()


def test_bad_input(tiny, tmp_path):
    from mlan.models import extract_language_model

    base = copy.deepcopy(tiny[0])
    with pytest.raises(MlanError, match=r"^Wings: expected a LLaVA-style model .* got LlamaForCausalLM$"):
        add_wings(extract_language_model(base), WingsConfig(rank=8))
    with pytest.raises(MlanError, match=r"^wings.layers: layer index 5 is out of range \(the language model has 2"):
        add_wings(base, WingsConfig(rank=8, layers=[0, 5]))
    with pytest.raises(MlanError, match=r"^wings.router: 'attention' needs eager attention, but the model uses 'sdpa'"):
        add_wings(base, WingsConfig(rank=8, router="attention"))
    model = add_wings(base, WingsConfig(rank=8, router="modality"))
    with pytest.raises(MlanError, match="already has Wings"):
        add_wings(model, WingsConfig(rank=8))
    with pytest.raises(MlanError, match="expected 1 or 2"):
        wings_parameter_groups(model, 3)
    with pytest.raises(MlanError, match="not a Wings model folder"):
        load_wings_model(tmp_path)
    (tmp_path / "wings_config.json").write_text(json.dumps({"format": "mlan-wings", "config": {"rank": 0}}))
    with pytest.raises(MlanError, match=r"wings_config.json: config: rank: input should be greater than 0"):
        load_wings_model(tmp_path)
    for data, message in (
        ({"layers": [-1]}, "layers: value error, layer indices are 0-based and non-negative (got -1)"),
        ({"layers": [1, 1]}, "layers: value error, layer indices must be unique"),
        ({"router": "mlp"}, "router: input should be 'attention' or 'modality'"),
        ({"rnak": 8}, "rnak: unknown field (did you mean 'rank'?)"),
    ):
        with pytest.raises(MlanError) as e:
            validate_config(data, WingsConfig, source="recipe.yaml: wings")
        assert str(e.value).startswith(f"recipe.yaml: wings: {message}"), str(e.value)


def test_router_forms_agree_with_their_definitions():
    from mlan.wings.router import Router, modality_features_from_probs, modality_features_sdpa, position_features

    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, n, s, d = 2, 4, 2, 5, 9, 8
    q, k = torch.randn(b, heads, n, d, generator=g), torch.randn(b, kv_heads, s, d, generator=g)
    image = torch.rand(b, s, generator=g) > 0.5
    visible = torch.rand(b, 1, n, s, generator=g) > 0.3
    visible[..., 0] = True
    mask = torch.zeros(b, 1, n, s).masked_fill(~visible, float("-inf"))
    scores = q @ k.repeat_interleave(heads // kv_heads, dim=1).transpose(-1, -2) * d**-0.5 + mask
    probs = scores.softmax(-1)
    # The SDPA trick (values = image-key indicator) gives exactly the attention mass on image keys.
    sdpa = modality_features_sdpa(q, k, image, mask, d**-0.5)
    assert torch.allclose(sdpa, modality_features_from_probs(probs, image), atol=1e-6)
    assert torch.allclose(sdpa[..., :heads] + sdpa[..., heads:], torch.ones(b, n, heads), atol=1e-6)
    # The paper's router without the (B, L, positions) tensor equals its spelled-out form.
    router = Router(6, init_std=0.5)
    positions = torch.randint(0, 10, (b, s), generator=g)  # some beyond the 6 slots share the last
    has_image = torch.tensor([True, False])
    fast = router.forward_positions(probs, positions, has_image)
    assert torch.allclose(fast, router(position_features(probs, positions, 6), has_image), atol=1e-6)
    assert torch.equal(fast[1], torch.tensor([0.0, 1.0]).expand(n, 2))
