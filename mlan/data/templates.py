"""Instruction templates: about twenty paraphrases per question kind, chosen at random (seeded),
and `render`, which turns an item (mlan.schemas) into the user and assistant turns of a mixture row.

Layout of a user turn, following MLAN: `[Context: <c>\\n]<question>\\n<instruction>[\\n<options>]`;
options are lettered `A. text` and the target is the letter alone, yes/no targets are `yes`/`no`,
short answers are the answer span. The chain-of-thought form appends a request to reason and the
target becomes `<rationale>\\nSo the answer is <answer>.`
"""

from __future__ import annotations

import random

from mlan.schemas import LETTERS, Item

MULTIPLE_CHOICE = (
    "Choose the best option from the choices provided.",
    "Pick the correct answer from the options below.",
    "Select the most appropriate option. Answer with the letter only.",
    "Which of the following options is correct? Reply with its letter.",
    "Answer the question by choosing one of the options.",
    "From the choices given, select the best answer.",
    "Read the options and pick the one that answers the question.",
    "Choose the right answer and reply with the option's letter.",
    "Which choice best answers the question?",
    "Select one option that correctly answers the question.",
    "Give the letter of the correct option.",
    "Decide which option is right and respond with its letter.",
    "Among the options listed, which one is the answer?",
    "Pick the option that fits best.",
    "Identify the correct choice from the list below.",
    "Answer with the letter of the best choice.",
    "Consider the options and choose the most suitable one.",
    "Which option should be chosen? Answer with a single letter.",
    "Mark the best answer among the following choices.",
    "Choose one of the lettered options as your answer.",
)

YES_NO = (
    "Answer yes or no.",
    "Reply with yes or no.",
    "Is this true? Answer yes or no.",
    "Respond with a single word: yes or no.",
    "Give a yes or no answer.",
    "Answer the question with yes or no only.",
    "Please answer with either yes or no.",
    "Decide whether the answer is yes or no.",
    "Say yes or no.",
    "Your answer should be yes or no.",
    "Is the answer yes or no?",
    "Think about the question and answer yes or no.",
    "Answer this yes/no question.",
    "Respond yes if it is true and no otherwise.",
    "Reply with one word, yes or no.",
    "Choose between yes and no.",
    "Give your answer as yes or no.",
    "Answer with yes or with no.",
    "Judge the question and reply yes or no.",
    "Only answer yes or no.",
)

SHORT_ANSWER = (
    "Answer the question briefly.",
    "Give a short answer.",
    "Answer with a word or a short phrase.",
    "Reply with a brief answer.",
    "Respond concisely.",
    "Answer in as few words as possible.",
    "Provide a short answer to the question.",
    "What is the answer? Keep it short.",
    "Answer the question using a single word or phrase.",
    "Give the answer only, without explanation.",
    "Write a short answer.",
    "Answer directly and briefly.",
    "State the answer in a few words.",
    "Give a concise answer to the question.",
    "Reply with just the answer.",
    "Answer with a short span of text.",
    "Keep your answer to a phrase.",
    "Please give a brief, direct answer.",
    "Answer the question in a few words.",
    "Give the shortest correct answer.",
)

CHAIN_OF_THOUGHT = (
    "Explain your reasoning, then give the answer.",
    "Think step by step before answering.",
    "Give a short rationale first, then the answer.",
    "Reason about the question, then answer it.",
    "First explain why, then state the answer.",
    "Work through the question and finish with the answer.",
    "Describe your reasoning briefly and then answer.",
    "Justify your answer before giving it.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "mc": MULTIPLE_CHOICE,
    "yesno": YES_NO,
    "short": SHORT_ANSWER,
    "cot": CHAIN_OF_THOUGHT,
}


def template_text(template_id: str) -> str:
    """The instruction of a template id such as `mc/03`."""
    kind, _, num = template_id.partition("/")
    return TEMPLATES[kind][int(num)]


def render(item: Item, rng: random.Random, cot_share: float) -> tuple[list[dict], list[str]]:
    """(messages, template ids) for one item; all randomness comes from `rng`."""
    if item.kind == "chat":
        return item.messages, []
    num = rng.randrange(len(TEMPLATES[item.kind]))
    ids = [f"{item.kind}/{num:02d}"]
    parts = []
    if item.context:
        parts.append(f"Context: {item.context}")
    parts.append(item.question)
    parts.append(TEMPLATES[item.kind][num])
    if item.kind == "mc":
        parts.append("\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)))
    # Draw the chain-of-thought coin for every item so the other rows' choices do not depend on which rows have rationales.
    cot = rng.random() < cot_share
    answer = item.target()
    if cot and item.rationale:
        c = rng.randrange(len(CHAIN_OF_THOUGHT))
        ids.append(f"cot/{c:02d}")
        parts.append(CHAIN_OF_THOUGHT[c])
        answer = f"{item.rationale.strip()}\nSo the answer is {answer}."
    return [{"role": "user", "content": "\n".join(parts)}, {"role": "assistant", "content": answer}], ids
