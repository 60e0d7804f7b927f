"""A teacher behind an OpenAI-compatible server (`rationales.engine: openai`): vllm serve, SGLang, TGI,
llama.cpp's server, `transformers serve`, or a hosted model.

MLAN's prompts are raw text without a chat template (mlan.rationales.prompts), so they go to `/completions`
as they are; `endpoint: chat` sends each as one user message to `/chat/completions` (hosted chat-only
models; the server's chat template then wraps it) and image rows always go that way, their picture a base64
data URL in OpenAI's vision format. Per request: the row's own seed, its stop texts, temperature and top_p,
and top_k 50 when sampled (mlan.rationales.teacher.TOP_K; not an OpenAI field, but vLLM, SGLang and
llama.cpp take it; a server that refuses it is reported in one line).

`concurrency` requests are in flight at once (the server batches them continuously); each answer is yielded
as it comes. A timeout, a dropped connection, 408, 429 or 5xx is retried with exponential backoff and jitter
up to `max_retries` times, counted per request (recorded per row, summed in the summary); anything else is
one line naming the request and the server's message. The API key is read from the variable `api_key_env`
names and sent as a bearer token only: never logged, stored or quoted in an error.

The HTTP client is the standard library's (urllib, one thread per request in flight): requests are seconds
long, so a connection per request costs nothing that matters, and mlan needs no HTTP package for it.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import queue
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlan.errors import MlanError, first_line
from mlan.rationales.teacher import TOP_K, Ask, Generation

log = logging.getLogger(__name__)

# finish_reason values that mean the model ended on its own: OpenAI's, vLLM's, SGLang's, llama.cpp's and
# transformers serve's "stop" (EOS or a stop text); TGI's native names. "length" (and "content_filter")
# is a cut-off rationale.
_FINISHED = frozenset({"stop", "eos_token", "stop_sequence", "eos"})
# Worth retrying: the server is busy (429, 503), restarting or behind a proxy that gave up (502, 504), or
# hit a transient fault (500, 408). Any other status will not change by asking again.
_RETRIED = frozenset({408, 429}) | frozenset(range(500, 600))
# Backoff: BACKOFF_SECONDS * 2**retry plus up to a quarter of that (so the retries of many requests that
# failed together spread out), at most BACKOFF_MAX_SECONDS; a server's Retry-After is honoured up to that.
BACKOFF_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# The model list answers at once on any live server; a longer wait means nothing is there.
_CHECK_TIMEOUT = 30.0
# Prompt tokens estimated without the teacher's tokenizer: about four characters a token for English.
_CHARS_PER_TOKEN = 4


def api_root(settings) -> str:
    """`rationales.base_url` without a trailing slash (one line if it is missing or not an http URL)."""
    url = settings.base_url
    if not url:
        raise MlanError(
            "rationales.engine openai: set rationales.base_url to the server's OpenAI API root "
            "(e.g. -o rationales.base_url=http://gpu-node:8000/v1)"
        )
    if not url.startswith(("http://", "https://")):
        raise MlanError(f"rationales.base_url {url}: expected an http:// or https:// URL, e.g. http://gpu-node:8000/v1")
    return url.rstrip("/")


def api_key(settings) -> str | None:
    """The key from the variable `rationales.api_key_env` names (None when no variable is named)."""
    var = settings.api_key_env
    if not var:
        return None
    key = os.environ.get(var, "").strip()
    if not key:
        raise MlanError(
            f"rationales.api_key_env: ${var} is not set (export the server's API key in it, or leave "
            "api_key_env out for a server without one)"
        )
    return key


def check_server(settings, models: list[str]) -> None:
    """Before any row is drawn or sent: the server answers at `base_url`, takes the key, and serves every
    teacher in `models` by that name (GET /models). One line otherwise."""
    root = api_root(settings)
    key = api_key(settings)
    url = f"{root}/models"
    try:
        status, raw, _ = _http("GET", url, None, key, min(settings.request_timeout, _CHECK_TIMEOUT))
    except (OSError, http.client.HTTPException) as e:
        raise MlanError(f"rationales.base_url: cannot reach {url} ({_network_reason(e)}): is the server up?") from None
    if status in (401, 403):
        raise MlanError(_refused_key(root, status, settings.api_key_env))
    if status == 404:
        raise MlanError(
            f"rationales.base_url: {url} not found (HTTP 404): base_url is the API root, "
            "usually ending in /v1 (e.g. http://gpu-node:8000/v1)"
        )
    if status != 200:
        raise MlanError(f"rationales.base_url: {url} answered HTTP {status} ({_message(raw, key)})")
    try:
        served = [m["id"] for m in json.loads(raw)["data"]]
    except (ValueError, KeyError, TypeError):
        raise MlanError(f"rationales.base_url: {url} did not answer an OpenAI model list") from None
    fields = {settings.teacher: "rationales.teacher", settings.vision_teacher: "rationales.vision_teacher"}
    for name in dict.fromkeys(models):
        if name not in served:
            listed = ", ".join(served[:5]) + (f" and {len(served) - 5} more" if len(served) > 5 else "")
            raise MlanError(
                f"{fields.get(name, 'teacher')} {name}: not served at {root} "
                f"({'it serves ' + listed if served else 'it lists no model'}): name the teacher as the server "
                "does, or serve it under that name (vllm serve ... --served-model-name NAME)"
            )
    log.info("%s serves %s", root, ", ".join(dict.fromkeys(models)))


class ServerTeacher:
    """A teacher that a server runs: `stream` keeps `concurrency` requests in flight and yields each answer
    as it comes. The teacher's tokenizer, where it can be loaded here (a local folder, a hub id), gives the
    EOS text MLAN's prompt shows between exemplar and row and the prompt tokens; without it (a hosted model)
    the prompts go without the EOS text and prompt tokens are estimated (the records' `server.prompt_tokens`
    hold the server's count either way)."""

    engine = "openai"

    def __init__(self, ref: str, *, vision: bool, settings):
        self.name = ref
        self.vision = vision
        self.root = api_root(settings)
        self.key = api_key(settings)
        self.key_env = settings.api_key_env
        # Images travel only in chat messages: /completions takes text.
        self.endpoint = "chat" if vision else settings.endpoint
        self.concurrency = settings.concurrency
        self.timeout = settings.request_timeout
        self.max_retries = settings.max_retries
        self.tokenizer = _tokenizer(ref)
        self.eos_token = (self.tokenizer.eos_token or "") if self.tokenizer is not None else ""
        if self.tokenizer is None:
            log.warning(
                "%s: no tokenizer of that name here or on the hub: its prompts go without the EOS text MLAN's "
                "prompt has after the exemplar, and prompt tokens are estimated (the server's count is recorded)",
                ref,
            )
        self._rng = random.Random()  # jitter only: mlan's seeded draws stay untouched

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens per prompt by the teacher's tokenizer (as the transformers engine counts them: text only,
        its special tokens included), else estimated at four characters a token."""
        if self.tokenizer is not None:
            return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        return [max(1, round(len(p) / _CHARS_PER_TOKEN)) for p in prompts]

    def stream(self, asks: list[Ask], batch_size: int) -> Iterator[tuple[int, Generation]]:
        """Every ask, `concurrency` in flight (mlan's `batch_size` does not apply: the server batches), each
        answer as it comes. On a request that fails for good, no new request starts, the ones in flight are
        awaited and yielded, then the failure is raised: nothing the server already answered is lost."""
        if not asks:
            return
        log.info(
            "asking %s at %s/%s: %d requests, %d in flight",
            self.name,
            self.root,
            _PATHS[self.endpoint],
            len(asks),
            min(self.concurrency, len(asks)),
        )
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(asks)):
            todo.put(i)
        done: queue.Queue[tuple[int, Generation | None, BaseException | None]] = queue.Queue()
        stop = threading.Event()
        workers = min(self.concurrency, len(asks))

        def work() -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    done.put((i, self._ask(i, asks[i], len(asks)), None))
                except BaseException as e:  # handed to the caller's thread, which raises it
                    stop.set()  # at once: no worker starts another request
                    done.put((i, None, e))
            done.put((-1, None, None))  # this worker has ended

        # Daemon threads: a Ctrl-C (or a failure) does not wait for answers still on their way.
        for _ in range(workers):
            threading.Thread(target=work, daemon=True, name="mlan-teacher-request").start()
        failure: BaseException | None = None
        try:
            while workers:
                i, gen, err = done.get()
                if i < 0:
                    workers -= 1
                elif err is not None:
                    stop.set()
                    failure = failure or err
                else:
                    yield i, gen  # type: ignore[misc]
        finally:
            stop.set()
        if failure is not None:
            raise failure

    def _body(self, ask: Ask) -> dict[str, Any]:
        s = ask.sampling
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": 1.0 if s.greedy else s.top_p,
            "seed": ask.seed,
        }
        if not s.greedy:  # greedy needs no top_k, and a server that refuses the field can then still serve it
            body["top_k"] = TOP_K
        if ask.stop:
            body["stop"] = list(ask.stop)
        if self.endpoint == "completions":
            body["prompt"] = ask.prompt
        else:
            body["messages"] = [{"role": "user", "content": _content(ask) if ask.image else ask.prompt}]
        return body

    def _ask(self, index: int, ask: Ask, total: int) -> Generation:
        """One request, retried on timeouts, dropped connections, 408, 429 and 5xx."""
        url = f"{self.root}/{_PATHS[self.endpoint]}"
        data = self._body(ask)
        what = f"request {index + 1} of {total}"
        retries = 0
        while True:
            retry_after = None
            try:
                status, raw, headers = _http("POST", url, data, self.key, self.timeout)
            except (OSError, http.client.HTTPException) as e:
                reason = _network_reason(e, self.timeout)
            else:
                if status == 200:
                    return self._generation(raw, url, what, retries)
                if status in (401, 403):
                    raise MlanError(_refused_key(self.root, status, self.key_env))
                if status not in _RETRIED:
                    raise MlanError(self._refused(url, what, status, _message(raw, self.key)))
                reason = f"HTTP {status}"
                retry_after = _seconds(headers.get("Retry-After"))
            if retries >= self.max_retries:
                raise MlanError(
                    f"{url}: {what} failed {retries + 1} time(s), last: {reason} (rationales.max_retries "
                    f"{self.max_retries}); the answers so far are in the store: run again to go on"
                )
            delay = min(BACKOFF_SECONDS * 2**retries, BACKOFF_MAX_SECONDS)
            delay = max(delay * (1 + 0.25 * self._rng.random()), min(retry_after or 0.0, BACKOFF_MAX_SECONDS))
            retries += 1
            log.debug("%s: %s, retry %d in %.1f s", what, reason, retries, delay)
            time.sleep(delay)

    def _refused(self, url: str, what: str, status: int, message: str) -> str:
        if "top_k" in message and status in (400, 422):
            return (
                f"{url}: the server refuses top_k, which mlan sends with sampled rows to sample as MLAN's "
                f"teacher did (top_k {TOP_K}; HTTP {status}: {message}): serve the teacher with vLLM, SGLang or "
                "llama.cpp, or decode greedily (-o rationales.temperature=0)"
            )
        if status == 404:
            hint = " (a chat-only model: -o rationales.endpoint=chat)" if self.endpoint == "completions" else ""
            return f"{url}: not found (HTTP 404: {message}){hint}"
        return f"{url}: the server refused {what} (HTTP {status}: {message})"

    def _generation(self, raw: bytes, url: str, what: str, retries: int) -> Generation:
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = choice["text"] if self.endpoint == "completions" else choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise MlanError(f"{url}: {what} got an answer that is not an OpenAI completion") from None
        text = text or ""  # a chat answer without content (a refusal) is an empty rationale
        usage = payload.get("usage") or {}
        new_tokens = usage.get("completion_tokens")
        if new_tokens is None:  # a server that reports no usage: counted here as the prompts are
            new_tokens = self.prompt_tokens([text])[0] if text else 0
        return Generation(
            text,
            int(new_tokens),
            choice.get("finish_reason") in _FINISHED,
            model=payload.get("model") or self.name,
            prompt_tokens=usage.get("prompt_tokens"),
            retries=retries,
            endpoint=self.endpoint,
        )


_PATHS = {"completions": "completions", "chat": "chat/completions"}


def _content(ask: Ask) -> list[dict[str, Any]]:
    """An image row's message in OpenAI's vision format: the prompt's text with the picture, as a data URL,
    where the prompt has its `<image>` (first where it has none)."""
    from PIL import Image

    assert ask.image is not None
    data = Path(ask.image).read_bytes()
    with Image.open(ask.image) as im:
        mime = Image.MIME.get(im.format or "", "image/png")
    picture = {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}
    before, found, after = ask.prompt.partition("<image>")
    if not found:
        before, after = "", ask.prompt
    parts: list[dict[str, Any]] = [{"type": "text", "text": before}] if before else []
    parts.append(picture)
    if after:
        parts.append({"type": "text", "text": after})
    return parts


def _http(method: str, url: str, body: dict | None, key: str | None, timeout: float) -> tuple[int, bytes, Any]:
    """(status, body, headers) of one request; an HTTP error status is returned, a network failure raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), e.headers


