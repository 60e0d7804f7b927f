"""The teacher's prompt for one row, as MLAN's authors build it, and the exemplars it shows.

Language rows (ToviTu/IT_MLLM@af440a6, `src/evaluate_util.py` and `inference_yi_*_cot.py`): one raw text
prompt, no chat template, no system role:

    {instruction}\\n{exemplar block}\\nRationale: {exemplar rationale}{eos}{instruction}\\n{row block}\\nRationale:

(`format_input_with_cot_prompt`, evaluate_util.py:21-41 for SQuAD, the same shape at :127-148, :312-332,
:374-398 and :445-469), where `eos` is the teacher tokenizer's EOS text (inference_yi_squad_cot.py:22 passes
`model.processor.eos_token`) and each block is `Context: c\\nQuestion: q\\nAnswer: a` (`llm_cqa`) or, for ARC,
`Question: q\\nAnswer: a` (`llm_qa`, src/prompt_template.py:15-16). The teacher is shown the gold answer.

Image rows (IT_MLLM@db5622b, lmms-eval tasks under scripts/anno/custom/, run through lmms-eval's
`llava_plain` model: the text as the prompt, no conversation template):

    VQAv2 (vqav2/utils.py:74-76):  {pre} Question: {q}Answer: {a}{post} Rationale: {r}</s>{pre} <image>\\nQuestion: {q}Answer: {a}{post} Rationale:
    A-OKVQA (okvqa/utils.py:39-44,61-63):  {pre} Question: {q} Answer: {a}{post} Rationale: {r}</s>{pre} <image>\\nQuestion: {q} Choose the best option from the following:\\n{options} Answer: {L}{post} Rationale:

with `pre` the task YAML's pre_prompt (okvqa_train.yaml:25, _default_template_vqav2_yaml:17) and `post` empty.
The missing space before `Answer:` in VQAv2 and the literal `</s>` are the authors'.

`answer_wording: student` (mlan's default) changes only what the teacher is told the answer is, to the
wording the trained model will see: StrategyQA `yes`/`no` (MLAN showed Python's `True`/`False`, then trained
on `... the direct answer is: yes.`), ARC's numbered labels as letters (the student's options are lettered),
and A-OKVQA's options lettered (MLAN listed them without letters yet said `Answer: C`). `mlan` keeps MLAN's
bytes. Everything else is MLAN's either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan.errors import MlanError, first_line
from mlan.schemas import LETTERS, Item

log = logging.getLogger(__name__)

# inference_yi_*_cot.py:20, word for word: the two spaces after "answer," and the final space are the authors'.
INSTRUCTION = (
    "You are a helpful agent in answering questions. You will be provided with a context, a question, and its "
    "answer,  and your job is to supply a detailed step-by-step explanation. You need to first paraphrase the "
    "problem, state the relevant premise according to the context, deduct facts one at a step, and finally give "
    'the reason why the answer is correct. If you disagree, please reply with "I disagree". '
)
# The vision tasks' pre_prompt (okvqa_train.yaml:25): one space after "answer,", no final space.
VISION_INSTRUCTION = (
    "You are a helpful agent in answering questions. You will be provided with a context, a question, and its "
    "answer, and your job is to supply a detailed step-by-step explanation. You need to first paraphrase the "
    "problem, state the relevant premise according to the context, deduct facts one at a step, and finally give "
    'the reason why the answer is correct. If you disagree, please reply with "I disagree".'
)
# evaluate_util.py:380 and :451: appended to the question with no space before it.
CHOOSE = "Choose the most appropriate answer from below:\n"
VISION_SEPARATOR = "</s>"  # vqav2/utils.py:74, okvqa/utils.py:61: a literal string, whatever the teacher's EOS

# The authors' exemplars: ten per source. Their repository carries no licence, so mlan does not ship them;
# it reads them from the repository at these commits (each file checked against its git blob hash) into
# ~/.cache/mlan/exemplars, or from a file the spec names (`rationales.exemplars.<source>`).
EXEMPLAR_REPO = "ToviTu/IT_MLLM"
LANGUAGE_COMMIT = "af440a6d6136b770e850cf6be577648988058710"  # the self-consistent generation code
VISION_COMMIT = "db5622b41f25d3468bc0a76631ef8c68cc2145ed"  # the vision task configs
EXEMPLARS: dict[str, tuple[str, str, str]] = {  # adapter -> (commit, file, git blob sha1)
    "squad": (LANGUAGE_COMMIT, "GPT_squad_rationale.json", "8386cfb485b0a2e56654e7170a97f1ce2ef328c0"),
    "strategyqa": (LANGUAGE_COMMIT, "GPT_strategyQA_rationale.json", "07404bd2f2fa70185de9028eef66a9a1e8bdbabe"),
    "commonsense_qa": (LANGUAGE_COMMIT, "GPT_commonsenseQA_rationale.json", "a6bd6c08f8d344402443c3e11ebef9a98734e732"),
    "cosmos_qa": (LANGUAGE_COMMIT, "GPT_cosmosQA_rationale.json", "9f6214e1399e06049ec83689678841692e2304d5"),
    "arc": (LANGUAGE_COMMIT, "GPT_ARC_rationale.json", "88bf2c69d8467e4c38eb4183b01bdcf51f36f5a8"),
    "vqav2": (VISION_COMMIT, "GPT_VQAv2_rationale.json", "4b0927134a4e99bae858e94de1e2737da500a1c9"),
    "aokvqa": (VISION_COMMIT, "GPT_AOKVQA_rationale.json", "359d18c677c375e794abc72dd7deb33c33872ece"),
}


def llm_cqa(c: str, q: str, a: str) -> str:
    """src/prompt_template.py:16."""
    return f"Context: {c}\nQuestion: {q}\nAnswer: {a}"


def llm_qa(q: str, a: str) -> str:
    """src/prompt_template.py:15."""
    return f"Question: {q}\nAnswer: {a}"


# --------------------------------------------------------------------------- exemplars


@dataclass(frozen=True)
class Exemplars:
    """One source's exemplars and where they came from (recorded in the store)."""

    rows: list[dict[str, Any]]
    origin: str
    sha256: str


