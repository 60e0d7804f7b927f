"""MLAN's zero-shot generate-then-match protocol: prompt, greedy generation, extraction, exact match.

Why our own harness and not lm-eval here (checked with lm-eval 0.4.13 and transformers 5.23):
lm-eval's `hf-multimodal` model does run a transformers 5 `LlavaForConditionalGeneration`
(generate_until with an image works), but it picks the text-only or the image path for a whole
run from its first request alone, so ScienceQA's mix of questions with and without images
cannot run as one task; and MLAN's protocol (a Vicuna-v1 chat prompt whose assistant turn is
primed with `The best answer is "`, then answer extraction) would need a task YAML plus custom
filters per task. One thin harness serves both unseen suites with the same prompting,
extraction and result format, and batches generation (see benchmarks/eval_throughput.py).

The harness talks to a model only through `Generator.generate(requests, max_new_tokens, stop)`,
so a scripted generator (tests) goes through exactly the same prompting, extraction and scoring.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mlan.config.suite import EvalSuite, SuiteTask
from mlan.evaluate.extract import extract_choice, extract_exact, extract_open, extract_yes_no, normalize
from mlan.schemas import LETTERS, Item

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt to continue; `image` is a PIL image for vision questions, else None."""

    prompt: str
    image: Any = None


class Generator(Protocol):
    """Anything that continues prompts greedily: an HF model, or a scripted answerer in tests."""

    multimodal: bool

    def generate(self, requests: list[Request], *, max_new_tokens: int, stop: list[str]) -> list[str]:
        """The continuation of each request, cut at the first stop string."""
        ...


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# --------------------------------------------------------------------------- prompts


def user_text(item: Item, suite: EvalSuite) -> str:
    """The question as the user asks it: context, question, instruction, options."""
    p = suite.prompt
    parts = []
    if item.context:
        parts.append(f"Context: {item.context}")
    parts.append(item.question)
    if item.kind == "mc" and item.choices:
        parts.append(p.choice_instruction)
        parts.extend(p.choice_format.format(label=LETTERS[i], text=c) for i, c in enumerate(item.choices))
    elif item.kind == "yesno":
        parts.append(p.yes_no_instruction)
    else:
        parts.append(p.open_instruction)
    return "\n".join(x for x in parts if x)


def build_prompt(item: Item, suite: EvalSuite, apply_chat: Callable[[list[dict]], str] | None) -> str:
    """The full prompt text. `apply_chat` renders chat messages with the model's template
    (adding the generation prompt); for the plain style it is not used."""
    p = suite.prompt
    text = user_text(item, suite)
    if p.style == "chat" and apply_chat is not None:
        content: Any = [{"type": "image"}, {"type": "text", "text": text}] if item.image is not None else text
        rendered = apply_chat([{"role": "user", "content": content}])
        return f"{rendered} {p.answer_prefix}" if p.answer_prefix else rendered
    image = "<image>\n" if item.image is not None else ""
    return f"User: {image}{text}\nAssistant: {p.answer_prefix}".rstrip(" ")


# --------------------------------------------------------------------------- scoring