def _network_reason(e: BaseException, timeout: float | None = None) -> str:
    r = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(r, ConnectionRefusedError):
        return "connection refused"
    if isinstance(r, socket.gaierror):
        return "host not found"
    if isinstance(r, TimeoutError):
        return f"no answer in {timeout:g} s" if timeout else "timed out"
    if isinstance(r, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "connection closed by the server"
    return first_line(r) if isinstance(r, BaseException) else str(r)


def _refused_key(root: str, status: int, var: str | None) -> str:
    if var:
        return f"rationales.api_key_env: the server at {root} refused the key in ${var} (HTTP {status})"
    return (
        f"rationales.base_url: the server at {root} wants an API key (HTTP {status}): put it in an environment "
        "variable and name that in rationales.api_key_env"
    )


def _message(raw: bytes, key: str | None) -> str:
    """The server's error message, one line, at most 200 characters, the key masked should it echo it."""
    text = raw.decode("utf-8", "replace")
    try:
        d = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(d, dict):
            err = d.get("error")
            msg = err.get("message") if isinstance(err, dict) else err
            msg = msg or d.get("detail") or d.get("message")
            text = msg if isinstance(msg, str) else json.dumps(msg if msg is not None else d)
    text = (text.strip().splitlines() or ["no message"])[0]
    if key:
        text = text.replace(key, "***")
    return text if len(text) <= 200 else text[:197] + "..."


def _seconds(value: str | None) -> float | None:
    """A Retry-After header's seconds (its HTTP-date form is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _tokenizer(ref: str):
    """The teacher's tokenizer where it can be had without waiting on an unreachable hub; else None."""
    from mlan.hub import model_within_reach

    if not model_within_reach(ref):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref)
    except Exception as e:  # a hosted model's name, a gated repo: the server alone knows it
        log.debug("no tokenizer for %s (%s)", ref, first_line(e))
        return None
