"""mlan.generation: continuous batching with shared prefixes gives what transformers' `generate` gives one row
at a time (greedy, and sampled under the same seed), whatever the batch size, the prefix or the rows beside."""

from __future__ import annotations

import pytest
import torch
import yaml

from mlan.generation import Request, generate

SHOT = "Question: which gas do plants take in? Answer: carbon dioxide. Rationale: photosynthesis uses it.\n"
QUESTIONS = [
    "Question: what is two plus two? Answer:",
    "Question: which planet is red? Answer:",
    "Question: name a primary colour. Answer:",
    "Question: how many legs has a spider? A spider, an arachnid, has legs numbering? Answer:",
    "Question: what melts ice? Answer:",
]


@pytest.fixture(scope="module")
def lm(tiny_llava_dir, tmp_path_factory):
    """The tiny LLaVA's language model (a Llama) in float32, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlan.models import save_language_model

    folder = save_language_model(tiny_llava_dir, tmp_path_factory.mktemp("lm") / "lm")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder), folder


def _prompts(tok) -> list[tuple[int, ...]]:
    # Two exemplars, so rows share two different prefixes and one row shares none.
    out = [tuple(tok(SHOT * k + q)["input_ids"]) for k in (1, 2) for q in QUESTIONS]
    return [*out, tuple(tok("Alone: " + QUESTIONS[0])["input_ids"])]


def _prefix(tok, ids: tuple[int, ...], k: int) -> int:
    shared = tok(SHOT * k)["input_ids"]
    n = 0
    while n < min(len(shared), len(ids)) and shared[n] == ids[n]:
        n += 1
    return n


def _reference(model, ids, n: int, **sampling) -> list[int]:
    """transformers' `generate` on one prompt alone (the global random state seeded, for sampled rows)."""
    if "seed" in sampling:
        torch.manual_seed(sampling.pop("seed"))
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **sampling)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_equals_generate_one_row_at_a_time(lm, batch_size):
    model, tok, _ = lm
    prompts = _prompts(tok)
    n = 12
    want = [_reference(model, ids, n, do_sample=False) for ids in prompts]
    # Budgets differ, so rows leave the batch at different steps and later rows join mid-run.
    budgets = [n - (i % 4) * 3 for i in range(len(prompts))]
    requests = [
        Request(ids, budgets[i], prefix=_prefix(tok, ids, 1 + (i >= 5)) if i < 10 else 0)
        for i, ids in enumerate(prompts)
    ]
    assert all(r.prefix > 10 for r in requests[:10])  # the shared start is really shared
    got = dict(generate(model, tok, requests, batch_size=batch_size, eos_ids=set()))
    assert sorted(got) == list(range(len(prompts)))
    for i, out in got.items():
        assert out.ids == want[i][: budgets[i]], i
        assert not out.finished  # ended on its budget


def test_sampled_rows_draw_as_generate_does_under_their_seed(lm):
    """Each row samples from its own generator: the draws of `generate` alone under `torch.manual_seed(seed)`
    (temperature, top-k, top-p in transformers' order), however the rows are batched or ordered."""
    model, tok, _ = lm
    prompts = _prompts(tok)[:6]
    n = 10
    sampling = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
    want = [_reference(model, ids, n, do_sample=True, seed=100 + i, **sampling) for i, ids in enumerate(prompts)]
    requests = [
        Request(ids, n, seed=100 + i, prefix=_prefix(tok, ids, 1 + (i >= 5)), **sampling)
        for i, ids in enumerate(prompts)
    ]
    together = dict(generate(model, tok, requests, batch_size=6, eos_ids=set()))
    reversed_ = dict(generate(model, tok, requests[::-1], batch_size=4, eos_ids=set()))
    assert [together[i].ids for i in range(6)] == want
    assert [reversed_[5 - i].ids for i in range(6)] == want
    assert len({tuple(w) for w in want}) > 1  # the seeds matter


def test_rows_end_on_eos_and_on_a_stop_text(lm):
    model, tok, _ = lm
    ids = _prompts(tok)[0]
    free = _reference(model, ids, 8, do_sample=False)
    # EOS: the row's third token counted as an end of sequence.
    ((_, out),) = generate(model, tok, [Request(ids, 8)], eos_ids={free[2]})
    assert out.ids == free[: free.index(free[2]) + 1] and out.finished
    # A stop text: the decoded text of the first three new tokens; the row ends on the token completing it.
    stop = tok.decode(free[:3], skip_special_tokens=True).strip()
    assert stop
    ((_, out),) = generate(model, tok, [Request(ids, 8, stop=(stop,))], eos_ids=set())
    assert out.finished and stop in tok.decode(out.ids) and stop not in tok.decode(out.ids[:-1])
    assert out.ids == free[: len(out.ids)]


def test_rationales_continuous_batch_records_equal_one_row_at_a_time(lm, tmp_path):
    """`mlan rationales`' transformers engine, greedy: a store written 8 rows at a time holds, row for row, what
    one row at a time writes (prompts, raw outputs, rationales, statuses, token counts)."""
    from test_rationales import write_spec

    from mlan.config.mixture import MixtureSpec
    from mlan.rationales import generate_rationales

    *_, folder = lm
    stores = {}
    for bs in (1, 8):
        raw = yaml.safe_load(
            write_spec(tmp_path / f"bs{bs}", batch_size=bs, temperature=0, max_new_tokens=12).read_text()
        )
        raw["sources"] = [s for s in raw["sources"] if "image_root" not in s]  # the language rows
        names = {s["name"] for s in raw["sources"]}
        r = raw["rationales"]
        r["exemplars"] = {k: v for k, v in r["exemplars"].items() if k in names}
        r["teacher"] = str(folder)
        stores[bs] = generate_rationales(MixtureSpec.model_validate(raw)).store
    from mlan.rationales.store import read_records

    def comparable(store):
        return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in read_records(store).items()}

    one, eight = comparable(stores[1]), comparable(stores[8])
    assert len(one) >= 10 and one == eight
    assert {r["engine"] for r in one.values()} == {"transformers"}
