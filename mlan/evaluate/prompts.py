"""Prompts of the generate engine: who renders the turn (`prompt.style`) and which words ask the
question (`prompt.wording`).

Styles:
- `plain`: `User: {text}\\nAssistant: {prefix}`, MLAN's language prompt. MLAN ran it through
  lm-eval's `hf` model with no chat template (wang-research-lab/mlan@7ce179a:scripts/eval/lm-eval.sh:L15-22).
- `vicuna_v1`: LLaVA's Vicuna-v1 conversation, system prompt included, rendered here for every model
  (MLAN's vision prompt; its `llava_plain` model ignores the checkpoint's template), and `<image>`
  put before the whole prompt (wang-research-lab/lmms-eval@b218a48:lmms_eval/models/llava_plain.py:L336-348).
- `chat`: each model's own chat template (kept as an option; a stage-1 checkpoint without a template
  then gets no system prompt, so it is not MLAN's protocol).

Wordings: `mlan` is MLAN's per-task text, one function per format below, each a port of the authors'
function named in its comment; `generic` is mlan's own context/question/instruction/options layout.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from mlan import kinds
from mlan.config.suite import EvalSuite, SuiteTask
from mlan.schemas import LETTERS, Item

# wang-research-lab/mlan@7ce179a:llava/conversation.py:L242-251 (conv_vicuna_v1, sep " ", roles USER/ASSISTANT).
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_TOKEN = "<image>"


def build_prompt(item: Item, task: SuiteTask, suite: EvalSuite, apply_chat: Callable[[list[dict]], str] | None) -> str:
    """The full prompt text of one question. `apply_chat` renders chat messages with the model's
    template (generation prompt added); only the `chat` style uses it."""
    p = suite.prompt
    prefix = suite.answer_prefix_of(task)
    if p.wording == "mlan":
        text, image_in_turn = MLAN_TEXT[task.format or task.name](item)
    else:
        text, image_in_turn = user_text(item, suite), True
    image = item.image is not None
    if p.style == "chat" and apply_chat is not None:
        content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image else text
        rendered = apply_chat([{"role": "user", "content": content}])
        return f"{rendered} {prefix}" if prefix else rendered
    if p.style == "vicuna_v1":
        return vicuna_v1(text, prefix, image=image, image_in_turn=image_in_turn)
    lead = f"{IMAGE_TOKEN}\n" if image else ""
    return f"User: {lead}{text}\nAssistant: {prefix}".rstrip(" ")


def vicuna_v1(text: str, prefix: str, *, image: bool, image_in_turn: bool = False) -> str:
    """`{system} USER: {text} ASSISTANT: {prefix}` as LLaVA's conversation renders it (SeparatorStyle.TWO,
    mlan@7ce179a:llava/conversation.py:L54-63) and MLAN appends the prefix
    (mlan@7ce179a:scripts/eval/custom/ai2d/helper.py:L76). MLAN's model puts `<image>\\n` before the whole
    prompt unless the task text already holds it (RealWorldQA's does, at the start of the user turn)."""
    if image and image_in_turn:
        text = f"{IMAGE_TOKEN}\n{text}"
    prompt = f"{VICUNA_V1_SYSTEM} USER: {text} ASSISTANT:" + (f" {prefix}" if prefix else "")
    return f"{IMAGE_TOKEN}\n{prompt}" if image and not image_in_turn else prompt


def user_text(item: Item, suite: EvalSuite) -> str:
    """The generic wording: context, question, instruction, options."""
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


# --------------------------------------------------------------------------- MLAN's per-task text
# Each returns (user text, whether `<image>` opens the user turn instead of the whole prompt).


def _row(item: Item) -> dict:
    return getattr(item, "row", None) or {}


def _options(choices: list[str], n: int | None = None) -> str:
    # "A: text" lines; MLAN zips with a fixed label list, so options past it are dropped (n).
    return "\n".join(f"{label}: {text}" for label, text in zip(LETTERS[: n or len(choices)], choices, strict=False))


def _race(item: Item) -> tuple[str, bool]:
    # lm_eval@6f81a6b:lm_eval/tasks/race/preprocess_race.py:L36-44 (doc_prompt on the last problem).
    return (
        f"Context: {item.context}\nQuestion: {item.question}\n"
        f"Choose the best option from the choices provided:\n{_options(item.choices or [], 4)}",
        False,
    )


def _openbookqa(item: Item) -> tuple[str, bool]:
    # lm_eval@6f81a6b:lm_eval/tasks/openbookqa/helper.py:L1-7: the dataset's own labels, question as written.
    row = _row(item)
    choices = row.get("choices") or {}
    labels, texts = choices.get("label") or LETTERS, choices.get("text") or item.choices or []
    opts = "\n".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=False))
    return f"{row.get('question_stem', item.question)} Choose the best option from the choices provided:\n{opts}", False


def _boolq(item: Item) -> tuple[str, bool]:
    # lm_eval@6f81a6b:lm_eval/tasks/boolq/helper.py:L3-7: the question as written (lowercase) plus "?".
    row = _row(item)
    passage, question = row.get("passage", item.context), row.get("question", item.question.rstrip("?"))
    return f"Context: {passage}\nQuestion: {question}?\nPlease answer the question with 'yes' or 'no'.", False


