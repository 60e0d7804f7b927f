"""`mlan chat` on the tiny models of every kind mlan trains: the one-shot answer (`--prompt`) and the
interactive loop (stdin), checked token for token against the model's own greedy `generate` on the
prompt its processor's (or tokenizer's) chat template renders; the user errors are one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from conftest import BUNDLED_DATA

from mlan import kinds

IMAGE = BUNDLED_DATA / "images" / "skimage_coins.png"  # 384 x 303: padding to a square changes it
N = 6  # new tokens per answer: enough to tell two answers apart, quick on a CPU


@pytest.fixture(scope="module")
def models(tiny_llava_dir, tmp_path_factory) -> dict[str, Path]:
    """One tiny folder per kind (the LLaVA is the session's)."""
    from families import save_tiny_llava_onevision, save_tiny_qwen2_5_vl
    from llava_next import save_tiny_llava_next

    from mlan.models import save_language_model

    root = tmp_path_factory.mktemp("chat-models")
    return {
        kinds.LLAVA: tiny_llava_dir,
        kinds.LLAVA_NEXT: save_tiny_llava_next(root / "next"),
        kinds.LLAVA_ONEVISION: save_tiny_llava_onevision(root / "onevision"),
        kinds.QWEN2_5_VL: save_tiny_qwen2_5_vl(root / "qwen"),
        kinds.WINGS: _save_wings(root / "wings"),
        kinds.CAUSAL_LM: save_language_model(tiny_llava_dir, root / "llm"),
    }


def _save_wings(out: Path) -> Path:
    """A tiny Wings folder whose learners are not zero (as trained ones), so they change the answers."""
    import torch

    from mlan.tiny import build_tiny_llava
    from mlan.wings import WingsConfig, add_wings, save_wings_model, wings_parameters

    model, processor = build_tiny_llava("tiny", seed=0)
    add_wings(model, WingsConfig(rank=8, layers=[1], router="modality"), processor=processor)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in wings_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_wings_model(model, out, processor)


@pytest.fixture(scope="module")
def lora_run(tiny_llava_dir, tmp_path_factory) -> Path:
    """A project folder after `mlan sft tiny` with LoRA (one step, images padded to squares): runs/lora
    is the newest run. Its adapter's B matrices start at zero, so they are set to random values here
    (as after real training) for the adapter to change the answers."""
    import torch
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from mlan.cli import app

    project = tmp_path_factory.mktemp("lora-project")
    args = ["sft", "tiny", "-o", f"model.path={tiny_llava_dir}", "-o", "output.dir=runs/lora"]
    args += ["-o", "train.language_model=lora", "-o", "train.lora.r=4", "-o", "training.max_steps=1"]
    args += ["-o", "data.image_aspect_ratio=pad"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        r = CliRunner().invoke(app, ["-q", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    weights = project / "runs" / "lora" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    g = torch.Generator().manual_seed(0)
    for k, v in tensors.items():
        if "lora_B" in k:
            tensors[k] = torch.randn(v.shape, generator=g) * 0.5
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return project


def _reference(model, processor, messages: list[dict]) -> str:
    """The greedy answer `generate` gives on the prompt the chat template renders (with its images)."""
    if hasattr(processor, "tokenizer"):
        enc = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
    else:  # a tokenizer's apply_chat_template adds no BOS; the LLM gets its BOS, as a LLaVA's processor adds it
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = processor(text, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=N, do_sample=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _open(kind: str, folder: Path):
    """The model and its processor (tokenizer for an LLM), opened with transformers (Wings: its loader)."""
    from transformers import AutoTokenizer

    from mlan.families import load_processor

    if kind == kinds.WINGS:
        from mlan.wings import load_wings_model

        return load_wings_model(folder, device="cpu")
    model = kinds.model_class(kind).from_pretrained(folder).eval()
    processor = AutoTokenizer.from_pretrained(folder) if kind == kinds.CAUSAL_LM else load_processor(folder, kind)
    return model, processor


def _user(text: str, image=None) -> dict:
    parts = [{"type": "image", "image": image}] if image is not None else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _image():
    from PIL import Image

    return Image.open(IMAGE).convert("RGB")


@pytest.mark.parametrize("kind", [kinds.LLAVA, kinds.LLAVA_NEXT, kinds.LLAVA_ONEVISION, kinds.QWEN2_5_VL, kinds.WINGS])
def test_one_answer_with_an_image(cli, models, kind):
    """`--image --prompt`: stdout is the greedy answer, exactly what generate gives for the image turn."""
    model, processor = _open(kind, models[kind])
    expected = _reference(model, processor, [_user("What is in this picture?", _image())])
    r = cli("chat", models[kind], "--image", IMAGE, "--prompt", "What is in this picture?", "-n", N)
    assert r.exit_code == 0, r.output
    assert expected.strip() and r.stdout == expected + "\n"
    if kind == kinds.WINGS:  # the learners answer, not the LLaVA folder beneath them
        plain = kinds.model_class(kinds.LLAVA).from_pretrained(models[kind]).eval()
        assert _reference(plain, processor, [_user("What is in this picture?", _image())]) != expected


def test_one_answer_from_a_causal_lm(cli, models):
    """A plain LLM: its tokenizer's template, string content."""
    model, tokenizer = _open(kinds.CAUSAL_LM, models[kinds.CAUSAL_LM])
    expected = _reference(model, tokenizer, [{"role": "user", "content": "Name a colour."}])
    r = cli("chat", models[kinds.CAUSAL_LM], "-p", "Name a colour.", "-n", N)
    assert r.exit_code == 0, r.output
    assert expected.strip() and r.stdout == expected + "\n"
    # In the loop, an image for it is said and refused; the conversation goes on.
    r = cli("chat", models[kinds.CAUSAL_LM], "-n", N, input=f"/image {IMAGE}\nName a colour.\n")
    assert r.exit_code == 0, r.output
    assert r.stdout == expected + "\n" and "text-only model" in r.stderr


def test_interactive_loop_keeps_the_conversation(cli, models):
    """stdin: a text turn, `/image`, an image turn answered with the first turn in its prompt, a mistyped
    image (said, the loop goes on), `/reset` and the same image turn again (answered as a first turn), end of input."""
    model, processor = _open(kinds.LLAVA, models[kinds.LLAVA])
    first = _reference(model, processor, [_user("Hello there.")])
    history = [_user("Hello there."), {"role": "assistant", "content": [{"type": "text", "text": first}]}]
    second = _reference(model, processor, [*history, _user("And this?", _image())])
    alone = _reference(model, processor, [_user("And this?", _image())])
    assert second != alone  # else the test could not tell a kept conversation from a lost one

    lines = ["Hello there.", f"/image {IMAGE}", "And this?", "/image missing.png", "", "/reset", f"/image {IMAGE}"]
    r = cli("chat", models[kinds.LLAVA], "-n", N, input="\n".join([*lines, "And this?"]) + "\n")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{first}\n{second}\n{alone}\n"
    assert "error: image missing.png: not found" in r.stderr and "goes with your next message" in r.stderr
    assert "Traceback" not in r.output


def test_interactive_qwen_image_then_text(cli, models):
    """Qwen2.5-VL in the loop: the image of the first turn stays in the second turn's prompt."""
    model, processor = _open(kinds.QWEN2_5_VL, models[kinds.QWEN2_5_VL])
    first = _reference(model, processor, [_user("Describe it.", _image())])
    history = [_user("Describe it.", _image()), {"role": "assistant", "content": [{"type": "text", "text": first}]}]
    second = _reference(model, processor, [*history, _user("Why?")])
    r = cli("chat", models[kinds.QWEN2_5_VL], "-i", IMAGE, "-n", N, input="Describe it.\nWhy?\n/exit\nignored\n")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{first}\n{second}\n"


def test_lora_output_folder_is_the_default(cli, lora_run, monkeypatch):
    """In the project folder, `mlan chat` opens the newest run, here a LoRA output folder: its adapter over
    its base, its own processor, its images padded as it trained (train_results.json); not the base's answer."""
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    from mlan.families import load_processor
    from mlan.images import prepare_image

    folder = lora_run / "runs" / "lora"
    recipe = json.loads((folder / "adapter_config.json").read_text())
    base = LlavaForConditionalGeneration.from_pretrained(recipe["base_model_name_or_path"]).eval()
    processor = load_processor(folder, kinds.LLAVA)
    base_answer = _reference(base, processor, [_user("What is this?", _image())])
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    padded = prepare_image(_image(), processor, "pad")
    expected = _reference(model, processor, [_user("What is this?", padded)])
    assert expected != base_answer and expected != _reference(model, processor, [_user("What is this?", _image())])

    monkeypatch.chdir(lora_run)
    r = cli("chat", "--image", IMAGE, "--prompt", "What is this?", "-n", N)
    assert r.exit_code == 0, r.output
    assert r.stdout == expected + "\n"


def test_sampling_and_greedy(cli, models):
    """--temperature samples (answers vary with the draw); greedy answers repeat."""
    import torch

    llm = models[kinds.CAUSAL_LM]
    greedy = {cli("chat", llm, "-p", "Hi.", "-n", 12).stdout for _ in range(2)}
    assert len(greedy) == 1
    torch.manual_seed(0)
    sampled = {cli("chat", llm, "-p", "Hi.", "-n", 12, "-t", "1.5").stdout for _ in range(3)}
    assert len(sampled) > 1


def test_errors_are_one_line(cli, models, tmp_path, one_line_error):
    """A folder that is not a model, an image for a text-only model, a missing image, no model and no run."""
    (tmp_path / "notes").mkdir()
    line = one_line_error(cli("chat", tmp_path / "notes", "-p", "hi"))
    assert "not a model folder" in line and "notes" in line
    line = one_line_error(cli("chat", models[kinds.CAUSAL_LM], "--image", IMAGE, "-p", "hi"))
    assert "text-only model" in line
    line = one_line_error(cli("chat", models[kinds.LLAVA], "--image", tmp_path / "nope.png", "-p", "hi"))
    assert "nope.png: not found" in line
    (tmp_path / "text.png").write_text("not an image")
    line = one_line_error(cli("chat", models[kinds.LLAVA], "--image", tmp_path / "text.png", "-p", "hi"))
    assert "not a readable image" in line
    line = one_line_error(cli("chat", "-p", "hi"))  # this test's folder has no runs/
    assert "no finished run" in line


def test_lora_folder_without_its_base(cli, lora_run, tmp_path, one_line_error):
    """A LoRA folder whose base model is not where the adapter says: one line naming both."""
    import shutil

    folder = shutil.copytree(lora_run / "runs" / "lora", tmp_path / "moved")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "runs/tiny-model"}))
    line = one_line_error(cli("chat", folder, "-p", "hi"))
    assert "LoRA folder" in line and "moved" in line and "model runs/tiny-model: no model folder" in line


def test_loop_commands_and_ctrl_c():
    """The loop alone (a scripted chat): /help, an unknown command, Ctrl-C while answering drops that turn
    and goes on, Ctrl-C at the prompt ends it quietly."""
    from mlan.chat import HELP, chat_loop

    class Scripted:
        def ask(self, text, *, write, **generate):
            if text == "slow":
                raise KeyboardInterrupt
            write(f"{text}!")

    lines = iter(["/help", "/nope", "slow", "quick"])

    def read():
        line = next(lines, None)
        if line is None:
            raise KeyboardInterrupt
        return line

    out, said = [], []
    chat_loop(Scripted(), read, out.append, said.append)
    assert "".join(out) == "\nquick!\n"
    assert said == [HELP, "error: unknown command /nope (/help lists them)", "(interrupted: that turn is dropped)", ""]
