"""MLAN's teacher prompts, copied from the authors' code so that tests compare mlan's prompts
(mlan.rationales.prompts) with an oracle that does not come from mlan.

Language rows: ToviTu/IT_MLLM, commit af440a6d6136b770e850cf6be577648988058710:
- `src/prompt_template.py` L15-16 (`llm_qa`, `llm_cqa`);
- `src/evaluate_util.py`: the `format_input_with_cot_prompt` methods of SQuAD (L21-41), StrategyQA
  (L127-148), CommonsenseQA (L312-332), CosmosQA (L374-398) and ARC (L445-469), and the raw-file readers of
  CommonsenseQA (L297-306), CosmosQA (L358-371) and ARC (L425-441), here fed the Hugging Face rows that hold
  the same fields;
- the instruction of `inference_yi_*_cot.py` L20.
The methods are as written there but for `cot_prompts[np.random.choice(len(cot_prompts))]`, which becomes
the exemplar the test picks (`pick`).

Image rows: the same repository at db5622b41f25d3468bc0a76631ef8c68cc2145ed,
`scripts/anno/custom/vqav2/utils.py` L55-77 (`vqav2_doc_to_text`) and `scripts/anno/custom/okvqa/utils.py`
L31-64 (`doc_to_text`), with `random.choice(rationale)` given as `ex` and the pre_prompt of
`okvqa_train.yaml` L25 / `_default_template_vqav2_yaml` L17. Nothing here imports mlan.
"""

from __future__ import annotations

# inference_yi_squad_cot.py L20 (the same line in all five scripts)
instruction = """You are a helpful agent in answering questions. You will be provided with a context, a question, and its answer,  and your job is to supply a detailed step-by-step explanation. You need to first paraphrase the problem, state the relevant premise according to the context, deduct facts one at a step, and finally give the reason why the answer is correct. If you disagree, please reply with "I disagree". """
# okvqa_train.yaml L25 / _default_template_vqav2_yaml L17 (pre_prompt); post_prompt is "".
pre_prompt = 'You are a helpful agent in answering questions. You will be provided with a context, a question, and its answer, and your job is to supply a detailed step-by-step explanation. You need to first paraphrase the problem, state the relevant premise according to the context, deduct facts one at a step, and finally give the reason why the answer is correct. If you disagree, please reply with "I disagree".'
post_prompt = ""

llm_qa = lambda q, a: f"Question: {q}\nAnswer: {a}"  # noqa: E731
llm_cqa = lambda c, q, a: f"Context: {c}\nQuestion: {q}\nAnswer: {a}"  # noqa: E731


def squad(eos_token, instruction, cot_example, cqa_template, cqa):
    # evaluate_util.py L21-41
    formatted_input = instruction + "\n"
    cot_template = cqa_template(cot_example["Context"], cot_example["Question"], cot_example["Answer"])
    formatted_input += cot_template + "\n"
    formatted_input += "Rationale: " + cot_example["Rationale"] + eos_token
    inputs = cqa_template(cqa["context"], cqa["question"], cqa["answers"]["text"][0])
    formatted_input += instruction + "\n" + inputs + "\n"
    formatted_input += "Rationale:"
    return formatted_input


def strategyqa(eos_token, instruction, cot_example, cqa_template, cqa):
    # evaluate_util.py L127-148
    formatted_input = instruction + "\n"
    cot_template = cqa_template(cot_example["facts"], cot_example["question"], cot_example["answer"])
    formatted_input += cot_template + "\n"
    formatted_input += "Rationale: " + cot_example["rationale"] + eos_token
    facts = " ".join(cqa["facts"])
    inputs = cqa_template(facts, cqa["question"], cqa["answer"])
    formatted_input += instruction + "\n" + inputs + "\n"
    formatted_input += "Rationale:"
    return formatted_input


def commonsense_qa_entry(entry):
    # evaluate_util.py L297-306, on the hub row (`question` is the file's question.stem, `choices` its choices)
    fchoices = ""
    for label, text in zip(entry["choices"]["label"], entry["choices"]["text"], strict=True):
        fchoices += label + " " + text + "\n"
    return {"id": entry["id"], "context": fchoices, "question": entry["question"], "answer": entry["answerKey"]}


def commonsense_qa(eos_token, instruction, cot_example, cqa_template, cqa):
    # evaluate_util.py L312-332
    formatted_input = instruction + "\n"
    cot_template = cqa_template(cot_example["Context"], cot_example["Question"], cot_example["Answer"])
    formatted_input += cot_template + "\n"
    formatted_input += "Rationale: " + cot_example["Rationale"] + eos_token
    inputs = cqa_template(cqa["context"], cqa["question"], cqa["answer"])
    formatted_input += instruction + "\n" + inputs + "\n"
    formatted_input += "Rationale:"
    return formatted_input


