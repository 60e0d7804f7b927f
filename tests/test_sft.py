"""`mlan sft` on the tiny LLaVA: full, LoRA, QLoRA; outputs; loss masking; bad input.

Mixtures are written here in the mixture-folder contract (DatasetDict + manifest.json) from the
real ARC / CommonsenseQA slices and the bundled images, so these tests do not depend on the
mixture stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "mlan" / "assets" / "data" / "images"
LETTER_PROMPT = "Choose the best option from the choices provided and answer with its letter."


def _mc_rows(path: Path, source: str, n: int) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:n]:
        r = json.loads(line)
        opts = "\n".join(f"{a} {t}" for a, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{r['question']}\n{LETTER_PROMPT}\n{opts}"},
                    {"role": "assistant", "content": r["answerKey"]},
                ],
                "images": [],
                "modality": "language",
                "source": source,
                "id": f"{source}-{r['id']}",
            }
        )
    return rows


def _image_rows(n: int) -> list[dict]:
    files = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    rows = []
    for i in range(n):
        f = files[i % len(files)]
        word = f.stem.split("_")[1]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "What does this picture show? Answer with one word."},
                    {"role": "assistant", "content": word},
                ],
                "images": [str(f)],
                "modality": "vision",
                "source": "bundled_images",
                "id": f"img-{i}",
            }
        )
    return rows


def make_mixture(out: Path, shared_data: Path, n_language: int = 48, n_vision: int = 16, n_long: int = 1) -> Path:
    """A small mixture folder: ARC-Easy + CommonsenseQA letter-answer rows, image rows, and
    `n_long` over-long rows of each modality (which training must drop and count)."""
    from datasets import Dataset, DatasetDict

    from mlan.data.mixture import features as mixture_features

    lang = _mc_rows(shared_data / "arc_easy" / "train.jsonl", "arc_easy", n_language // 2)
    lang += _mc_rows(shared_data / "commonsense_qa" / "train.jsonl", "commonsense_qa", n_language - n_language // 2)
    vision = _image_rows(n_vision)
    long_rows = []
    for i in range(n_long):
        for base in (lang[i], vision[i]):
            row = json.loads(json.dumps(base))
            row["messages"][0]["content"] = ("Context: " + lang[i]["messages"][0]["content"] + "\n") * 40
            row["id"] += "-long"
            long_rows.append(row)
    features = mixture_features()  # the mixture folder contract, as build-mixture writes it
    train = lang + vision + long_rows
    val = _mc_rows(shared_data / "arc_easy" / "validation.jsonl", "arc_easy", 8) + _image_rows(4)
    dd = DatasetDict(
        {"train": Dataset.from_list(train, features=features), "validation": Dataset.from_list(val, features=features)}
    )
    dd.save_to_disk(str(out))
    manifest = {
        "name": out.name,
        "covers_eval_tasks": ["arc_easy", "commonsense_qa"],
        "counts": {"language": len(lang), "vision": len(vision)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory, shared_data) -> Path:
    return make_mixture(tmp_path_factory.mktemp("mix") / "mixture", shared_data)


def _sft_args(model_dir: Path, mixture: Path, out: Path, *extra: str) -> list[str]:
    """`mlan sft tiny` (the shipped recipe) on a given model and built mixture folder."""
    data = ["-o", "data.spec=", "-o", f"data.mixture={mixture}"]
    return ["sft", "tiny", "-o", f"model.path={model_dir}", *data, "-o", f"output.dir={out}", *extra]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _component(weights: dict, part: str) -> dict:
    return {k: v for k, v in weights.items() if part in k}


def test_shipped_recipes_validate():
    from mlan.config.base import load_config
    from mlan.config.recipe import SFTRecipe
    from mlan.paths import shipped_files

    names = {f.stem: load_config(f, SFTRecipe) for f in shipped_files("recipes")}
    assert {"tiny", "vicuna", "llama2", "vicuna_lora", "vicuna_qlora"} <= set(names)
    for name in ("vicuna", "llama2"):
        r = names[name]
        t = r.training
        assert (r.train.language_model, r.train.projector, r.train.vision_tower) == ("full", True, False)
        assert (t.learning_rate, t.num_train_epochs, t.global_batch_size, t.max_length) == (2e-5, 1, 64, 2048)
        assert (t.lr_scheduler_type, t.warmup_ratio, t.seed, t.precision) == ("cosine", 0.03, 42, "bf16")
        assert t.batch_order == "llava" and t.gradient_checkpointing


def test_sft_config_gets_exactly_the_managed_fields(tmp_path):
    """The recipe -> SFTConfig mapping is written once (`managed_args`): the SFTConfig of a run gets the
    managed fields, mlan's defaults and `training.extra`, nothing else; `training.extra` may set no
    managed field (older names included); every TrainingSection field is mapped or explicitly mlan's own."""
    import dataclasses
    import re

    from trl import SFTConfig

    from mlan.config.recipe import SFTRecipe, TrainingSection
    from mlan.errors import MlanError
    from mlan.train.arguments import (
        MLAN_ONLY,
        RENAMED,
        batch_shape,
        managed_args,
        managed_sources,
        mlan_defaults,
        sft_config_kwargs,
    )
    from mlan.train.preflight import check_extra

    recipe = SFTRecipe.model_validate(
        {
            "model": {"path": "m"},
            "data": {"mixture": "mix"},
            "training": {
                "per_device_train_batch_size": 4,
                "global_batch_size": 16,
                "gradient_checkpointing": True,
                "extra": {"optim": "adamw_torch"},
            },
        }
    )
    batch = batch_shape(recipe.training, processes=2)
    assert (batch.accumulation, batch.global_size) == (2, 16)
    with pytest.raises(MlanError, match="global_batch_size 16: not a multiple of the 3 processes"):
        batch_shape(recipe.training, processes=3)
    # More GPUs than 16 rows / 4 per device: fewer rows per device keep the global batch, never more.
    assert batch_shape(recipe.training, processes=8) == type(batch)(2, 1, 8)
    assert batch_shape(recipe.training, processes=16) == type(batch)(1, 1, 16)
    managed = managed_args(recipe, checkpoints=tmp_path / "ck", precision="fp32", cuda=False, batch=batch)
    kwargs = sft_config_kwargs(recipe, managed, run_name="r")
    assert set(managed) <= {f.name for f in dataclasses.fields(SFTConfig)}
    assert set(kwargs) == set(managed) | set(mlan_defaults(recipe, "r")) | {"optim"}
    config = SFTConfig(**kwargs)
    for name, m in managed.items():
        if name != "report_to":  # SFTConfig turns "none" into []
            assert getattr(config, name) == m.value, name
    assert (config.gradient_accumulation_steps, config.max_length, config.use_cpu) == (2, None, True)

    sources = managed_sources(managed)
    assert set(sources) == set(managed) | set(RENAMED) and set(RENAMED.values()) <= set(managed)
    for key, source in sources.items():
        with pytest.raises(MlanError, match=re.escape(f"training.extra.{key}: set {source} instead")):
            check_extra({key: 1}, sources)
    check_extra({"optim": "adamw_torch", "run_name": "x"}, sources)

    mapped = {s.removeprefix("training.") for s in sources.values() if s.startswith("training.")}
    assert not mapped & set(MLAN_ONLY)
    assert mapped | set(MLAN_ONLY) == set(TrainingSection.model_fields)


