"""Where the command line writes: results (tables, paths written) on stdout, log lines and progress
bars on stderr, so `mlan eval ... > out.txt` keeps the results in the file and the log out of it."""

from __future__ import annotations

import re

# A log line as mlan's rich handler writes it: the level, then the message.
LOG_LINE = re.compile(r"^\s*(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s", re.MULTILINE)


def test_eval_results_on_stdout_log_on_stderr(cli, tiny_llava_dir, tmp_path):
    """`mlan eval` (the bundled quickstart suite, one task, two items): the results table and the
    results path on stdout, no log line there; mlan's log lines on stderr."""
    out = tmp_path / "eval"
    args = ("eval", tiny_llava_dir, "--suite", "quickstart", "--tasks", "boolq", "--limit", "2")
    r = cli(*args, "-o", "max_new_tokens=2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "| quickstart | boolq" in r.stdout, r.stdout  # the table
    assert f"results: {out}" in r.stdout.replace("\n", "")
    assert not LOG_LINE.search(r.stdout), r.stdout
    assert "INFO" not in r.stdout
    assert LOG_LINE.search(r.stderr), r.stderr  # e.g. loading the model, scoring the task
    assert "| quickstart |" not in r.stderr


def test_tiny_model_says_its_result_once(cli, tmp_path):
    r = cli("tiny-model", tmp_path / "tiny")
    assert r.exit_code == 0, r.output
    assert r.output.count("written to") == 1, r.output
    assert re.search(r"tiny LLaVA \(tiny, [\d,]+ parameters\) written to", r.stdout.replace("\n", " ")), r.stdout
    assert not LOG_LINE.search(r.stdout), r.stdout


def test_tiny_model_parameters_match_the_model(tmp_path):
    """The count printed is read from the safetensors headers; it is the model's own."""
    import transformers

    from mlan.cli.tiny import _parameters
    from mlan.tiny import save_tiny_llava

    path = save_tiny_llava(tmp_path / "tiny")
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    assert _parameters(path) == sum(p.numel() for p in model.parameters())


def test_build_mixture_table_without_per_source_log_lines(cli, tmp_path):
    """`mlan build-mixture quickstart`: the summary table (each source's rows) on stdout; the
    library's per-source lines ("squad: N rows (...) in X s") appear nowhere, the table says it."""
    import json

    r = cli("build-mixture", "quickstart", "--out", tmp_path / "mix", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "mixture quickstart" in r.stdout and "train" in r.stdout and "validation" in r.stdout, r.stdout
    sources = json.loads((tmp_path / "mix" / "manifest.json").read_text())["sources"]
    for name, s in sources.items():  # each source's row: its name, train and validation rows
        assert re.search(rf"{re.escape(name)}\b.*\b{s['train']}\b.*\b{s['validation']}\b", r.stdout), r.stdout
    assert re.search(r"built in [\d.]+ s, content hash", r.stdout), r.stdout
    assert " rows (" not in r.output, r.output
    assert not LOG_LINE.search(r.stdout), r.stdout
    # The logger is back at its level after the build (-v and later commands see the lines again).
    import logging

    assert logging.getLogger("mlan.data.fill").level == logging.NOTSET
