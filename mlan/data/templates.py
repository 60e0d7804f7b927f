"""Instruction templates as MLAN's data preparation writes them, and `render`, which turns an item
(mlan.schemas) into the user and assistant turns of a mixture row. Randomness comes from a seeded rng.

The four phrase lists are MLAN's, word for word (wang-research-lab/mlan@7ce179a8:
llava/anno/prompt_template.py; identical in its development repo ToviTu/IT_MLLM@db5622b4), as is the
layout of a user turn (same file, L106-113):
- short answer: `[Context: <c>\\n]<instruction>\\n<question>`
- yes/no:       `[Context: <c>\\n]<yes/no instruction>\\n<question>`
- multiple choice: `[Context: <c>\\n]<question> <instruction>\\n<A text>\\n<B text>...` (letter, space, text)
The target is the letter, `yes`/`no` or the answer span; in the chain-of-thought form it is the rationale,
a newline, one of twenty "the direct answer is:" phrases, the answer and a full stop, e.g.
`<rationale>\\nIn short, the direct answer is: B.` (llava/anno/evaluate_util.py L101), and the user turn
is unchanged. Images go before the user text (LLaVA's `preprocess_multimodal`; TRL does the same).

Where mlan differs on purpose:
- The question kind comes from the item (a StrategyQA or yes/no VQAv2 answer is yes/no). MLAN picks the
  yes/no template when "yes" or "no" occurs anywhere in the last word of the target (evaluate_util.py
  L29-34), so short answers such as "piano." or "snow" got a yes/no instruction.
- MLAN's user turns of text rows end with a newline, a remnant of cutting "User: ...\\nAssistant: " apart
  (scripts/anno/prepare_lang_it.py L30-37 in ToviTu/IT_MLLM); mlan's do not.
"""

from __future__ import annotations

import random

from mlan.schemas import LETTERS, Item

# prompt_template.py L10-31 (`mc_prompt`).
MULTIPLE_CHOICE = (
    "Choose the correct answer from the following options:",
    "Only one of the following options is correct. Choose the correct one:",
    "Which of the following is the correct answer?",
    "Choose the correct option from the following:",
    "Select the most appropriate answer from the following options:",
    "Pick the correct answer from the given choices:",
    "Identify the correct option among the following:",
    "Select the right answer from the options below:",
    "Choose the best answer from the following choices:",
    "Which option is correct?",
    "Select the accurate answer from the options provided:",
    "Choose the correct response from the given options:",
    "From the options below, pick the correct answer:",
    "Which of these is the correct answer?",
    "Choose the most accurate answer from the following options:",
    "Select the appropriate answer from the given choices:",
    "Identify the correct answer from the options below:",
    "Pick the right option from the following:",
    "Choose the best option from the choices provided:",
    "Select the correct answer from these options:",
)

# prompt_template.py L79-100 (`tf_prompt`).
YES_NO = (
    "Please answer the question with 'yes' or 'no'.",
    "Respond to the question with 'yes' or 'no'.",
    "Answer the question using 'yes' or 'no'.",
    "Provide a 'yes' or 'no' answer to the question.",
    "Reply to the question with 'yes' or 'no'.",
    "Use 'yes' or 'no' to answer the question.",
    "Give a 'yes' or 'no' response to the question.",
    "Please respond with 'yes' or 'no'.",
    "Your answer should be either 'yes' or 'no'.",
    "Answer with 'yes' or 'no'.",
    "Please provide a 'yes' or 'no' answer.",
    "Reply using 'yes' or 'no'.",
    "Respond using 'yes' or 'no'.",
    "Give an answer of 'yes' or 'no'.",
    "Use 'yes' or 'no' in your response.",
    "Please use 'yes' or 'no' to answer.",
    "Provide a response of 'yes' or 'no'.",
    "Answer simply with 'yes' or 'no'.",
    "Respond solely with 'yes' or 'no'.",
    "Your response should be 'yes' or 'no'.",
)

# prompt_template.py L33-54 (`short_answer_prompt`).
SHORT_ANSWER = (
    "Please provide a short answer to the question:",
    "Please answer the question in a few words:",
    "Please provide a brief answer to the question:",
    "Please answer the question briefly:",
    "Please provide a concise answer to the question:",
    "Give a short response to the question:",
    "Answer the question in one sentence:",
    "Respond to the question with a brief statement:",
    "Provide a succinct answer to the question:",
    "Answer the question concisely:",
    "Give a brief answer to the following:",
    "Respond briefly to the question:",
    "Provide a short response:",
    "Please reply with a concise answer:",
    "Answer with a brief statement:",
    "Give a succinct response:",
    "Respond in a few words:",
    "Provide a concise reply:",
    "Answer shortly and precisely:",
    "Give a brief and accurate answer:",
)

# prompt_template.py L56-77 (`fa_prompt`): what joins a rationale to the direct answer.
DIRECT_ANSWER = (
    "To sum up, the direct answer is:",
    "To summarize, the direct answer is:",
    "In summary, the direct answer is:",
    "To conclude, the direct answer is:",
    "In closing, the direct answer is:",
    "All in all, the direct answer is:",
    "Overall, the direct answer is:",
    "In brief, the direct answer is:",
    "In short, the direct answer is:",
    "In essence, the direct answer is:",
    "To encapsulate, the direct answer is:",
    "In a nutshell, the direct answer is:",
    "To wrap up, the direct answer is:",
    "As a final point, the direct answer is:",
    "Ultimately, the direct answer is:",
    "As a final note, the direct answer is:",
    "In the end, the direct answer is:",
    "To recapitulate, the direct answer is:",
    "To put it briefly, the direct answer is:",
    "To round off, the direct answer is:",
)

# Template ids in the manifest are `<kind>/<index>`; `cot/NN` names the direct-answer phrase used.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "mc": MULTIPLE_CHOICE,
    "yesno": YES_NO,
    "short": SHORT_ANSWER,
    "cot": DIRECT_ANSWER,
}


def template_text(template_id: str) -> str:
    """The instruction (or direct-answer phrase) of a template id such as `mc/03`."""
    kind, _, num = template_id.partition("/")
    return TEMPLATES[kind][int(num)]


def user_turn(item: Item, instruction: str) -> str:
    """The user text of an item under one instruction, laid out as MLAN's `llava_cqa`/`llava_cmc` do."""
    if item.kind == "mc":
        options = "\n".join(f"{LETTERS[i]} {c}" for i, c in enumerate(item.choices))
        body = f"{item.question} {instruction}\n{options}"
    else:
        body = f"{instruction}\n{item.question}"
    return f"Context: {item.context}\n{body}" if item.context else body


def render(item: Item, rng: random.Random, cot_share: float) -> tuple[list[dict], list[str]]:
    """(messages, template ids) for one item; all randomness comes from `rng`."""
    if item.kind == "chat":
        return item.messages, []
    num = rng.randrange(len(TEMPLATES[item.kind]))
    ids = [f"{item.kind}/{num:02d}"]
    # Draw the chain-of-thought coin for every item so the other rows' choices do not depend on which rows have rationales.
    cot = rng.random() < cot_share
    answer = item.target()
    if cot and item.rationale:
        c = rng.randrange(len(DIRECT_ANSWER))
        ids.append(f"cot/{c:02d}")
        answer = f"{item.rationale.strip()}\n{DIRECT_ANSWER[c]} {answer}."
    user = user_turn(item, TEMPLATES[item.kind][num])
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], ids