def score_items(items: list[Item], responses: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Metrics over a task and one record per question (response, prediction, gold, correct).

    acc for every task; for yes/no tasks also POPE's precision, recall, F1 (positive = "yes")
    and yes-ratio. An answer that cannot be extracted is wrong and never counts as "yes".
    """
    samples = []
    for item, resp in zip(items, responses, strict=True):
        if item.kind == "mc":
            pred = extract_choice(resp, item.choices or [])
            correct = pred == item.answer
        elif item.kind == "yesno":
            pred = extract_yes_no(resp)
            correct = pred == item.answer
        elif item.kind == "exact":
            pred = extract_exact(resp)
            correct = pred == extract_exact(item.answer)
        else:
            pred = extract_open(resp)
            correct = pred == normalize(item.answer)
        samples.append(
            {
                "id": item.id,
                "response": resp,
                "pred": pred,
                "gold": item.answer,
                "correct": bool(correct),
                "image": item.image is not None,
            }
        )
    n = len(samples)
    acc = sum(s["correct"] for s in samples) / n if n else 0.0
    metrics = {"acc": acc, "acc_stderr": math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else 0.0}
    if items and all(it.kind == "yesno" for it in items):
        tp = sum(s["pred"] == "yes" and s["gold"] == "yes" for s in samples)
        fp = sum(s["pred"] == "yes" and s["gold"] == "no" for s in samples)
        fn = sum(s["pred"] != "yes" and s["gold"] == "yes" for s in samples)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        metrics |= {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": sum(s["pred"] == "yes" for s in samples) / n if n else 0.0,
        }
    return metrics, samples


# --------------------------------------------------------------------------- the HF generator


class HFGenerator:
    """Greedy, batched generation with a loaded model (LLaVA or causal LM).

    Requests are sorted by length and batched (left padding), images and text-only questions
    in separate batches; outputs are returned in request order.
    """

    def __init__(self, loaded, batch_size: int = 8):
        self.loaded = loaded
        self.batch_size = max(1, int(batch_size))
        self.multimodal = loaded.multimodal
        self.tokenizer = loaded.tokenizer
        self.tokenizer.padding_side = "left"

    def apply_chat(self, messages: list[dict]) -> str:
        """Render messages with the model's chat template (generation prompt added)."""
        owner = self.loaded.processor or self.tokenizer
        if getattr(owner, "chat_template", None) is None and getattr(self.tokenizer, "chat_template", None) is None:
            # A base LLM without a template: the plain Vicuna-style turn.
            content = messages[-1]["content"]
            text = content if isinstance(content, str) else "".join(p.get("text", "<image>\n") for p in content)
            return f"USER: {text} ASSISTANT:"
        out = owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        bos = self.tokenizer.bos_token
        # The tokenizer adds BOS itself; a template that writes it too would double it.
        return out[len(bos) :] if bos and out.startswith(bos) else out

    def generate(self, requests: list[Request], *, max_new_tokens: int, stop: list[str], on_batch=None) -> list[str]:
        """Continue every request greedily; `on_batch(n_done)` is called after each batch."""
        import torch

        order = sorted(range(len(requests)), key=lambda i: (requests[i].image is not None, -len(requests[i].prompt)))
        out: list[str] = [""] * len(requests)
        done = 0
        i = 0
        while i < len(order):
            has_image = requests[order[i]].image is not None
            batch = [order[i]]
            i += 1
            while (
                i < len(order) and len(batch) < self.batch_size and (requests[order[i]].image is not None) == has_image
            ):
                batch.append(order[i])
                i += 1
            prompts = [requests[j].prompt for j in batch]
            if has_image:
                images = [requests[j].image.convert("RGB") for j in batch]
                inputs = self.loaded.processor(text=prompts, images=images, return_tensors="pt", padding=True)
            else:
                inputs = self.tokenizer(prompts, return_tensors="pt", padding=True)
            inputs = {k: v.to(self.loaded.device) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.model.dtype)
            with torch.inference_mode():
                gen = self.loaded.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    stop_strings=[s for s in stop if s] or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            texts = self.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, t in zip(batch, texts, strict=True):
                out[j] = cut_at_stop(t, stop)
            done += len(batch)
            if on_batch:
                on_batch(done)
        return out


# --------------------------------------------------------------------------- one task


def run_generate_task(
    task: SuiteTask, suite: EvalSuite, items: list[Item], generator, *, on_batch=None
) -> tuple[dict[str, float], list[dict]]:
    """Prompt, generate and score one task; returns (metrics, per-question samples)."""
    apply_chat = getattr(generator, "apply_chat", None)
    requests = [Request(build_prompt(it, suite, apply_chat), it.image) for it in items]
    max_new = task.max_new_tokens or suite.max_new_tokens
    stop = task.stop if task.stop is not None else suite.stop
    kwargs = {"on_batch": on_batch} if on_batch is not None and isinstance(generator, HFGenerator) else {}
    responses = generator.generate(requests, max_new_tokens=max_new, stop=stop, **kwargs)
    metrics, samples = score_items(items, responses)
    for s, r in zip(samples, requests, strict=True):
        s["prompt"] = r.prompt
    return metrics, samples
