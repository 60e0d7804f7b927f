"""MLAN's instruction phrases and LLaVA templates, copied by hand from the authors' code so that tests
compare mlan's templates (mlan.data.templates) with an oracle that does not come from mlan itself.

Source: wang-research-lab/mlan, commit 7ce179a8d6598142f0ba7038b6074c5fe1e4e766, file
llava/anno/prompt_template.py (identical in ToviTu/IT_MLLM@db5622b41f25d3468bc0a76631ef8c68cc2145ed,
the authors' development repository). The four lists are L10-31, L33-54, L56-77 and L79-100, their
strings character for character (only the layout is ruff's); the LLaVA templates are L106-113 with the
`random` module replaced by `Pick`, so that a test chooses the phrase `random.choice` would have drawn.
Nothing here imports mlan: do not "fix" these values to agree with mlan.
"""

from __future__ import annotations


class Pick:
    """Stands in for the `random` module of prompt_template.py: `choice` returns the phrase set in
    `phrase` after checking that it is one of the list MLAN's template draws from."""

    def __init__(self) -> None:
        self.phrase = ""

    def choice(self, seq):
        assert self.phrase in seq, (self.phrase, seq[0])
        return self.phrase


random = Pick()

# prompt_template.py L10-100, as written there.
mc_prompt = [
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
]

short_answer_prompt = [
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
]

fa_prompt = [
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
]

tf_prompt = [
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
]

# prompt_template.py L106-113, as written there (lambdas assigned to names, hence the noqa).
llava_cqa = lambda c, q, a: "User: " + (f"Context: {c}\n" if c else "") + q + "\nAssistant: " + a  # noqa: E731
llava_srq = lambda c, q, a: llava_cqa(c, random.choice(short_answer_prompt) + "\n" + q, a)  # noqa: E731
llava_tfq = lambda c, q, a: llava_cqa(c, random.choice(tf_prompt) + "\n" + q, a)  # noqa: E731
llava_cmc = lambda c, mc, q, a: llava_cqa(  # noqa: E731
    c, q + " " + random.choice(mc_prompt) + "\n" + "\n".join([each for each in mc]), a
)


def format_input(context="", question="", choices="", answer="", template=llava_srq) -> str:
    """`DatasetFactory.format_input` (wang-research-lab/mlan@7ce179a8:llava/anno/evaluate_util.py L25-37)
    without the unused prefix/suffix: multiple choice when there are choices, else the yes/no template
    when "yes" or "no" occurs anywhere in the answer's last word, else `template`."""
    final_answer = answer.split(" ")[-1]
    if choices:
        return llava_cmc(context, choices, question, answer)
    elif "yes" in final_answer or "no" in final_answer:
        return llava_tfq(context, question, answer)
    return template(context, question, answer)


def cot_answer(rationale: str, phrase: str, answer: str) -> str:
    """The chain-of-thought target (evaluate_util.py L101, `random.choice(fa_prompt)` given as `phrase`)."""
    assert phrase in fa_prompt
    return rationale + f"\n{phrase} " + answer + "."


def format_llava_train(finputs: str) -> tuple[str, str]:
    """(human, gpt) values of one row (ToviTu/IT_MLLM@db5622b4:scripts/anno/prepare_lang_it.py L30-37)."""
    split = finputs.split("User: ")[-1]
    split_ = split.split("Assistant: ")
    return split_[0], split_[1]