def cosmos_qa_entry(line):
    # evaluate_util.py L358-371, with the CSV's columns (id, context, question, answer0-3, label) by name
    choices = f"A {line['answer0']}\n B {line['answer1']}\n C {line['answer2']}\n D {line['answer3']}\n"
    mapping = {"0": "A", "1": "B", "2": "C", "3": "D"}
    answer = mapping[str(line["label"])]
    return {
        "id": line["id"],
        "context": line["context"],
        "question": line["question"],
        "choices": choices,
        "answer": answer,
    }


def cosmos_qa(eos_token, instruction, cot_example, cqa_template, cqa):
    # evaluate_util.py L374-398
    formatted_input = instruction + "\n"
    cot_template = cqa_template(cot_example["Context"], cot_example["Question"], cot_example["Answer"])
    formatted_input += cot_template + "\n"
    formatted_input += "Rationale: " + cot_example["Rationale"] + eos_token
    question_instruction = "Choose the most appropriate answer from below:\n"
    question = cqa["question"] + question_instruction + cqa["choices"]
    inputs = cqa_template(cqa["context"], question, cqa["answer"])
    formatted_input += instruction + "\n" + inputs + "\n"
    formatted_input += "Rationale:"
    return formatted_input


def arc_entry(entry):
    # evaluate_util.py L425-441, on the hub row
    choices = [
        label + " " + text for label, text in zip(entry["choices"]["label"], entry["choices"]["text"], strict=True)
    ]
    return {
        "id": entry["id"],
        "question": entry["question"],
        "choices": "\n".join(choices),
        "answer": entry["answerKey"],
    }


def arc(eos_token, instruction, cot_example, qa_template, cqa):
    # evaluate_util.py L445-469
    formatted_input = instruction + "\n"
    cot_template = qa_template(cot_example["Question"], cot_example["Answer"])
    formatted_input += cot_template + "\n"
    formatted_input += "Rationale: " + cot_example["Rationale"] + eos_token
    question_instruction = "Choose the most appropriate answer from below:\n"
    question = cqa["question"] + question_instruction + cqa["choices"]
    inputs = qa_template(question, cqa["answer"])
    formatted_input += instruction + "\n" + inputs + "\n"
    formatted_input += "Rationale:"
    return formatted_input


def vqav2_doc_to_text(doc, CoT_example):
    # vqav2/utils.py L74-76
    cot_prompt = f"{pre_prompt} Question: {CoT_example['question']}Answer: {CoT_example['answer']}{post_prompt} Rationale: {CoT_example['rationale']}</s>"
    prompt = f"{pre_prompt} <image>\nQuestion: {doc['question']}Answer: {doc['multiple_choice_answer']}{post_prompt} Rationale:"
    return cot_prompt + prompt


def aokvqa_doc_to_text(doc, CoT_example):
    # okvqa/utils.py L39-44, L61-63
    choices = doc["choices"]
    choices_formatted = "Choose the best option from the following:\n" + "\n".join(choices)
    answer_labels = ["A", "B", "C", "D"]
    answer = answer_labels[int(doc["correct_choice_idx"])]
    cot_prompt = f"{pre_prompt} Question: {CoT_example['question']} Answer: {CoT_example['answer']}{post_prompt} Rationale: {CoT_example['rationale']}</s>"
    prompt = f"{pre_prompt} <image>\nQuestion: {doc['question']} {choices_formatted} Answer: {answer}{post_prompt} Rationale:"
    return cot_prompt + prompt


def teacher_prompt(adapter: str, row: dict, ex: dict, eos: str) -> str:
    """The prompt MLAN's code builds for one hub-schema row, exemplar and EOS text."""
    if adapter == "squad":
        return squad(eos, instruction, ex, llm_cqa, row)
    if adapter == "strategyqa":
        return strategyqa(eos, instruction, ex, llm_cqa, row)
    if adapter == "commonsense_qa":
        return commonsense_qa(eos, instruction, ex, llm_cqa, commonsense_qa_entry(row))
    if adapter == "cosmos_qa":
        return cosmos_qa(eos, instruction, ex, llm_cqa, cosmos_qa_entry(row))
    if adapter == "arc":
        return arc(eos, instruction, ex, llm_qa, arc_entry(row))
    if adapter == "vqav2":
        return vqav2_doc_to_text(row, ex)
    if adapter == "aokvqa":
        return aokvqa_doc_to_text(row, ex)
    raise KeyError(adapter)
