"""`rationales.engine: openai`: the teacher behind an OpenAI-compatible server (mlan.rationales.server).

Against a real `transformers serve` started here with the tiny language teacher: the records of a greedy run
equal the transformers engine's for the same rows; a server killed mid-run fails the run in one line, and the
run, started again against the restarted server, ends with the uninterrupted run's store. Against a small
standard-library stub: what a request carries (sampling, seed, stops, the key, an image row's picture),
retries of 429 / 503 counted per row and in the summary, and the one-line failures before any row is sent.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_rationales import SOURCES, _records, write_spec

LANGUAGE = [s for s, _, a, *_ in SOURCES if a not in ("vqav2", "aokvqa")]
N_LANGUAGE = sum(n for s, _, _, n, _ in SOURCES if s in LANGUAGE)
N_ALL = sum(n for *_, n, _ in SOURCES)
SECRET = "sk-test-do-not-print-0123456789"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go straight there, whatever proxy the machine sets."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def language_spec(tmp: Path, **rationales) -> Path:
    """write_spec's spec without its image sources: `transformers serve` runs the language teacher only."""
    path = write_spec(tmp, **rationales)
    spec = yaml.safe_load(path.read_text())
    spec["sources"] = [s for s in spec["sources"] if s["name"] in LANGUAGE]
    spec["rationales"]["exemplars"] = {k: v for k, v in spec["rationales"]["exemplars"].items() if k in LANGUAGE}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def openai(url: str, *more: str) -> list[str]:
    return ["-o", "rationales.engine=openai", "-o", f"rationales.base_url={url}", *more]


# --------------------------------------------------------------------------------------------------------------
# A real server: `transformers serve <folder>`, the folder being the model it serves (its name, too).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`transformers serve` on CPU in a process of its own, its output (uvicorn's request log) in `log`."""

    def __init__(self, folder: Path, port: int, log: Path):
        self.folder, self.port, self.log = folder, port, log
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "transformers serve did not answer in 120 s"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, path: str = "/v1/completions") -> int:
        """POST requests to `path` the server answered 200 (uvicorn's access log)."""
        return self.log.read_text(errors="replace").count(f'"POST {path} HTTP/1.1" 200')

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def teachers(tiny_llava_dir, tmp_path_factory) -> tuple[Path, Path]:
    """As tests/test_rationales.py's: the tiny LLaVA's language model, and the tiny LLaVA."""
    from mlan.models import save_language_model

    return save_language_model(tiny_llava_dir, tmp_path_factory.mktemp("teacher") / "lm"), tiny_llava_dir


@pytest.fixture(scope="module")
def served_lm(teachers) -> Path:
    """The tiny language teacher, which `transformers serve` loads as it is (mlan's language-model folder
    carries no LLaVA `processor_class`, for which the server's AutoProcessor would want an image processor)."""
    from transformers.utils.import_utils import is_serve_available

    assert is_serve_available(), "`transformers serve` needs the serving extra (in dev): ./scripts/setup.sh"
    assert "processor_class" not in json.loads((teachers[0] / "tokenizer_config.json").read_text())
    return teachers[0]


@pytest.fixture(scope="module")
def server(served_lm, tmp_path_factory):
    served = Served(served_lm, _free_port(), tmp_path_factory.mktemp("server") / "serve.log")
    yield served
    served.kill()


def _comparable(store: Path, fields=("prompt", "raw", "rationale", "status", "new_tokens", "prompt_tokens")):
    return {k: {f: r[f] for f in fields} for k, r in _records(store).items()}


