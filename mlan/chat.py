"""`mlan chat`: talk to a model in its own chat template, to look at what tuning or merging did.

Every kind mlan trains opens here through the loaders the other stages use (`mlan.models.load_model`:
LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL, Wings, a plain causal LM), plus a LoRA output folder of
`mlan sft` (an adapter over its base model, which no other stage opens for inference). The prompt is
rendered as `mlan eval` renders a `chat`-style prompt (`HFGenerator.apply_chat`: the processor's
template for a multimodal model, the tokenizer's for an LLM, the plain `USER: ... ASSISTANT:` turn for a
model without one); images are padded as the model was trained (`image_aspect_ratio`).

Every check a user can fail (no model, not a model folder, a missing image, an image for a text-only
model) raises `MlanError` before any weights are read. Light to import: torch, transformers and peft
are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.errors import MlanError, first_line
from mlan.runs import latest_run

log = logging.getLogger(__name__)

# What PEFT writes for an adapter (an `mlan sft` LoRA/QLoRA output folder has it instead of config.json).
ADAPTER_CONFIG = "adapter_config.json"
# `mlan sft` records the run's image_aspect_ratio here; a LoRA folder has no model config to hold it.
TRAIN_RESULTS = "train_results.json"
DEFAULT_MAX_NEW_TOKENS = 512

HELP = (
    "/image PATH  attach an image to your next message\n"
    "/reset       start a new conversation\n"
    "/help        this list\n"
    "/exit        end (or Ctrl-D)"
)


@dataclass(frozen=True)
class ChatTarget:
    """What `mlan chat` opens: `ref` (a folder or hub id) of `kind`; for a LoRA output folder, `ref` is
    its base model and `adapter` the folder."""

    ref: str
    kind: str
    adapter: Path | None = None

    @property
    def name(self) -> str:
        """The model as the user named it (the adapter folder for LoRA)."""
        return str(self.adapter) if self.adapter is not None else self.ref

    @property
    def multimodal(self) -> bool:
        return self.kind in kinds.MULTIMODAL_KINDS


def lora_base(folder: Path) -> str:
    """The base model an adapter folder was trained on (PEFT's `base_model_name_or_path`, as the recipe's
    `model.path` was given: a hub id, or a folder relative to where `mlan sft` ran)."""
    f = folder / ADAPTER_CONFIG
    try:
        base = json.loads(f.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, AttributeError) as e:
        raise MlanError(f"{f}: not a PEFT adapter config ({first_line(e)})") from None
    if not base:
        raise MlanError(f"{f}: no base_model_name_or_path, so the base model of this LoRA folder is unknown")
    return str(base)


def find_model(model: str | Path | None) -> ChatTarget:
    """The model to chat with and its kind, from its config alone: `model`, or the newest finished run."""
    if model is None:
        model = latest_run()  # what `mlan sft` recorded in runs/latest.json, as mlan eval and mlan merge use
        if model is None:
            raise MlanError(
                "mlan chat: no MODEL given, and no finished run under runs/ to default to; "
                "name a model folder or hub id, or train one with `mlan sft RECIPE`"
            )
        log.info("model: the newest run, %s", model)
    folder = kinds.local_folder(model)
    if folder is not None and (folder / ADAPTER_CONFIG).is_file():
        base = lora_base(folder)
        try:
            kind = kinds.model_kind(base)
        except MlanError as e:  # a relative base path is relative to where mlan sft ran: say whose base it is
            raise MlanError(f"LoRA folder {folder}: its base model ({ADAPTER_CONFIG}): {e}") from None
        return ChatTarget(base, kind, adapter=folder)
    kind = kinds.model_kind(model)
    if kind == kinds.ORIGINAL_LLAVA:
        raise kinds.original_layout_error(model)
    return ChatTarget(str(model), kind)


def read_image(path: str | Path):
    """An RGB image from a file, or one line saying why not."""
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise MlanError(f"image {path}: not found")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")  # read now: the file is closed on return
    except OSError as e:  # PIL's UnidentifiedImageError included
        raise MlanError(f"image {path}: not a readable image ({first_line(e)})") from None


def check_image(target: ChatTarget, path: str | Path):
    """The image at `path`, for a model that takes images (else one line)."""
    if not target.multimodal:
        raise MlanError(
            f"model {target.name}: a text-only model ({target.kind}) takes no image; "
            "chat without --image, or with a LLaVA-style model"
        )
    return read_image(path)


def _load(target: ChatTarget, device: str | None, dtype: str | None):
    """The loaded model (`mlan.models.LoadedModel`) and the image_aspect_ratio it was trained with."""
    from mlan.families import load_processor
    from mlan.images import model_aspect_ratio
    from mlan.models import load_model, read_mixture_manifest

    loaded = load_model(target.ref, device=device, dtype=dtype)
    if target.adapter is None:
        return loaded, model_aspect_ratio(loaded.model.config)
    from peft import PeftModel

    # Folded into the base weights, as `mlan sft`'s merge_lora does: generation then runs on a plain model
    # of the base's class. The processor is the run's own (the chat template it trained with).
    loaded.model = PeftModel.from_pretrained(loaded.model, str(target.adapter)).merge_and_unload().eval()
    loaded.processor = load_processor(target.adapter, target.kind)
    loaded.tokenizer = loaded.processor.tokenizer
    loaded.name, loaded.path = target.name, target.adapter
    loaded.manifest = read_mixture_manifest(target.adapter)
    results = target.adapter / TRAIN_RESULTS
    trained = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    return loaded, model_aspect_ratio(trained if "image_aspect_ratio" in trained else loaded.model.config)


def _streamer(tokenizer, write: Callable[[str], None]):
    """A transformers TextStreamer that hands each finished piece of the answer to `write`."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                write(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class Chat:
    """One conversation with a loaded model: the messages so far, their images in order, and the
    images attached to the next message."""

    target: ChatTarget
    loaded: Any
    image_aspect_ratio: str = "original"
    messages: list[dict] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from mlan.evaluate.generate import HFGenerator

        # Used for its template rendering only (the one place eval renders a model's chat template).
        self._renderer = HFGenerator(self.loaded, batch_size=1)

    def attach(self, path: str | Path) -> None:
        """Attach the image at `path` to the next message."""
        from mlan.images import prepare_image

        image = check_image(self.target, path)
        self.pending.append(prepare_image(image, self.loaded.processor, self.image_aspect_ratio))

    def reset(self) -> None:
        """Forget the conversation (and any image attached to the next message)."""
        self.messages.clear()
        self.images.clear()
        self.pending.clear()

    def _content(self, text: str, n_images: int) -> Any:
        # A processor's template takes typed parts (llava-hf's renders no plain string); an LLM's
        # tokenizer template takes a string.
        if not self.target.multimodal:
            return text
        return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]

    def prompt(self, text: str) -> str:
        """The rendered prompt of the conversation with `text` as the next user message."""
        user = {"role": "user", "content": self._content(text, len(self.pending))}
        return self._renderer.apply_chat([*self.messages, user])

    def ask(
        self,
        text: str,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        write: Callable[[str], None] | None = None,
    ) -> str:
        """The model's answer to `text` (greedy, or sampled at `temperature` > 0), streamed piece by piece
        to `write`; the turn joins the conversation once answered."""
        import torch

        images = [*self.images, *self.pending]
        prompt = self.prompt(text)
        if images:
            inputs = self.loaded.processor(text=[prompt], images=images, return_tensors="pt")
        else:
            inputs = self.loaded.tokenizer([prompt], return_tensors="pt")
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        inputs = {k: v.to(self.loaded.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:  # the processor gives float32; a half-precision model wants its own
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        # Greedy by default: the answer `mlan eval` would score. Unset sampling fields keep a checkpoint's
        # own generation_config (e.g. Qwen's top_p) from warning that greedy ignores them.
        sampling = {"do_sample": True, "temperature": temperature}
        if temperature <= 0:
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                streamer=_streamer(tokenizer, write) if write is not None else None,
                **sampling,
            )
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        self.messages.append({"role": "user", "content": self._content(text, len(self.pending))})
        self.messages.append({"role": "assistant", "content": self._content(answer, 0)})
        self.images, self.pending = images, []
        return answer


def open_chat(
    model: str | Path | None = None,
    *,
    image: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
) -> Chat:
    """A conversation with `model` (default: the newest finished run), `image` attached to the first
    message. The model and the image are checked before any weights are read."""
    target = find_model(model)
    if image is not None:
        check_image(target, image)
    loaded, ratio = _load(target, device, dtype)
    chat = Chat(target, loaded, ratio)
    if image is not None:
        chat.attach(image)
    return chat


def chat_loop(
    chat: Chat,
    read: Callable[[], str],
    write: Callable[[str], None],
    say: Callable[[str], None],
    **generate: Any,
) -> None:
    """The interactive loop: each line `read` returns is a message (answered through `write`) or a
    command (`HELP`); `say` tells the user what happened (stderr). Ends on /exit or when `read` raises
    EOFError. A mistake in a command (a missing image) is said and the loop goes on; Ctrl-C while the
    model answers drops that turn. `generate`: Chat.ask's max_new_tokens and temperature."""
    while True:
        try:
            line = read().strip()
        except EOFError:
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat as Ctrl-D does, not with click's "Aborted!"
            say("")
            return
        if not line:
            continue
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/help":
            say(HELP)
        elif command == "/reset":
            chat.reset()
            say("(new conversation)")
        elif command == "/image":
            try:
                if not arg:
                    raise MlanError("/image PATH: name the image file")
                chat.attach(arg)
                say(f"(image {arg} goes with your next message)")
            except MlanError as e:
                say(f"error: {e}")
        elif command.startswith("/"):
            say(f"error: unknown command {command} (/help lists them)")
        else:
            try:
                chat.ask(line, write=write, **generate)
            except KeyboardInterrupt:
                say("(interrupted: that turn is dropped)")
            write("\n")