def hellaswag_preprocess(text: str, strip: bool = True) -> str:
    """lm_eval@6f81a6b:lm_eval/tasks/hellaswag/utils.py:L6-12: WikiHow markup out, double spaces once."""
    text = text.strip() if strip else text
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(item: Item) -> tuple[str, bool]:
    # lm_eval@6f81a6b:lm_eval/tasks/hellaswag/utils.py:L27-46: ctx_b capitalised, the raw endings, then the
    # whole query preprocessed again. Its strip() only touches the query's ends ("User: " and the
    # prefix, outside this text), so the text is not stripped here.
    row = _row(item)
    if "ctx_a" in row:
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        question, endings = hellaswag_preprocess(row["activity_label"] + ": " + ctx), row["endings"]
    else:  # rows with `ctx` only: the reader's context
        question, endings = item.context or item.question, item.choices or []
    query = f"{question} Choose the best option from the choices provided to complete the sentence:\n"
    query += "\n".join(f"{label}: {e}" for label, e in zip("ABCD", endings, strict=False))
    return hellaswag_preprocess(query, strip=False), False


def _pope(item: Item) -> tuple[str, bool]:
    # mlan@7ce179a:scripts/eval/custom/pope/helper.py:L63-72.
    return f'Please answer with "yes" or "no":\n{item.question}\n', False


def _ai2d(item: Item) -> tuple[str, bool]:
    # mlan@7ce179a:scripts/eval/custom/ai2d/helper.py:L15-21, L66-76 (labels A-D).
    return f"{item.question} Choose the best option from below:\n{_options(item.choices or [], 4)}\n", False


def _yes_no_gold(item: Item) -> bool:
    # MLAN picks the yes/no wording by the GOLD answer, by substring: `"no" in answer` is true for
    # "snow", "north", "none" (mlan@7ce179a:scripts/eval/custom/gqa/helper.py:L77). Fixed: the whole
    # answer is "yes" or "no". (The gold answer choosing the wording is MLAN's protocol; kept.)
    return item.answer.strip().lower() in ("yes", "no")


def _gqa(item: Item) -> tuple[str, bool]:
    # mlan@7ce179a:scripts/eval/custom/gqa/helper.py:L74-87.
    if _yes_no_gold(item):
        return f'Please answer the question with "yes" or "no". {item.question}\n', False
    return f"Please provide a short answer to the question: {item.question}\n", False


_RWQA_PROMPTS = (
    "Please answer directly with only the letter of the correct option and nothing else.",
    "Please answer directly with a single word or number.",
)


def realworldqa_question(question: str) -> tuple[str, list[str]]:
    """MLAN's reading of a RealWorldQA question: its first line (`...` added when it ends without
    punctuation) and the A-C options (mlan@7ce179a:scripts/eval/custom/realworldqa/helper.py:L16-26)."""
    for p in _RWQA_PROMPTS:
        question = question.replace(p, "")
    choices = re.findall(r"[ABC]\.\s(.+)\s", question)
    q = question.split("\n")[0]
    if q.strip()[-1:] not in string.punctuation:
        q += "..."
    return q, choices


def _realworldqa(item: Item) -> tuple[str, bool]:
    # mlan@7ce179a:scripts/eval/custom/realworldqa/helper.py:L31-44, L99-115; the only task whose
    # `<image>` sits inside the user turn (L109).
    q, choices = realworldqa_question(_row(item).get("question", item.question))
    if choices:
        return f"{q} Choose the best option from below:\n{_options(choices, 3)}\n", True
    if _yes_no_gold(item):
        return f'Please answer the question with "yes" or "no". {q}\n', True
    return f"Please provide a short answer to the question: {q}\n", True


def _scienceqa(item: Item) -> tuple[str, bool]:
    # mlan@7ce179a:scripts/eval/custom/sciq/helper.py:L17-24, L77-90 (task sciq_llava_plain, what
    # scripts/eval/lmm-eval.sh:L10 runs): labels A-E, the hint as context when it is not empty.
    hint = _row(item).get("hint", item.context or "")
    context = f"Context: {hint}\n" if hint else ""
    return (
        f"{context}Question: {item.question} Choose the best option from below:\n{_options(item.choices or [], 5)}\n",
        False,
    )


MLAN_TEXT: dict[str, Callable[[Item], tuple[str, bool]]] = {
    "race_high": _race,
    "race_high_all": _race,
    "openbookqa": _openbookqa,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "pope": _pope,
    "ai2d": _ai2d,
    "gqa": _gqa,
    "realworldqa": _realworldqa,
    "scienceqa": _scienceqa,
}


def own_prompt(suite: EvalSuite, kind: str) -> EvalSuite | None:
    """The suite in the model's own chat template, for a vision suite written in another one (MLAN's is
    Vicuna-v1 with `<image>` first) asked of LLaVA-OneVision or Qwen2.5-VL: they were tuned in their
    own template, and Qwen2.5-VL's image sits in its own tokens. A documented deviation from MLAN's prompt
    (docs/evaluation.md), recorded per task as `prompt_style`. None when the suite stays as it is."""
    if kind not in (kinds.LLAVA_ONEVISION, kinds.QWEN2_5_VL):
        return None
    if suite.modality != "vision" or suite.prompt.style == "chat":
        return None
    return suite.model_copy(update={"prompt": suite.prompt.model_copy(update={"style": "chat"})})