@pytest.mark.slow
def test_greedy_server_run_equals_the_transformers_engine(cli, served_lm, server, tmp_path):
    """Greedy: the same rows, prompts, rationales and statuses as the transformers engine, through
    /v1/completions; the server counts the prompt tokens as mlan's tokenizer call does (BOS included)."""
    spec = language_spec(tmp_path / "server", temperature=0)
    before = server.requests()
    r = cli("rationales", spec, "--teacher", served_lm, *openai(server.url))
    assert r.exit_code == 0, r.output
    assert server.requests() - before == N_LANGUAGE  # every row went to the server, once
    records = _records(tmp_path / "server" / "store")
    assert len(records) == N_LANGUAGE and {k.split(":")[0] for k in records} == set(LANGUAGE)
    for rec in records.values():
        assert rec["engine"] == "openai" and rec["teacher"] == str(served_lm)
        assert rec["server"]["model"] == str(served_lm) and rec["server"]["retries"] == 0
        assert rec["server"]["prompt_tokens"] == rec["prompt_tokens"]  # the server's count is mlan's
        assert rec["settings"]["temperature"] == 0 and rec["new_tokens"] > 0

    local = language_spec(tmp_path / "transformers", temperature=0)
    r = cli("rationales", local, "--teacher", served_lm)
    assert r.exit_code == 0, r.output
    assert {rec["engine"] for rec in _records(tmp_path / "transformers" / "store").values()} == {"transformers"}
    assert _comparable(tmp_path / "server" / "store") == _comparable(tmp_path / "transformers" / "store")


@pytest.mark.slow
def test_a_killed_server_fails_the_run_in_one_line_and_the_run_resumes(
    cli, one_line_error, served_lm, server, tmp_path
):
    """SIGKILL the server after two records: the run retries, then stops in one line; the server started
    again, the run started again ends with an uninterrupted run's store, nothing twice, nothing lost."""
    flags = ["-o", "rationales.batch_size=1", "-o", "rationales.max_new_tokens=32", "-o", "rationales.max_retries=1",
             "-o", "rationales.concurrency=2"]  # fmt: skip
    ref = language_spec(tmp_path / "ref", temperature=0)
    r = cli("rationales", ref, "--teacher", served_lm, *openai(server.url, *flags))
    assert r.exit_code == 0, r.output

    spec = language_spec(tmp_path / "run", temperature=0)
    records = tmp_path / "run" / "store" / "records-0-of-1.jsonl"
    victim = Served(served_lm, _free_port(), tmp_path / "victim.log")
    killed = threading.Event()

    def kill_after_two_records() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and victim.proc.poll() is None:
            if records.is_file() and records.read_text().count("\n") >= 2:
                victim.kill()
                killed.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_after_two_records, daemon=True)
    watcher.start()
    try:
        r = cli("rationales", spec, "--teacher", served_lm, *openai(victim.url, *flags))
    finally:
        watcher.join(10)
        victim.kill()
    assert killed.is_set(), r.output
    msg = one_line_error(r, stdout_ok=True)
    assert f"{victim.url}/completions: request" in msg and "failed 2 time(s)" in msg and "run again" in msg, msg
    partial = records.read_text().count("\n")
    assert 2 <= partial < N_LANGUAGE, "the run finished before the server was killed"

    again = Served(served_lm, victim.port, tmp_path / "again.log")  # the same address: a restarted server
    try:
        r = cli("rationales", spec, "--teacher", served_lm, *openai(again.url, *flags))
    finally:
        again.kill()
    assert r.exit_code == 0, r.output
    assert f"{N_LANGUAGE - partial} rows generated, {partial} already in the store" in r.stdout
    assert again.requests() == N_LANGUAGE - partial  # only the rows the killed run had not recorded
    assert _comparable(tmp_path / "run" / "store") == _comparable(tmp_path / "ref" / "store")
    lines = records.read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) == N_LANGUAGE


def test_a_server_that_refuses_top_k_is_one_line(cli, one_line_error, served_lm, server, tmp_path):
    """Sampled rows carry top_k 50 (MLAN's teacher sampled with it); `transformers serve` refuses the field."""
    spec = language_spec(tmp_path)
    msg = one_line_error(cli("rationales", spec, "--teacher", served_lm, *openai(server.url)), stdout_ok=True)
    assert "the server refuses top_k" in msg and "rationales.temperature=0" in msg, msg
    assert not _records(tmp_path / "store")


# --------------------------------------------------------------------------------------------------------------
# A stub server (standard library): what mlan sends, retries, and failures a real local server cannot give.