def test_every_recipe_field_reaches_its_sftconfig_field(tmp_path):
    """Each training field set to a value no other field has, and each SFTConfig field checked against the
    recipe's value written here, not against the mapping's own output: a field wired to another field's
    value (clipping taking the weight decay) fails here."""
    from trl import SFTConfig

    from mlan.config.recipe import SFTRecipe
    from mlan.train.arguments import batch_shape, managed_args, sft_config_kwargs

    training = {
        "learning_rate": 0.000123,
        "num_train_epochs": 3.5,
        "max_steps": 77,
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 5,
        "max_length": 999,
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.07,
        "weight_decay": 0.011,
        "max_grad_norm": 0.37,
        "seed": 1234,
        "precision": "fp32",
        "gradient_checkpointing": True,
        "assistant_only_loss": False,
        "batch_order": "wide",
        "packing": "in_batch",
        "logging_steps": 13,
        "save_steps": 17,
        "save_total_limit": 4,
        "dataloader_num_workers": 2,
        "report_to": "tensorboard",
        "extra": {"optim": "adamw_torch", "adam_beta2": 0.9876},
    }
    recipe = SFTRecipe.model_validate({"model": {"path": "m"}, "data": {"mixture": "mix"}, "training": training})
    batch = batch_shape(recipe.training, processes=1)
    managed = managed_args(recipe, checkpoints=tmp_path / "ck", precision="fp32", cuda=False, batch=batch)
    c = SFTConfig(**sft_config_kwargs(recipe, managed, run_name="the-run"))
    assert c.output_dir == str(tmp_path / "ck")
    assert c.learning_rate == 0.000123
    assert c.num_train_epochs == 3.5
    assert c.max_steps == 77
    assert c.per_device_train_batch_size == 3 and c.per_device_eval_batch_size == 3
    assert c.gradient_accumulation_steps == 5 and batch.global_size == 15
    assert c.max_length is None  # rows over 999 tokens are dropped before the trainer, never truncated
    assert str(c.lr_scheduler_type.value) == "linear"
    assert c.warmup_steps == 0.07
    assert c.weight_decay == 0.011
    assert c.max_grad_norm == 0.37
    assert c.seed == 1234 and c.data_seed == 1234
    assert (c.bf16, c.fp16, c.use_cpu) == (False, False, True)
    assert c.activation_checkpointing is True
    assert c.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert c.assistant_only_loss is False
    assert c.train_sampling_strategy == "random"  # llava and wide come from mlan's own sampler
    assert c.padding_free is False and c.packing is False  # mlan's collator packs; TRL's refuse image rows
    assert c.logging_steps == 13 and c.logging_first_step is True
    assert str(c.save_strategy.value) == "steps" and c.save_steps == 17
    assert c.save_total_limit == 4
    assert c.dataloader_num_workers == 2
    assert c.report_to == ["tensorboard"]
    assert c.run_name == "the-run"
    assert c.optim == "adamw_torch" and c.adam_beta2 == 0.9876
    # The other precisions and a global batch: 24 rows over 3 per device x 2 processes is 4 passes.
    recipe = SFTRecipe.model_validate(
        {
            "model": {"path": "m"},
            "data": {"mixture": "mix"},
            "training": {**training, "gradient_accumulation_steps": None, "global_batch_size": 24},
        }
    )
    batch = batch_shape(recipe.training, processes=2)
    assert batch.accumulation == 4
    for precision, flags in {"bf16": (True, False), "fp16": (False, True)}.items():
        m = managed_args(recipe, checkpoints=tmp_path, precision=precision, cuda=True, batch=batch)
        assert (m["bf16"].value, m["fp16"].value, m["use_cpu"].value) == (*flags, False)
        assert m["gradient_accumulation_steps"].value == 4


