"""Wings as its public code trains it: the attention router by default (eager attention), the textual
learner without the system prompt, the learning rates of Wings' scripts. On the tiny offline LLaVA."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mlan.config.recipe import SFTRecipe
from mlan.config.wings import WingsConfig
from mlan.errors import MlanError
from mlan.wings import add_wings, get_runtime, load_wings_model, save_wings_model, set_system_prompt
from mlan.wings.system import system_prefix_mask, system_prompt_ids
from tests.test_wings import _randomize


@pytest.fixture(scope="module")
def tiny():
    from mlan.tiny import build_tiny_llava

    torch.manual_seed(0)
    model, processor = build_tiny_llava("tiny", seed=0)
    model.set_attn_implementation("eager")
    return model, processor


def _prompt(processor, text: str) -> str:
    return processor.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def test_defaults_are_the_published_ones():
    config = WingsConfig()
    assert config.router == "attention"  # Wings' `wings_router_type: linear`
    # run/finetune_wings_*.sh: --learning_rate 2e-6 (LLM, learners, router), --mm_projector_lr 1e-5.
    assert config.stage2.model_dump() == {"language_model": 2e-6, "projector": 1e-5, "learners": 2e-6, "router": 2e-6}
    # run/pretrain_wings_llama3_1.sh: one --learning_rate 2e-4 for the projector and the visual learners.
    assert config.stage1.model_dump() == {"projector": 2e-4, "visual_learners": 2e-4}


def test_recipe_loads_eager_attention_for_the_attention_router():
    base = {"model": {"path": "m"}, "data": {"mixture": "x"}}
    recipe = SFTRecipe.model_validate({**base, "wings": {"stage": 2}})
    assert recipe.wings.router == "attention" and recipe.model.attn_implementation == "eager"
    sdpa = {**base, "model": {"path": "m", "attn_implementation": "sdpa"}}
    with pytest.raises(ValueError, match=r"wings\.router: .attention. needs eager attention, but model\.attn_impl"):
        SFTRecipe.model_validate({**sdpa, "wings": {"stage": 2}})
    modality = SFTRecipe.model_validate({**sdpa, "wings": {"stage": 2, "router": "modality"}})
    assert modality.model.attn_implementation == "sdpa"
    assert SFTRecipe.model_validate(base).model.attn_implementation is None  # plain SFT: untouched


def test_system_prompt_ids_from_the_chat_template(tiny):
    from mlan.train.preflight import PLAIN_TEMPLATE

    processor = tiny[1]
    ids = system_prompt_ids(processor)
    assert processor.tokenizer.decode(ids) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER:"
    )
    assert system_prompt_ids(processor, PLAIN_TEMPLATE) == []  # LLaVA's stage-1 format: nothing but BOS


def test_system_prefix_mask_rows():
    # BOS = 1, pad = 0, system prompt = (7, 8); row 0 left-padded, row 1 without BOS, row 2 without the prompt.
    ids = torch.tensor([[0, 0, 1, 7, 8, 5, 6], [7, 8, 5, 6, 9, 9, 9], [1, 7, 5, 8, 6, 9, 9]])
    valid = ids != 0
    mask = system_prefix_mask(ids, valid, (7, 8), 1)
    assert mask.int().tolist() == [[0, 0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [0] * 7]
    # An empty prompt (a template writing only BOS) leaves out the leading BOS alone.
    assert system_prefix_mask(ids, valid, (), 1)[:, :3].int().tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_textual_learner_keys_leave_out_the_system_prompt(tiny):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    _randomize(add_wings(model, WingsConfig(rank=8), processor=processor))
    inputs = processor(text=[_prompt(processor, "What is two plus two?")], return_tensors="pt")
    learner = model.model.language_model.layers[0].wings.textual
    seen = {}
    hook = learner.register_forward_hook(
        lambda m, args, out: seen.update(keys=args[3], values=args[4]) if len(args) > 3 else None  # not keys_values
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    n_system = 1 + len(get_runtime(model).system_ids)  # BOS + the system prompt
    ids = inputs["input_ids"]
    kept = torch.arange(n_system, ids.shape[1])[None]
    with torch.no_grad():
        x = model.get_input_embeddings()(ids[:, n_system:])
        cos, sin = model.model.language_model.rotary_emb(x, kept)
        keys, values = learner.keys_values(x, cos, sin)
    assert seen["keys"].shape[2] == ids.shape[1] - n_system
    assert torch.allclose(seen["keys"], keys, atol=1e-6) and torch.allclose(seen["values"], values, atol=1e-6)
    # Not vacuous: without the system prompt set, the learner sees every token.
    set_system_prompt(model, None)
    with torch.no_grad():
        hook = learner.register_forward_hook(lambda m, args, out: seen.update(keys=args[3]) if len(args) > 3 else None)
        model(**inputs)
        hook.remove()
    assert seen["keys"].shape[2] == ids.shape[1]


def test_cached_generation_and_round_trip_keep_the_exclusion(tiny, tmp_path):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    _randomize(add_wings(model, WingsConfig(rank=8), processor=processor))
    prompts = [_prompt(processor, "What is two plus two?"), "USER: no system prompt here ASSISTANT:"]
    inputs = processor(text=prompts, return_tensors="pt", padding=True)
    cached = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(cached, model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False))
    out = save_wings_model(model, tmp_path / "w", processor)
    saved = json.loads((out / "wings_config.json").read_text())
    assert saved["config"]["router"] == "attention"
    assert saved["system_prompt"] == {"ids": list(get_runtime(model).system_ids), "bos_token_id": 1}
    loaded, _ = load_wings_model(out, device="cpu")
    assert get_runtime(loaded).system_ids == get_runtime(model).system_ids
    assert torch.equal(loaded.generate(**inputs, max_new_tokens=5, do_sample=False), cached)
    # A folder saved before the system prompt was recorded keeps its textual learner on all text.
    del saved["system_prompt"]
    (out / "wings_config.json").write_text(json.dumps(saved))
    assert get_runtime(load_wings_model(out, device="cpu")[0]).system_ids is None
    (out / "wings_config.json").write_text(json.dumps({**saved, "system_prompt": [1, 2]}))
    with pytest.raises(MlanError, match="system_prompt: expected null or"):
        load_wings_model(out, device="cpu")
