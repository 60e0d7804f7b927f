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
Prompts are built in mlan.evaluate.prompts; answers are read by MLAN's filters
(mlan.evaluate.extract_mlan, `extraction: mlan`) or mlan's lenient extractor (mlan.evaluate.extract).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from mlan.config.suite import EvalSuite, SuiteTask
from mlan.evaluate.extract import extract_choice, extract_exact, extract_open, extract_yes_no, normalize
from mlan.evaluate.extract_mlan import mlan_answer
from mlan.evaluate.prompts import build_prompt, user_text
from mlan.images import model_aspect_ratio, prepare_image
from mlan.schemas import Item

__all__ = [
    "Generator",
    "HFGenerator",
    "Request",
    "build_prompt",
    "cut_at_stop",
    "run_generate_task",
    "score_items",
    "user_text",
]

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt to continue; `image` is a PIL image for vision questions, else None; `bos`: a
    text-only prompt starts with the tokenizer's BOS token."""

    prompt: str
    image: Any = None
    bos: bool = True
    image_aspect_ratio: str = "original"  # `pad`: squared in the processor's mean colour first (mlan.images)


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


# --------------------------------------------------------------------------- scoring


def lenient_answer(item: Item, response: str) -> tuple[str | None, bool]:
    """(prediction, correct) with mlan's own extractor: letter forms, choice text, number words,
    yes/no as a whole word, normalised short answers."""
    if item.kind == "mc":
        pred = extract_choice(response, item.choices or [])
        return pred, pred == item.answer
    if item.kind == "yesno":
        pred = extract_yes_no(response)
        return pred, pred == item.answer
    if item.kind == "exact":
        pred = extract_exact(response)
        return pred, pred == extract_exact(item.answer)
    pred = extract_open(response)
    return pred, pred == normalize(item.answer)


def score_items(
    items: list[Item], responses: list[str], *, extraction: str = "lenient", modality: str = "language"
) -> tuple[dict[str, float], list[dict]]:
    """Metrics over a task and one record per question (response, prediction, gold, correct).

    `extraction`: `mlan` (MLAN's filters for the suite's `modality`) or `lenient`. acc for every
    task; for yes/no tasks also POPE's precision, recall, F1 (positive = "yes") and the yes-ratio of
    the PREDICTIONS: MLAN's pope_aggregate_yes_ratio counts the gold answers instead
    (wang-research-lab/mlan@7ce179a:scripts/eval/custom/pope/helper.py:L131-141), a number that
    does not depend on the model. An answer that reads as neither yes nor no (invalid) is wrong in
    acc, never counts as "yes", and counts as a miss (a false negative) when the gold is "yes", so it
    lowers recall and F1; MLAN's recall (L110-121) leaves it out, counting only "no" answers as
    misses, which scores a model that answers neither yes nor no higher there than here.
    """
    samples = []
    for item, resp in zip(items, responses, strict=True):
        pred, correct = mlan_answer(item, resp, modality) if extraction == "mlan" else lenient_answer(item, resp)
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
    in separate batches; outputs are returned in request order. With several processes
    (mlan.evaluate.parallel) the same batches are dealt out, one per process per round, and the
    answers gathered after each round: every process returns the one-process answers.
    """

    reports_batches = True  # `generate` takes `on_batch`

    def __init__(self, loaded, batch_size: int = 8, processes=None):
        from mlan.evaluate.parallel import ONE

        self.loaded = loaded
        self.batch_size = max(1, int(batch_size))
        self.multimodal = loaded.multimodal
        self.tokenizer = loaded.tokenizer
        self.tokenizer.padding_side = "left"
        self.processes = processes or ONE

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

    def batches(self, requests: list[Request]) -> list[list[int]]:
        """Request indices in batches: one kind each (image or not, BOS or not), longest prompts first."""

        def group(r: Request) -> tuple[bool, bool]:  # one batch: one tokenization
            return r.image is not None, r.bos

        order = sorted(range(len(requests)), key=lambda i: (group(requests[i]), -len(requests[i].prompt)))
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and group(requests[out[-1][0]]) == group(requests[i]):
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def generate(self, requests: list[Request], *, max_new_tokens: int, stop: list[str], on_batch=None) -> list[str]:
        """Continue every request greedily; `on_batch(n_done)` is called after each batch (each round of
        batches over all processes)."""
        procs = self.processes
        batches = self.batches(requests)
        out: list[str] = [""] * len(requests)
        done = 0
        for start in range(0, len(batches), procs.world):
            mine = batches[start + procs.rank] if start + procs.rank < len(batches) else []
            texts = self._generate_batch([requests[j] for j in mine], max_new_tokens, stop) if mine else []
            for indices, answers in procs.all_gather((mine, texts)):
                for j, t in zip(indices, answers, strict=True):
                    out[j] = t
                done += len(indices)
            if on_batch:
                on_batch(done)
        return out

    def _generate_batch(self, batch: list[Request], max_new_tokens: int, stop: list[str]) -> list[str]:
        import torch

        prompts = [r.prompt for r in batch]
        if batch[0].image is not None:
            processor = self.loaded.processor
            images = [prepare_image(r.image, processor, r.image_aspect_ratio) for r in batch]
            inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        else:
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=batch[0].bos)
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
        return [cut_at_stop(t, stop) for t in texts]


# --------------------------------------------------------------------------- one task


def image_aspect_ratio(suite: EvalSuite, generator) -> str:
    """The suite's image padding; `model` reads it from the loaded model's config (original for a scripted one)."""
    if suite.image_aspect_ratio != "model":
        return suite.image_aspect_ratio
    loaded = getattr(generator, "loaded", None)
    config = loaded.model.config if loaded is not None else getattr(generator, "config", None)  # vLLM: its HF config
    return model_aspect_ratio(config) if config is not None else "original"


def run_generate_task(
    task: SuiteTask, suite: EvalSuite, items: list[Item], generator, *, on_batch=None
) -> tuple[dict[str, float], list[dict]]:
    """Prompt, generate and score one task; returns (metrics, per-question samples)."""
    apply_chat = getattr(generator, "apply_chat", None)
    bos = suite.prompt.add_bos
    ratio = image_aspect_ratio(suite, generator)
    requests = [Request(build_prompt(it, task, suite, apply_chat), it.image, bos, ratio) for it in items]
    max_new = task.max_new_tokens or suite.max_new_tokens
    stop = task.stop if task.stop is not None else suite.stop
    takes = getattr(generator, "reports_batches", False)  # mlan's engines; a scripted generator does not
    kwargs = {"on_batch": on_batch} if on_batch is not None and takes else {}
    responses = generator.generate(requests, max_new_tokens=max_new, stop=stop, **kwargs)
    # Every generator's continuation is cut here too, so a scripted one is scored as a model would be.
    responses = [cut_at_stop(r, stop) for r in responses]
    metrics, samples = score_items(items, responses, extraction=suite.extraction_of(task), modality=suite.modality)
    for s, r in zip(samples, requests, strict=True):
        s["prompt"] = r.prompt
    return metrics, samples
