"""LLaVA-OneVision and Qwen2.5-VL (tiny models built from config, offline) through every stage: recognised
as their kinds, opened without torchvision, their language model extracted with exactly the multimodal
model's text logits; `mlan sft` (exact row lengths, mixed batches, full/LoRA/QLoRA, resume bit for bit),
`mlan eval` (eight-task, unseen language, a vision task in the family's own template) and `mlan merge`
(alpha 0 and 1 exact); a Qwen2-VL folder and the options a family cannot take are one line each."""

from __future__ import annotations

import json
import shutil

import pytest
from families import save_tiny_llava_onevision, save_tiny_qwen2_5_vl

from mlan import kinds

BUILDERS = {kinds.LLAVA_ONEVISION: save_tiny_llava_onevision, kinds.QWEN2_5_VL: save_tiny_qwen2_5_vl}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {kind: build(root / kind) for kind, build in BUILDERS.items()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_kind_processor_and_language_model(family_dirs, kind):
    """The folder is its kind; its processor opens here (no torchvision) and expands an image into tokens;
    the extracted language model (a Qwen2ForCausalLM sharing the tensors) gives the multimodal model's
    logits on text exactly, padded batch included."""
    import torch
    from PIL import Image

    from mlan.models import extract_language_model, load_model

    folder = family_dirs[kind]
    assert kinds.model_kind(folder) == kind
    loaded = load_model(folder, device="cpu", dtype="float32")
    assert loaded.multimodal and type(loaded.model).__name__ == kinds.model_class(kind).__name__
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[Image.new("RGB", (56, 56), (200, 30, 30))], return_tensors="pt")
    image_id = loaded.model.config.image_token_id
    assert int((enc["input_ids"] == image_id).sum()) > 1  # one placeholder expanded into the image's tokens
    lm = extract_language_model(loaded.model)
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    tok = loaded.tokenizer
    batch = tok(["The best answer is", "A red square, two blue circles and"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = loaded.model(**batch).logits
        got = lm(**batch).logits
    assert torch.equal(want, got)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_eval_suites_on_the_family(cli, family_dirs, eval_data, tmp_path, kind):
    """`mlan eval` on an eight-task task (lm-eval, through the language model), an unseen language task and a
    vision task (generate then match, in the family's own chat template): every task scored, the records written."""
    out = tmp_path / "ev"
    args = [
        "eval",
        family_dirs[kind],
        "--suite",
        "eight_task",
        "--suite",
        "unseen_language",
        "--suite",
        "unseen_vision",
    ]
    args += ["--tasks", "arc_easy,boolq,pope", "--limit", "3", "--data-dir", eval_data]
    args += ["--image-dir", eval_data / "images", "--out", out]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / kind / "results.json").read_text())
    assert {(x["task"], x["n"]) for x in res["results"]} == {("arc_easy", 3), ("boolq", 3), ("pope", 3)}
    samples = [json.loads(s) for s in (out / kind / "samples" / "unseen_vision__pope.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["image"] for s in samples)
    # The vision suite in the family's own chat template (MLAN's is Vicuna-v1), recorded; the language suite as MLAN's.
    styles = {x["task"]: x["prompt_style"] for x in res["results"]}
    assert styles == {"arc_easy": None, "boolq": None, "pope": "chat"}
    assert all(s["prompt"].startswith("<|im_start|>") and "USER:" not in s["prompt"] for s in samples)


def test_unsupported_family_and_options_are_one_line(cli, one_line_error, family_dirs, shared_data, tmp_path):
    """A Qwen2-VL folder (given where a Qwen2.5-VL is expected) and the options a family cannot take:
    packing with Qwen2.5-VL's M-RoPE, LLaVA's stage-1 `plain` format, Wings; one line each, before training."""
    from test_sft import _sft_args

    qwen2_vl = tmp_path / "qwen2-vl"
    shutil.copytree(family_dirs[kinds.QWEN2_5_VL], qwen2_vl)
    config = json.loads((qwen2_vl / "config.json").read_text())
    (qwen2_vl / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_vl"}))
    line = one_line_error(cli("eval", qwen2_vl, "--suite", "quickstart"))
    assert "a Qwen2-VL model (model_type qwen2_vl); mlan takes Qwen2.5-VL (qwen2_5_vl)" in line
    mixture = _family_mixture(tmp_path, shared_data, n_language=2)
    qwen = family_dirs[kinds.QWEN2_5_VL]
    line = one_line_error(cli(*_sft_args(qwen, mixture, tmp_path / "o", "-o", "training.packing=in_batch")))
    assert "training.packing in_batch: not supported with Qwen2.5-VL (its M-RoPE places image tokens" in line
    for kind, folder in family_dirs.items():
        line = one_line_error(cli(*_sft_args(folder, mixture, tmp_path / "o", "-o", "training.chat_template=plain")))
        assert f"training.chat_template plain: LLaVA's stage-1 format is for llava models; a {kind} model" in line
        wings = [
            "sft",
            "wings_tiny_stage1",
            "-o",
            f"model.path={folder}",
            "-o",
            "data.spec=",
            "-o",
            f"data.mixture={mixture}",
        ]
        line = one_line_error(cli(*wings, "-o", f"output.dir={tmp_path / 'w'}"), stdout_ok=True)
        assert f"Wings' learners are built for LLaVA models (llava), not a {kind} model" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_merge_the_original_qwen2_back(cli, family_dirs, tmp_path, kind):
    """The original LLM (a Qwen2, as LLaVA-OneVision's and Qwen2.5-VL's are) merged into the right tensors:
    alpha 0 gives the multimodal model bit for bit, linear alpha 1 gives the LLM's language-model tensors bit
    for bit and keeps the vision tower; the merged folder loads as its kind."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, Qwen2ForCausalLM

    from mlan.families import causal_lm_config

    mm = family_dirs[kind]
    torch.manual_seed(7)
    llm = Qwen2ForCausalLM(causal_lm_config(kind, AutoConfig.from_pretrained(mm)))
    llm.save_pretrained(tmp_path / "llm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(mm / f, tmp_path / "llm" / f)
    mm_w, llm_w = load_file(str(mm / "model.safetensors")), load_file(str(tmp_path / "llm" / "model.safetensors"))
    for alpha in ("0", "1"):
        out = tmp_path / f"m{alpha}"
        r = cli(
            "merge",
            "--multimodal",
            mm,
            "--original",
            tmp_path / "llm",
            "--method",
            "linear",
            "--alpha",
            alpha,
            "--out",
            out,
        )
        assert r.exit_code == 0, r.output
        w = load_file(str(out / "model.safetensors"))
        assert w.keys() == mm_w.keys()
        lm_keys = [
            k
            for k in w
            if "vision_tower" not in k and "visual" not in k and "projector" not in k and "image_newline" not in k
        ]
        assert len(lm_keys) == len(llm_w) > 10
        for k in w:
            if alpha == "0" or k not in lm_keys:
                assert torch.equal(w[k], mm_w[k]), k
        if alpha == "1":
            prefix = "language_model." if kind == kinds.LLAVA_ONEVISION else ""
            assert all(torch.equal(w[prefix + k], v) for k, v in llm_w.items())
    assert kinds.model_kind(tmp_path / "m1") == kind
    kinds.model_class(kind).from_pretrained(tmp_path / "m1")


def _family_mixture(out, shared_data, n_language=8, longer=0):
    """Letter-answer text rows and image rows of several sizes (so the image-token counts differ); the
    first two text rows lengthened by `longer` repeats of a short sentence."""
    from datasets import Dataset, DatasetDict
    from PIL import Image
    from test_sft import _image_rows, _mc_rows

    from mlan.data.mixture import features

    text = _mc_rows(shared_data / "arc_easy" / "train.jsonl", "arc_easy", n_language)
    for row in text[:2]:
        row["messages"][0]["content"] += " Think it through." * longer
    images = _image_rows(6)
    (out / "img").mkdir(parents=True)
    sizes = [(56, 56), (40, 90), (120, 30), (33, 47), (200, 120), (64, 64)]
    for i, (row, size) in enumerate(zip(images, sizes, strict=True)):
        path = out / "img" / f"{i}.png"
        Image.new("RGB", size, (40 * i, 90, 200 - 30 * i)).save(path)
        row["images"] = [str(path)]
    rows = text + images
    DatasetDict({"train": Dataset.from_list(rows, features=features())}).save_to_disk(str(out / "mix"))
    return out / "mix"


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("ratio", ["original", "pad"])
def test_row_lengths_are_the_collators(family_dirs, shared_data, tmp_path, kind, ratio):
    """Every row's length as mlan measures it (from the image files' headers, through the processor's own
    token count) equals the length TRL's collator gives it, for images of six sizes, padded to squares or not."""
    from datasets import load_from_disk
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.config.recipe import SFTRecipe
    from mlan.images import PadImages, mean_colour
    from mlan.train.data import prepare_split
    from mlan.train.preflight import inspect_model

    mixture = _family_mixture(tmp_path, shared_data, n_language=3)
    recipe = SFTRecipe.model_validate(
        {"model": {"path": str(family_dirs[kind])}, "data": {"mixture": str(mixture), "image_aspect_ratio": ratio}}
    )
    info = inspect_model(recipe)
    assert info.kind == kind and info.image_seq_length is None
    rows = load_from_disk(str(mixture))["train"]
    split = prepare_split(rows, info.processor, info.chat_template, info.image_tokens, 4096, "train", ratio == "pad")
    info.processor.chat_template = info.chat_template
    collator = DataCollatorForVisionLanguageModeling(info.processor, assistant_only_loss=True)
    if ratio == "pad":
        collator = PadImages(collator, mean_colour(info.processor))
    actual = [int(collator([dict(rows[i])])["attention_mask"].sum()) for i in range(len(rows))]
    assert split.lengths == actual
    assert len(set(actual[3:])) > 3  # the image rows' lengths do differ


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_rows_of_several_images_count_as_the_processor_expands_them(family_dirs, tmp_path, kind):
    """Rows with two and three images of different sizes: the image tokens mlan counts for a row (from its
    images' sizes) are those the processor expands the row's placeholders into, and the lengths mlan
    measures are the collator's. LLaVA-OneVision gives each image of a several-image row one base tile plus
    its newline token, whatever its size (a one-image row takes the any-resolution count); Qwen2.5-VL counts
    each image by its own grid. The model's forward checks the placeholders against its image features."""
    import torch
    from datasets import Dataset
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.config.recipe import SFTRecipe
    from mlan.data.mixture import features
    from mlan.families import image_token_counter
    from mlan.train.data import row_lengths
    from mlan.train.preflight import inspect_model

    sizes = [[(56, 56), (40, 90)], [(120, 30), (33, 47), (200, 120)], [(64, 64)]]
    rows = []
    for r, row_sizes in enumerate(sizes):
        paths = []
        for i, (h, w) in enumerate(row_sizes):
            paths.append(str(tmp_path / f"{r}-{i}.png"))
            Image.new("RGB", (w, h), (40 * i, 90, 30 * r)).save(paths[-1])
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "What do these pictures have in common?"},
                    {"role": "assistant", "content": "Colour."},
                ],
                "images": paths,
                "modality": "vision",
                "source": "several",
                "id": f"row-{r}",
            }
        )
    ds = Dataset.from_list(rows, features=features())
    recipe = SFTRecipe.model_validate({"model": {"path": str(family_dirs[kind])}, "data": {"mixture": "unused"}})
    info = inspect_model(recipe)
    processor = info.processor
    count = image_token_counter(processor, kind)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    model = kinds.model_class(kind).from_pretrained(family_dirs[kind]).eval()
    for row in rows:
        images = [Image.open(p).convert("RGB") for p in row["images"]]
        conv = prepare_multimodal_messages(row["messages"], images=images)
        text = processor.apply_chat_template([conv], chat_template=info.chat_template, tokenize=False)
        expanded = processor(text=text, images=[images], return_tensors="pt")
        n = int((expanded["input_ids"] == image_id).sum())
        assert count([(im.height, im.width) for im in images]) == n, row["id"]
        if kind == kinds.LLAVA_ONEVISION and len(images) > 1:
            assert n == (processor.num_image_tokens + 1) * len(images)  # a tile and a newline each
        with torch.no_grad():  # raises where the placeholders and the image features disagree in number
            model(**expanded)
    # Through training's own measure: each row's length is the collator's.
    processor.chat_template = info.chat_template
    lengths, counts = row_lengths(ds, processor, info.chat_template, info.image_tokens)
    assert counts == [2, 3, 1]
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    assert lengths == [int(collator([dict(ds[i])])["attention_mask"].sum()) for i in range(len(ds))]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_sft_trains_resumes_and_evaluates(cli, family_dirs, shared_data, eval_data, tmp_path, kind):
    """`mlan sft` on mixed text and image batches: full fine-tuning trains the language model and projector
    (tower frozen); a run stopped after its checkpoint and resumed ends with the uninterrupted run's weights,
    bit for bit; LoRA and QLoRA train; the output is its kind and `mlan eval` scores it."""
    import torch
    from safetensors.torch import load_file
    from test_sft import _sft_args

    mixture = _family_mixture(tmp_path, shared_data)
    model = family_dirs[kind]
    common = [
        "-o",
        "training.max_steps=4",
        "-o",
        "training.per_device_train_batch_size=4",
        "-o",
        "training.save_steps=2",
    ]
    r = cli(*_sft_args(model, mixture, tmp_path / "full", *common))
    assert r.exit_code == 0, r.output
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    before = load_file(str(model / "model.safetensors"))
    changed = {k for k in full if not torch.equal(full[k], before[k])}
    tower = [k for k in full if "vision_tower" in k or (k.startswith("visual.") and ".merger." not in k)]
    assert tower and not changed & set(tower)  # the tower stays frozen
    assert any("projector" in k or "merger" in k for k in changed) and any("layers" in k for k in changed)
    results = json.loads((tmp_path / "full" / "train_results.json").read_text())
    assert results["packing"]["on"] is (kind == kinds.LLAVA_ONEVISION)  # M-RoPE: Qwen2.5-VL trains padded

    # Stopped after its step-2 checkpoint, then resumed: the same weights as the uninterrupted run.
    keep = ["-o", "output.keep_checkpoints=true"]
    r = cli(*_sft_args(model, mixture, tmp_path / "run", *common, *keep))
    assert r.exit_code == 0, r.output
    ckpts = tmp_path / "run.checkpoints"  # as a run killed after its checkpoint leaves it: record + checkpoint-2
    assert (ckpts / "run_record.json").is_file()
    shutil.move(tmp_path / "run" / "checkpoints" / "checkpoint-2", ckpts / "checkpoint-2")
    shutil.rmtree(tmp_path / "run")
    r = cli(*_sft_args(model, mixture, tmp_path / "run", *common, *keep))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["resumed_from"].endswith("checkpoint-2")
    resumed = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)

    for method in ("lora", "qlora"):
        args = _sft_args(
            model, mixture, tmp_path / method, "-o", "training.max_steps=2", "-o", f"train.language_model={method}"
        )
        r = cli(*args, "-o", "training.per_device_train_batch_size=4", "-o", "output.merge_lora=true")
        assert r.exit_code == 0, r.output
        assert kinds.model_kind(tmp_path / method / "merged") == kind

    assert kinds.model_kind(tmp_path / "full") == kind
    r = cli("eval", tmp_path / "full", "--suite", "unseen_vision", "--tasks", "pope", "--limit", "2",
            "--data-dir", eval_data, "--image-dir", eval_data / "images", "--out", tmp_path / "ev")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_onevision_packed_step_gives_the_padded_loss(family_dirs, shared_data, tmp_path):
    """LLaVA-OneVision packs (1-D RoPE): an optimizer step of two mixed micro-batches, packed (images of
    several sizes, so several tiles each, moved with their rows; the per-row image counts too) gives the
    padded step's loss and gradients within float32 tolerance."""
    from datasets import load_from_disk
    from test_packing import _step
    from trl import SFTConfig

    from mlan.config.recipe import SFTRecipe
    from mlan.train.model import load_model
    from mlan.train.packing import STATS_KEY, InBatchPacking, attention_weight
    from mlan.train.preflight import inspect_model
    from mlan.train.trainer import MlanSFTTrainer, image_token_masking

    mixture = _family_mixture(tmp_path, shared_data, n_language=4, longer=80)
    recipe = SFTRecipe.model_validate(
        {"model": {"path": str(family_dirs[kinds.LLAVA_ONEVISION])}, "data": {"mixture": str(mixture)}}
    )
    info = inspect_model(recipe)
    info.processor.chat_template = info.chat_template
    model = load_model(recipe, info, cuda=False, device_index=0, dtype="float32").float().train()
    rows = load_from_disk(str(mixture))["train"]
    args = SFTConfig(
        output_dir=str(tmp_path / "t"), max_length=None, assistant_only_loss=True, report_to="none", use_cpu=True
    )
    trainer = MlanSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=info.processor)
    collator = image_token_masking(trainer.data_collator, info.image_token_id)
    packer = InBatchPacking(
        collator, info.processor.tokenizer.pad_token_id, attention_weight(info.config.get_text_config())
    )
    batches = ([0, 4, 8, 1], [9, 2, 5, 6])  # text rows 0-3, image rows 4-9
    padded = [collator([dict(rows[i]) for i in b]) for b in batches]
    packed = [packer([dict(rows[i]) for i in b]) for b in batches]
    assert all("batch_num_images" in p for p in packed) and any(
        q[STATS_KEY][1] < q[STATS_KEY][0] for q in packed
    )  # something was packed
    loss_a, n_a, grads_a = _step(trainer, padded)
    loss_b, n_b, grads_b = _step(trainer, packed)
    assert n_a == n_b and grads_a.keys() == grads_b.keys()
    assert abs(loss_a - loss_b) < 1e-5
    assert max(float((grads_a[k] - grads_b[k]).abs().max()) for k in grads_a) < 1e-5