def _field(ex: dict[str, Any], *names: str) -> Any:
    """An exemplar field by any of its names, case-insensitively (the authors' files use `Context` and `facts`)."""
    lower = {k.lower(): v for k, v in ex.items()}
    for name in names:
        if name in lower and lower[name] is not None:
            return lower[name]
    raise KeyError(names[0])


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's bytes: how the pinned exemplar files are checked."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("MLAN_CACHE", Path.home() / ".cache" / "mlan")).expanduser()


def _download_exemplars(adapter: str, what: str) -> Path:
    """The authors' exemplar file for an adapter, from the cache or downloaded at its pinned commit."""
    commit, name, blob = EXEMPLARS[adapter]
    path = cache_dir() / "exemplars" / commit[:12] / name
    if path.is_file() and git_blob_sha1(path.read_bytes()) == blob:
        return path
    url = f"https://raw.githubusercontent.com/{EXEMPLAR_REPO}/{commit}/GPT_rationale/{name}"
    try:
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except Exception as e:  # offline, blocked, moved: one line saying what to do instead
        raise MlanError(
            f"{what}: cannot read MLAN's exemplars {EXEMPLAR_REPO}@{commit[:7]} GPT_rationale/{name} ({first_line(e)}); "
            f"they carry no licence, so mlan does not ship them: put that file at {path} or name your own with "
            f"-o rationales.exemplars.<source>=FILE"
        ) from None
    if git_blob_sha1(data) != blob:
        raise MlanError(f"{what}: {url} is not the pinned file (git blob {git_blob_sha1(data)} != {blob})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def load_exemplars(source: str, adapter: str, given: str | None) -> Exemplars:
    """A source's exemplars: the spec's file when it names one, else the authors' for the adapter."""
    what = f"rationales.exemplars.{source}"
    if given is None:
        if adapter not in EXEMPLARS:
            raise MlanError(f"{what}: adapter {adapter!r} has no MLAN exemplars; give a JSON file of your own")
        path = _download_exemplars(adapter, what)
        commit, name, _ = EXEMPLARS[adapter]
        origin = f"{EXEMPLAR_REPO}@{commit[:7]}:GPT_rationale/{name}"
    else:
        path = Path(given).expanduser()
        origin = str(path)
        if not path.is_file():
            raise MlanError(f"{what} {given}: file not found")
    data = path.read_bytes()
    try:
        rows = json.loads(data)
    except ValueError as e:
        raise MlanError(f"{what} {path}: invalid JSON ({e})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise MlanError(f"{what} {path}: expected a non-empty JSON list of {{question, answer, rationale}} objects")
    for i, ex in enumerate(rows):
        for name in ("question", "answer", "rationale"):
            try:
                _field(ex, name)
            except KeyError:
                raise MlanError(f"{what} {path}: exemplar {i} has no {name!r}") from None
    return Exemplars(rows, origin, hashlib.sha256(data).hexdigest())


def exemplar_index(seed: int, row_id: str, n: int) -> int:
    """The exemplar shown with a row: drawn with the spec's seed and the row's id, so the same row gets the
    same exemplar in any order, shard or resumed run (MLAN drew with an unseeded np.random.choice)."""
    return random.Random(f"{seed}/exemplar/{row_id}").randrange(n)


# --------------------------------------------------------------------------- one row's prompt


def _answer_text(value: Any, wording: str) -> str:
    """A StrategyQA gold as shown: Python's `True`/`False` (MLAN's f-string) or the student's `yes`/`no`."""
    if isinstance(value, bool) and wording == "student":
        return "yes" if value else "no"
    return str(value)


def _arc_options(row: dict[str, Any], wording: str) -> tuple[str, str]:
    """ARC's options and answer key as shown: labels as in the file (MLAN), or re-lettered as the student sees them."""
    labels = [str(x) for x in row["choices"]["label"]]
    texts = list(row["choices"]["text"])
    key = str(row["answerKey"])
    if wording == "student":
        key = LETTERS[[s.strip() for s in labels].index(key.strip())]
        labels = list(LETTERS[: len(labels)])
    return "\n".join(f"{label} {text}" for label, text in zip(labels, texts, strict=True)), key


def language_block(adapter: str, row: dict[str, Any], item: Item, wording: str) -> str:
    """The block of a row the teacher explains, from the row as the dataset holds it (Hugging Face schemas,
    which carry the same fields as the files MLAN read)."""
    if adapter == "squad":  # evaluate_util.py:35
        return llm_cqa(row["context"], row["question"], row["answers"]["text"][0])
    if adapter == "strategyqa":  # :141-142
        return llm_cqa(" ".join(row["facts"]), row["question"], _answer_text(row["answer"], wording))
    if adapter == "commonsense_qa":  # :297-306, 326: the options as the context, one per line
        options = "".join(
            f"{lab} {t}\n" for lab, t in zip(row["choices"]["label"], row["choices"]["text"], strict=True)
        )
        return llm_cqa(options, row["question"], row["answerKey"])
    if adapter == "cosmos_qa":  # :366-368, 388-392 (the CSV columns are the hub's answer0..3 and label)
        options = f"A {row['answer0']}\n B {row['answer1']}\n C {row['answer2']}\n D {row['answer3']}\n"
        return llm_cqa(row["context"], row["question"] + CHOOSE + options, "ABCD"[int(row["label"])])
    if adapter == "arc":  # :425-441, 459-463
        options, key = _arc_options(row, wording)
        return llm_qa(row["question"] + CHOOSE + options, key)
    # `qa`: mlan's own rows, laid out as the named sources are.
    question = item.question
    if item.choices:
        question += CHOOSE + "\n".join(f"{LETTERS[i]} {c}" for i, c in enumerate(item.choices))
    return llm_cqa(item.context, question, item.target()) if item.context else llm_qa(question, item.target())


def exemplar_block(adapter: str, ex: dict[str, Any], wording: str) -> str:
    """An exemplar's block, laid out as the same source's rows."""
    q, a = _field(ex, "question"), _answer_text(_field(ex, "answer"), wording)
    if adapter == "arc":  # :449: the exemplar question already lists its options
        return llm_qa(q, a)
    try:
        context = _field(ex, "context", "facts")
    except KeyError:
        return llm_qa(q, a)
    return llm_cqa(context, q, a)


def language_prompt(
    adapter: str, row: dict[str, Any], item: Item, ex: dict[str, Any], *, eos: str, instruction: str, wording: str
) -> str:
    """`format_input_with_cot_prompt` (evaluate_util.py:21-41)."""
    shot = language_shot(adapter, ex, eos=eos, instruction=instruction, wording=wording)
    return f"{shot}{language_block(adapter, row, item, wording)}\nRationale:"


def language_shot(adapter: str, ex: dict[str, Any], *, eos: str, instruction: str, wording: str) -> str:
    """The start of a language prompt, the same in every row shown the same exemplar: the instruction, the
    exemplar, and the instruction again (a teacher computes it once for all of them)."""
    return f"{instruction}\n{exemplar_block(adapter, ex, wording)}\nRationale: {_field(ex, 'rationale')}{eos}{instruction}\n"


def vision_prompt(
    adapter: str, row: dict[str, Any], item: Item, ex: dict[str, Any], *, instruction: str, wording: str
) -> str:
    """`vqav2_doc_to_text` (vqav2/utils.py:55-77) or A-OKVQA's `doc_to_text` (okvqa/utils.py:31-64), `post`
    empty; the question and answer as the row holds them (`multiple_choice_answer`, `choices`)."""
    q, a, r = _field(ex, "question"), _field(ex, "answer"), _field(ex, "rationale")
    question = row.get("question", item.question)
    if adapter == "aokvqa":
        choices = list(row.get("choices") or item.choices or [])
        if wording == "student":
            options = "\n".join(f"{LETTERS[i]} {c}" for i, c in enumerate(choices))
        else:
            options = "\n".join(choices)
        shot = f"{instruction} Question: {q} Answer: {a} Rationale: {r}{VISION_SEPARATOR}"
        return (
            shot + f"{instruction} <image>\nQuestion: {question} Choose the best option from the following:\n"
            f"{options} Answer: {item.target()} Rationale:"
        )
    # vqav2 and any other image source: VQAv2's layout
    answer = row.get("multiple_choice_answer") or item.target()
    shot = f"{instruction} Question: {q}Answer: {a} Rationale: {r}{VISION_SEPARATOR}"
    return shot + f"{instruction} <image>\nQuestion: {question}Answer: {answer} Rationale:"