def test_lengths_and_labels_match_the_collator(tiny_llava_dir, mixture_dir):
    """Measured lengths equal what TRL's collator produces; labels cover assistant tokens only."""
    from datasets import load_from_disk
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.config.recipe import SFTRecipe
    from mlan.train.data import prepare_split
    from mlan.train.preflight import inspect_model
    from mlan.train.trainer import image_token_masking

    recipe = SFTRecipe.model_validate(
        {"model": {"path": str(tiny_llava_dir)}, "data": {"mixture": str(mixture_dir)}, "output": {"dir": "x"}}
    )
    info = inspect_model(recipe)
    assert info.image_seq_length == 16 and info.template_source == "model"
    train = load_from_disk(str(mixture_dir))["train"]
    split = prepare_split(train, info.processor, info.chat_template, info.image_seq_length, 512, "train")
    assert split.dropped == {"language": 1, "vision": 1} and split.kept == {"language": 48, "vision": 16}
    tok = info.processor.tokenizer
    for loss_mode in (True, False):
        collate = image_token_masking(
            DataCollatorForVisionLanguageModeling(
                processor=info.processor, assistant_only_loss=loss_mode, chat_template=info.chat_template
            ),
            info.image_token_id,
        )
        picks = [0, 30, 50, 60]  # language and vision rows
        batch = collate([split.dataset[i] for i in picks])
        assert batch["attention_mask"].sum(1).tolist() == [split.lengths[i] for i in picks]
        assert not (batch["labels"][batch["input_ids"] == info.image_token_id] != -100).any()
        if loss_mode:
            for row, i in zip(batch["labels"], picks, strict=True):
                answer = split.dataset[i]["messages"][-1]["content"]
                assert tok.decode(row[row != -100]) == f" {answer}</s>"