class Stub(http.server.ThreadingHTTPServer):
    """Serves `models`; `mode`: ok, flaky (each request's first try answers 429 or 503), refuse (400), 401."""

    daemon_threads = True
    request_queue_size = 64  # mlan's 16 requests in flight connect at once: none may wait on a full backlog

    def __init__(self, models: list[str], mode: str = "ok"):
        self.models, self.mode = models, mode
        self.log: list[tuple[str, str, str | None, dict | None]] = []  # method, path, Authorization, body
        self.tries: Counter = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _StubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def posts(self) -> list[tuple[str, dict]]:
        return [(path, body) for method, path, _, body in self.log if method == "POST"]


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, *args) -> None:  # quiet: the stub keeps its own log
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        s = self.server
        with s.lock:
            s.log.append(("GET", self.path, self.headers.get("Authorization"), None))
        if s.mode == "401":
            return self._send(401, {"error": {"message": "Incorrect API key provided: sk-tes***789"}})
        if self.path != "/v1/models":
            return self._send(404, {"detail": "Not Found"})
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in s.models]})

    def do_POST(self) -> None:
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.log.append(("POST", self.path, self.headers.get("Authorization"), body))
            key = json.dumps(body, sort_keys=True)
            s.tries[key] += 1
            first, n = s.tries[key] == 1, len(s.tries)
        if s.mode == "refuse":
            return self._send(400, {"error": {"message": "This model's maximum context length is 4 tokens"}})
        if s.mode == "flaky" and first:
            return self._send(429 if n % 2 else 503, {"error": {"message": "busy, try again"}})
        # A server that does not stop at the stop texts: the teacher runs into the next example.
        text = " The question asks for it, and the context says so. " + max(body.get("stop", [""]), key=len)
        chat = self.path == "/v1/chat/completions"
        choice = {"index": 0, "finish_reason": "stop"} | (
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        )
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "chat.completion" if chat else "text_completion",
                "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            },
        )


@contextlib.contextmanager
def stub(models: list[str], mode: str = "ok"):
    s = Stub(models, mode)
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def _teach(cli, spec: Path, teachers, url: str, *more: str):
    lm, vlm = teachers
    return cli("rationales", spec, "--teacher", lm, "--vision-teacher", vlm, *openai(url, *more))


