"""What Wings' textual learner leaves out: the system prompt, i.e. everything the chat template writes
before the first user message's content.

Wings' code removes a fixed number of leading tokens from the textual learner's keys and values
(`system_prompt_length`, AIDC-AI/Wings@5dec325:wings/model/modeling_wings_llama.py:508-524; 14 for
Qwen1.5 and 17 for Llama 3.1 in run/finetune_wings_*.sh:46; its conversation formatter writes the
system turn and the user-turn header there, wings/model/conversation_formatter.py:54-80). mlan
finds the same prefix from the chat template the model trains with, and removes it only from rows
that start with it (after padding and BOS), so rows rendered another way (a stage-1 `plain` row, a
text-only lm-eval prompt) keep all their text: a fixed count would cut real content there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# First-message contents whose renderings can only share what the template writes before the content:
# they start with different characters, and one starts with an image.
_PROBES = (
    [{"type": "text", "text": "a"}],
    [{"type": "text", "text": "Z"}],
    [{"type": "text", "text": "1"}],
    [{"type": "text", "text": "?"}],
    [{"type": "image"}, {"type": "text", "text": "a"}],
)


def system_prompt_ids(processor, chat_template: str | None = None) -> list[int]:
    """The token ids the chat template writes before the first user message's content (BOS left out),
    tokenized as training tokenizes a rendered row (no special tokens added); [] for a template that
    writes nothing there but BOS."""
    tokenizer = getattr(processor, "tokenizer", processor)
    rendered = []
    for content in _PROBES:
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=chat_template, tokenize=False
        )
        rendered.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    common = []
    for column in zip(*rendered, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    bos = tokenizer.bos_token_id
    while common and common[0] == bos:
        common.pop(0)
    return common


def system_prefix_mask(
    ids: torch.Tensor, valid: torch.Tensor, system: tuple[int, ...], bos: int | None
) -> torch.Tensor:
    """(B, L) True at each row's leading BOS tokens and system prompt, in rows whose first tokens after
    padding and BOS are exactly `system`; all False in other rows."""
    import torch

    b, n = ids.shape
    body = valid & (ids != bos) if bos is not None else valid
    # Index of the first token that is neither padding nor BOS (n when there is none).
    start = torch.where(body.any(1), body.int().argmax(1), torch.full((b,), n, device=ids.device))
    m = len(system)
    slots = torch.arange(n, device=ids.device)
    match = start + m <= n
    if m:
        window = (start[:, None] + torch.arange(m, device=ids.device)[None]).clamp(max=n - 1)
        want = torch.tensor(system, dtype=ids.dtype, device=ids.device)
        match &= (ids.gather(1, window) == want[None]).all(1)
    return valid & match[:, None] & (slots[None] < (start + m)[:, None])