def test_sft_tiny_full(cli, one_line_error, tiny_llava_dir, mixture_dir, tmp_path):
    """`mlan sft tiny`: trains on CPU, loss falls, vision tower untouched, the output loads and generates."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mlan.config.base import load_config
    from mlan.config.recipe import SFTRecipe

    out = tmp_path / "sft"
    r = cli(*_sft_args(tiny_llava_dir, mixture_dir, out, "-o", "training.num_train_epochs=2"))
    assert r.exit_code == 0, r.output
    assert "dropped as too long: 1 / 1" in r.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja",
                 "recipe.yaml", "mixture_manifest.json", "loss_log.json", "loss_curve.png", "README.md", "train_results.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (tmp_path / "sft.checkpoints").exists()  # checkpoints removed after success
    res = json.loads((out / "train_results.json").read_text())
    assert res["steps"] == 16 and res["rows"]["dropped_vision"] == 1 and res["rows"]["vision"] == 16
    assert res["parameters"]["vision_tower"]["trainable"] == 0 and res["parameters"]["projector"]["trainable"] > 0
    log = json.loads((out / "loss_log.json").read_text())
    losses = [p["loss"] for p in log["train"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0  # the loss falls
    assert res["eval_loss"] < losses[0]
    assert json.loads((out / "mixture_manifest.json").read_text()) == json.loads(
        (mixture_dir / "manifest.json").read_text()
    )
    assert load_config(out / "recipe.yaml", SFTRecipe).output.dir == str(out)
    card = (out / "README.md").read_text()
    assert "arc_easy, commonsense_qa" in card and "| optimizer steps | 16 |" in card

    before, after = _weights(tiny_llava_dir), _weights(out)
    for k, v in _component(before, "vision_tower").items():
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, after[k]) for k, v in _component(before, "multi_modal_projector").items())
    assert any(not torch.equal(v, after[k]) for k, v in _component(before, "language_model").items())

    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does this picture show?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    image = Image.open(IMAGES / "skimage_coins.png").convert("RGB")
    enc = processor(images=[image], text=prompt, return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]

    # The output folder is never replaced silently.
    assert "already exists" in one_line_error(cli(*_sft_args(tiny_llava_dir, mixture_dir, out)))


def test_sft_tiny_recipe_builds_the_quickstart_mixture(cli, tiny_llava_dir, tmp_path):
    """The shipped tiny recipe as is (data.spec: quickstart): the mixture is built, then trained on."""
    r = cli("sft", "tiny", "-o", f"model.path={tiny_llava_dir}", "-o", "training.max_steps=12")
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "tiny"
    manifest = json.loads((tmp_path / "runs" / "mixtures" / "quickstart" / "manifest.json").read_text())
    assert json.loads((out / "mixture_manifest.json").read_text()) == manifest
    assert {"arc_easy", "commonsense_qa"} <= set(manifest["covers_eval_tasks"])
    res = json.loads((out / "train_results.json").read_text())
    assert res["rows"]["language"] > 0 and res["rows"]["vision"] > 0 and res["steps"] == 12
    assert res["last_loss"] < res["first_loss"]
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["path"] == str(out.resolve())


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_sft_tiny_lora_qlora(cli, tiny_llava_dir, mixture_dir, tmp_path, method):
    """LoRA / QLoRA on CPU: an adapter folder plus, on request, the merged LLaVA folder."""
    import torch
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / method
    args = ["-o", f"train.language_model={method}", "-o", "train.lora.r=8", "-o", "output.merge_lora=true"]
    args += ["-o", "training.extra.adam_beta2=0.95"]  # any other SFTConfig field passes through
    r = cli(*_sft_args(tiny_llava_dir, mixture_dir, out, *args, "-o", "training.max_steps=3"))
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert all("language_model" in cfg["target_modules"] for _ in [0]) and cfg["r"] == 8
    res = json.loads((out / "train_results.json").read_text())
    p = res["parameters"]
    assert p["lora"]["trainable"] > 0 and p["language_model"]["trainable"] == 0 and p["vision_tower"]["trainable"] == 0
    merged = out / "merged"
    assert (merged / "mixture_manifest.json").is_file() and (merged / "chat_template.jinja").is_file()
    model = LlavaForConditionalGeneration.from_pretrained(merged)
    assert not any("lora" in n for n, _ in model.named_parameters())
    before, after = _weights(tiny_llava_dir), _weights(merged)
    for k, v in _component(before, "vision_tower").items():
        assert torch.equal(v, after[k]), k
    changed = [k for k, v in _component(before, "language_model").items() if not torch.equal(v, after[k])]
    # Only the adapted linear layers change; QLoRA's merge also re-rounds nothing outside them.
    assert changed and all(k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj") for k in changed)  # fmt: skip


def _copy_model(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _more_image_tokens(model_dir: Path, tmp_path: Path) -> Path:
    """A model whose processor would expand <image> into 64 tokens; the model makes 16 features."""
    model = _copy_model(model_dir, tmp_path / "m")
    proc = json.loads((model / "processor_config.json").read_text())
    proc["patch_size"] = 4
    (model / "processor_config.json").write_text(json.dumps(proc))
    return model


# case -> (model, mixture, tmp_path -> (model, mixture, more arguments), the message)
BAD_SFT = {
    "missing mixture": (lambda m, x, t: (m, t / "nope", []), "data.mixture"),
    "missing model": (lambda m, x, t: (t / "no-model", x, []), "model.path"),
    "not llava": (lambda m, x, t: (_copy_model(m, t / "m", model_type="llama"), x, []), "is not LLaVA-style"),
    "image token": (lambda m, x, t: (_copy_model(m, t / "m", image_token_id=5), x, []), "image token"),
    "image features": (lambda m, x, t: (_more_image_tokens(m, t), x, []), "image features per image"),
    "short max length": (
        lambda m, x, t: (m, x, ["-o", "training.max_length=20"]),
        "shorter than one image row (",  # and its image tokens, the tiny model's 16 (checked in the test)
    ),
    "long max length": (
        lambda m, x, t: (m, x, ["-o", "training.max_length=4096"]),
        "longer than the language model's 2048 positions",
    ),
    "lora targets": (
        lambda m, x, t: (m, x, ["-o", "train.language_model=lora", "-o", "train.lora.target_modules=[qkv_proj]"]),
        "match no linear layer",
    ),
    "bad extra": (
        lambda m, x, t: (m, x, ["-o", "training.extra.optimm=adamw_torch"]),
        "not an SFTConfig field (did you mean 'optim'?)",
    ),
    "managed extra": (
        lambda m, x, t: (m, x, ["-o", "training.extra.learning_rate=0.1"]),
        "set training.learning_rate instead",
    ),
    "resume nothing": (lambda m, x, t: (m, x, ["--resume"]), "--resume: no complete checkpoint"),
    "recipe field": (
        lambda m, x, t: (m, x, ["-o", "training.learing_rate=0.1"]),
        "training.learing_rate: unknown field (did you mean 'learning_rate'?)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SFT))
def test_sft_bad_input(cli, one_line_error, tiny_llava_dir, mixture_dir, tmp_path, case):
    """Each mistake: one line naming the field, exit 2, before training (no checkpoints, no output)."""
    make, message = BAD_SFT[case]
    model, mixture, extra = make(tiny_llava_dir, mixture_dir, tmp_path)
    out = tmp_path / "out"
    line = one_line_error(cli(*_sft_args(model, mixture, out, *extra)))
    assert message in line
    if case == "short max length":
        assert line.endswith(" tokens, 16 of them image tokens)")
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()


def test_template_without_generation_markers_falls_back_to_vicuna(tiny_llava_dir, tmp_path):
    """A checkpoint whose chat template cannot mark assistant turns (e.g. llava-1.5-hf) trains with
    mlan's Vicuna-v1 template, BOS first; assistant-only loss still covers exactly the answer."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.config.recipe import SFTRecipe
    from mlan.train.preflight import inspect_model

    model = _copy_model(tiny_llava_dir, tmp_path / "m")
    tpl = model / "chat_template.jinja"
    tpl.write_text(tpl.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    recipe = SFTRecipe.model_validate({"model": {"path": str(model)}, "data": {"mixture": "x"}})
    info = inspect_model(recipe)
    assert info.template_source == "vicuna_v1"
    collate = DataCollatorForVisionLanguageModeling(
        processor=info.processor, assistant_only_loss=True, chat_template=info.chat_template
    )
    row = {
        "messages": [{"role": "user", "content": "Is ice cold?"}, {"role": "assistant", "content": "yes"}],
        "images": [],
    }
    batch = collate([row])
    tok = info.processor.tokenizer
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    labels = batch["labels"][0]
    assert tok.decode(labels[labels != -100]) == " yes</s>"


@pytest.mark.parametrize(
    "train,trainable",
    [
        ({"language_model": "frozen", "projector": True}, {"projector"}),  # stage 1: align the projector
        ({"language_model": "full", "projector": False}, {"language_model", "lm_head"}),
        ({"language_model": "full", "vision_tower": True}, {"language_model", "lm_head", "projector", "vision_tower"}),
    ],
)
def test_freeze_by_component(train, trainable):
    from mlan.config.recipe import TrainSection
    from mlan.tiny import build_tiny_llava
    from mlan.train.freeze import apply_freeze, parameter_report

    model, _ = build_tiny_llava("tiny")
    apply_freeze(model, TrainSection.model_validate(train))
    report = parameter_report(model)
    assert {c for c, v in report.items() if c != "all" and v["trainable"]} == trainable
    assert all(v["trainable"] in (0, v["total"]) for v in report.values() if v is not report["all"])


def test_recipe_mapping_edges_by_hand(tmp_path):
    """Edges of mlan.train.arguments found by mutation testing (docs/mutation.md): the recipe field each
    SFTConfig field comes from (what an error about `training.extra` names), whole accumulation steps, the
    defaults when the recipe leaves a field out, and mlan's defaults for gradient checkpointing and Wings."""
    from mlan.config.recipe import SFTRecipe, TrainingSection
    from mlan.train.arguments import BatchShape, batch_shape, managed_args, managed_sources, mlan_defaults

    def recipe(training=None, **more):
        return SFTRecipe.model_validate(
            {"model": {"path": "m"}, "data": {"mixture": "x"}, "training": training or {}, **more}
        )

    plain = recipe({"per_device_train_batch_size": 3})
    assert batch_shape(plain.training, processes=2) == BatchShape(3, 1, 2)  # no accumulation asked: 1
    shape = batch_shape(recipe({"per_device_train_batch_size": 3, "global_batch_size": 24}).training, processes=2)
    assert shape.accumulation == 4 and isinstance(shape.accumulation, int)  # a whole number of passes
    managed = managed_args(plain, checkpoints=tmp_path, precision="bf16", cuda=True, batch=BatchShape(3, 1, 2))
    assert managed["max_steps"].value == -1  # no max_steps: TRL's "no limit"
    sources = managed_sources(managed)
    for field in sources.values():
        kind, _, name = field.partition(".")
        assert field == "output.dir" or (kind == "training" and name in TrainingSection.model_fields), field
    assert {f: sources[f] for f in ("output_dir", "seed", "data_seed", "bf16", "fp16", "use_cpu")} == {
        "output_dir": "output.dir",
        "seed": "training.seed",
        "data_seed": "training.seed",
        "bf16": "training.precision",
        "fp16": "training.precision",
        "use_cpu": "training.precision",
    }
    assert {f: sources[f] for f in ("logging_steps", "logging_first_step", "save_strategy", "save_steps")} == {
        "logging_steps": "training.logging_steps",
        "logging_first_step": "training.logging_steps",
        "save_strategy": "training.save_steps",
        "save_steps": "training.save_steps",
    }
    per_device = "training.per_device_train_batch_size"
    assert (sources["per_device_train_batch_size"], sources["per_device_eval_batch_size"]) == (per_device, per_device)
    # mlan's defaults: non-reentrant checkpointing only when checkpointing is on and `extra` sets no kwargs of
    # its own; DDP told of unused parameters only for Wings.
    assert mlan_defaults(recipe({"gradient_checkpointing": False}), "r") == {"run_name": "r"}
    kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": True}}
    assert mlan_defaults(recipe({"gradient_checkpointing": True, "extra": kwargs}), "r") == {"run_name": "r"}
    wings = recipe({"gradient_checkpointing": False}, wings={"stage": 2})
    assert mlan_defaults(wings, "w") == {"run_name": "w", "ddp_find_unused_parameters": True}


def test_process_state_starts_as_sftconfig_would(monkeypatch):
    """process_state hands accelerate what SFTConfig would (found by mutation testing, docs/mutation.md): the
    CPU when no GPU is used (none seen, or accelerate's CPU flag), `ddp_backend` from `training.extra` (else
    none), and on a GPU `ddp_timeout` (else SFTConfig's 30 minutes, not torch's 10). accelerate's
    PartialState is replaced by a recorder: the real one is a process-wide singleton."""
    from datetime import timedelta

    import accelerate
    import torch

    from mlan.train.arguments import process_state

    calls = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kw: calls.append(kw) or "state")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_state({}) == "state"
    process_state({"ddp_backend": "gloo"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    process_state({})
    process_state({"ddp_backend": "nccl", "ddp_timeout": 60})
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    process_state({"ddp_backend": "gloo"})
    assert calls == [
        {"cpu": True, "backend": None},
        {"cpu": True, "backend": "gloo"},
        {"backend": None, "timeout": timedelta(minutes=30)},
        {"backend": "nccl", "timeout": timedelta(seconds=60)},
        {"cpu": True, "backend": "gloo"},
    ]


def test_global_batch_adapts_the_rows_per_device_by_hand(caplog):
    """More processes than `per_device_train_batch_size` allows: the most rows per device that divide one
    process's share, at most the recipe's, said in one line; a global batch the processes cannot share is one
    line; accumulation fills the rest."""
    import logging

    from mlan.config.recipe import SFTRecipe
    from mlan.errors import MlanError
    from mlan.train.arguments import BatchShape, batch_shape

    def shape(per_device, global_size, processes):
        training = {"per_device_train_batch_size": per_device, "global_batch_size": global_size}
        recipe = SFTRecipe.model_validate({"model": {"path": "m"}, "data": {"mixture": "x"}, "training": training})
        return batch_shape(recipe.training, processes)

    with caplog.at_level(logging.INFO, logger="mlan.train.arguments"):
        assert shape(4, 24, 2) == BatchShape(4, 3, 2)  # 12 rows per process: 4 divides them
        assert not caplog.records
        assert shape(4, 64, 32) == BatchShape(2, 1, 32)  # 2 rows per process
        assert caplog.messages == [
            "training.global_batch_size 64 on 32 processes: 2 rows per device (per_device_train_batch_size 4 "
            "does not divide 2 rows per process)"
        ]
        assert shape(4, 36, 4) == BatchShape(3, 3, 4)  # 9 rows per process: 3 x 3, not 1 x 9
        assert shape(4, 20, 4) == BatchShape(1, 5, 4)  # 5 rows per process: a prime, 1 x 5
        assert shape(6, 48, 2) == BatchShape(6, 4, 2)  # the recipe's own rows when they divide
    with pytest.raises(MlanError) as e:
        shape(4, 36, 8)
    assert str(e.value) == (
        "training.global_batch_size 36: not a multiple of the 8 processes (every process takes the same number "
        "of rows per step)"
    )


def test_engine_fields_reach_sftconfig_by_hand(tmp_path):
    """The engine's SFTConfig fields come from `training.engine` and pass unchanged; FSDP is never told to use
    the CPU (accelerate would train plain DDP); without an engine they are unset."""
    from mlan.config.recipe import SFTRecipe
    from mlan.train.arguments import BatchShape, managed_args

    recipe = SFTRecipe.model_validate({"model": {"path": "m"}, "data": {"mixture": "x"}})
    batch = BatchShape(2, 3, 4)
    ds = {"zero_optimization": {"stage": 3}}
    fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"version": 2}}
    plain = managed_args(recipe, checkpoints=tmp_path, precision="fp32", cuda=False, batch=batch)
    deepspeed = managed_args(
        recipe, checkpoints=tmp_path, precision="fp32", cuda=False, batch=batch, engine_args={"deepspeed": ds}
    )
    sharded = managed_args(recipe, checkpoints=tmp_path, precision="bf16", cuda=False, batch=batch, engine_args=fsdp)
    on_gpu = managed_args(recipe, checkpoints=tmp_path, precision="bf16", cuda=True, batch=batch, engine_args=fsdp)
    for name in ("deepspeed", "fsdp", "fsdp_config"):
        assert plain[name].value is None and plain[name].source == "training.engine"
    assert deepspeed["deepspeed"].value is ds and deepspeed["fsdp"].value is None
    assert (sharded["fsdp"].value, sharded["fsdp_config"].value) == ("full_shard auto_wrap", {"version": 2})
    assert (plain["use_cpu"].value, deepspeed["use_cpu"].value, sharded["use_cpu"].value) == (True, True, False)
    assert on_gpu["use_cpu"].value is False
    assert plain["use_cpu"].source == "training.precision"
    assert (plain["per_device_train_batch_size"].value, plain["per_device_eval_batch_size"].value) == (2, 2)
    assert plain["gradient_accumulation_steps"].value == 3