def test_requests_carry_the_rows_sampling_and_retries_are_counted(cli, monkeypatch, teachers, tmp_path):
    """Each row's request: its prompt (raw, to /completions), seed, stop texts, MLAN's sampling with top_k 50;
    image rows greedy through /chat/completions with the picture inline; the key as a bearer token and
    nowhere else. Every first try answered 429 or 503: each row retried once, counted per row and in all."""
    from PIL import Image

    from mlan.rationales import server as srv

    monkeypatch.setattr(srv, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("MLAN_TEST_KEY", SECRET)
    lm, vlm = map(str, teachers)
    spec = write_spec(tmp_path)
    with stub([lm, vlm, "another/model"], "flaky") as s:
        r = _teach(cli, spec, teachers, s.url, "-o", "rationales.api_key_env=MLAN_TEST_KEY")
    assert r.exit_code == 0, r.output
    assert "requests retried" in r.stdout and f"{N_ALL} rows generated" in r.stdout
    records = _records(tmp_path / "store")
    assert len(records) == N_ALL
    assert [(rec["engine"], rec["server"]["retries"]) for rec in records.values()] == [("openai", 1)] * N_ALL
    assert json.loads((tmp_path / "store" / "summary.json").read_text())["retries"] == N_ALL
    assert {auth for _, _, auth, _ in s.log} == {f"Bearer {SECRET}"}
    for f in (tmp_path / "store").iterdir():
        assert SECRET not in f.read_text(), f
    assert SECRET not in r.output

    posts = s.posts()
    assert len(posts) == 2 * N_ALL  # each row twice: the refused first try, then its answer
    by_prompt = {}  # each request by the prompt it carries (an image row's: its text parts around <image>)
    for path, body in posts:
        if path == "/v1/completions":
            by_prompt[body["prompt"]] = body
        else:
            assert path == "/v1/chat/completions", path
            (message,) = body["messages"]
            by_prompt["".join(p.get("text", "<image>") for p in message["content"])] = body
    for rec in records.values():
        vision = rec["modality"] == "vision"
        body = by_prompt[rec["prompt"]]
        assert body["model"] == (vlm if vision else lm) and body["seed"] == rec["settings"]["seed"]
        assert body["max_tokens"] == rec["settings"]["max_new_tokens"]
        assert "</s>" in body["stop"] and any(x.startswith("You are a helpful agent") for x in body["stop"])
        if vision:  # MLAN's vision teacher decoded greedily: no top_k; the picture where the prompt has <image>
            assert body["temperature"] == 0 and "top_k" not in body
            parts = body["messages"][0]["content"]
            assert [p["type"] for p in parts] == ["text", "image_url", "text"]
            assert parts[0]["text"] + "<image>" + parts[2]["text"] == rec["prompt"]
            url = parts[1]["image_url"]["url"]
            assert url.startswith("data:image/")
            Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
        else:
            assert (body["temperature"], body["top_p"], body["top_k"]) == (0.15, 0.7, 50)
        # The stub's text runs into the next example's instruction: cut there, ended on its own.
        assert rec["rationale"] == "The question asks for it, and the context says so." and rec["status"] == "kept"


@pytest.mark.parametrize("case", ["unreachable", "wrong_model", "refused_key", "key_unset", "no_base_url"])
def test_server_failures_before_any_row_are_one_line(cli, one_line_error, monkeypatch, teachers, tmp_path, case):
    lm, vlm = map(str, teachers)
    spec = write_spec(tmp_path)
    monkeypatch.setenv("MLAN_TEST_KEY", SECRET)
    monkeypatch.delenv("MLAN_UNSET_KEY", raising=False)
    mode = "401" if case == "refused_key" else "ok"
    with stub([lm] if case == "wrong_model" else [lm, vlm], mode) as s:
        url = s.url
        if case == "unreachable":
            url = f"http://127.0.0.1:{_free_port()}/v1"
            want = f"cannot reach {url}/models (connection refused)"
            r = _teach(cli, spec, teachers, url)
        elif case == "wrong_model":
            want = f"rationales.vision_teacher {vlm}: not served at {url} (it serves {lm})"
            r = _teach(cli, spec, teachers, url)
        elif case == "refused_key":
            want = f"the server at {url} refused the key in $MLAN_TEST_KEY (HTTP 401)"
            r = _teach(cli, spec, teachers, url, "-o", "rationales.api_key_env=MLAN_TEST_KEY")
        elif case == "key_unset":
            want = "rationales.api_key_env: $MLAN_UNSET_KEY is not set"
            r = _teach(cli, spec, teachers, url, "-o", "rationales.api_key_env=MLAN_UNSET_KEY")
        else:
            want = "rationales.engine openai: set rationales.base_url"
            r = cli("rationales", spec, "--teacher", lm, "--vision-teacher", vlm, "-o", "rationales.engine=openai")
    msg = one_line_error(r, stdout_ok=True)
    assert want in msg, msg
    assert SECRET not in r.output
    assert not s.posts() and not _records(tmp_path / "store")  # no row was sent, none recorded


def test_a_refused_request_is_one_line_naming_it(cli, one_line_error, teachers, tmp_path):
    """A 400 is not retried: one line with the request and the server's own message."""
    spec = write_spec(tmp_path)
    with stub([str(t) for t in teachers], "refuse") as s:
        msg = one_line_error(_teach(cli, spec, teachers, s.url, "-o", "rationales.concurrency=1"), stdout_ok=True)
    assert f"{s.url}/completions: the server refused request 1 of {N_LANGUAGE}" in msg, msg
    assert "(HTTP 400: This model's maximum context length is 4 tokens)" in msg, msg
    assert len(s.posts()) == 1
