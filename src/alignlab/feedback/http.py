"""A judge behind an OpenAI-compatible ``POST {url}/completions`` endpoint (e.g. ``vllm serve``).

This is the ``kind: http`` judge of :mod:`alignlab.feedback.judges` for RLAIF / Constitutional AI
labelling (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", section 4.1: the
feedback model's normalised probabilities of the options "(A)"/"(B)" are the soft preference label).
Only the standard library is used (``urllib.request`` + ``json``).

Option probabilities. One request per ``batch_size`` texts: ``prompt`` is the list of texts,
``max_tokens=1``, ``temperature=0``, ``logprobs=top_logprobs``; the endpoint answers with
``choices[i].logprobs.top_logprobs[0]``, a ``{token_text: logprob}`` map of the N most likely next
tokens (choices are put back in prompt order by their ``index``). The probability of an option is
the sum of ``exp(logprob)`` over the listed tokens whose text, with surrounding whitespace stripped,
equals the option stripped (so ``"A"`` and ``" A"`` both count for option ``A``); the options are
then normalised to sum to 1. Departures from reading the full next-token distribution (what the
``local`` judge does): mass outside the top N is invisible, and two token ids that decode to the same
text share one map entry (the endpoint keeps one of them). When no option is among the top N the
result is uniform and :attr:`HTTPJudge.missing_options` is incremented (the labeller reports it).

Continuations. Greedy (``temperature == 0``) requests are batched like the above. Sampled requests
go one prompt per request, sent concurrently (up to ``batch_size`` at once), each with its own
``seed`` derived from ``(seed, text)``: servers such as vLLM seed every prompt of a list request with
the same seed, which would give all prompts the same noise; deriving it from the text makes a
continuation independent of how the texts are batched (resumed runs reproduce it).

API key. When ``api_key_env`` is set, the key is read from that environment variable at each
request and sent as ``Authorization: Bearer ...``; it is never stored on the judge, logged, or put in
an error message (any echo of it in a server reply is masked).

Faults. Transient failures are retried ``max_retries`` times (default 3): transport errors (refused or
dropped connection, a reply cut short), a request that gets no answer within ``timeout_s`` (default
60 s), HTTP 429 and 500/502/503/504, and a 200 reply whose body is not JSON (a proxy's error page, a
truncated body). The wait before retry ``k`` (0-based) is ``retry_backoff_s * 2**k`` (default 1 s,
so 1 + 2 + 4 s), at most 30 s; a numeric ``Retry-After`` header of a 429/503 replaces it (also capped
at 30 s). A reply that is well-formed JSON but lacks what was asked for (no ``choices``, too few, no
``logprobs.top_logprobs``) and any other HTTP status (400, 401, 404, ...) fail at once: repeating
the same request would get the same answer. Either way :class:`JudgeError` says, in one line, which
endpoint failed, after how many attempts and why (never the API key); its ``texts`` attribute holds
the ``[start, stop)`` positions, within the call, of the texts whose request failed, which callers
turn into input indices (the ``label`` stage names the pairs and keeps the labels already written).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from alignlab.config import JudgeSettings

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
MAX_BACKOFF_S = 30.0
TRANSPORT_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


class JudgeError(ValueError):
    """A judge request that failed for good; the message names the URL and the HTTP status.

    ``texts``: ``(start, stop)``, the positions within the judge call of the texts whose request
    failed (None when the failure is not tied to a request)."""

    texts: tuple[int, int] | None = None


class _Transient(Exception):
    """A reply worth retrying that is not an HTTP error status (e.g. a body that is not JSON)."""


def option_masses(top: dict[str, float], options: Sequence[str]) -> list[float]:
    """Unnormalised probability of each option in one ``{token_text: logprob}`` top-N map: the sum
    of ``exp(logprob)`` over tokens whose whitespace-stripped text equals the stripped option."""
    wanted = [o.strip() for o in options]
    mass = [0.0] * len(options)
    for token, logprob in top.items():
        text = str(token).strip()
        for k, option in enumerate(wanted):
            if text == option and logprob is not None:
                mass[k] += math.exp(float(logprob))
    return mass


def option_mass(top: dict[str, float], options: Sequence[str]) -> float:
    """Total option probability visible in the top-N map (how much the judge answers at all)."""
    return sum(option_masses(top, options))


def option_distribution(top: dict[str, float], options: Sequence[str]) -> list[float] | None:
    """Normalised option probabilities from one ``{token_text: logprob}`` top-N map.

    ``None`` when no option has any mass (the caller then falls back to uniform and counts it).
    This renormalises over the options only, as Bai et al. (2022, section 4.1) do with the judge's
    "(A)"/"(B)" probabilities; :func:`option_masses` says how tokens are matched to options.
    """
    mass = option_masses(top, options)
    total = sum(mass)
    if total <= 0.0:
        return None
    return [m / total for m in mass]


def derived_seed(seed: int, text: str) -> int:
    """A per-prompt seed in ``[0, 2**31)`` from ``(seed, text)`` (stable across runs and batches)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31)


class HTTPJudge:
    """The :class:`alignlab.feedback.judges.Judge` interface over an OpenAI-compatible endpoint.

    See the module docstring for how option probabilities are read and where that departs from a
    local forward pass. ``backoff_s`` is the first retry delay (doubled on each retry, at most
    ``MAX_BACKOFF_S``); by default ``settings.retry_backoff_s``. ``retries`` counts the retries made.
    """

    def __init__(self, settings: JudgeSettings, backoff_s: float | None = None):
        if settings.kind != "http" or not settings.url:
            raise JudgeError("HTTPJudge needs judge settings with kind 'http' and a 'url'")
        self.settings = settings
        self.endpoint = settings.url.rstrip("/") + "/completions"
        self.backoff_s = settings.retry_backoff_s if backoff_s is None else backoff_s
        self.retries = 0
        self._sleep = time.sleep  # replaceable in tests
        self.name = f"http:{settings.model_name or settings.url}"
        self.tokenizer = None  # no local tokenizer: judge texts are rendered in the HH format
        self.missing_options = 0
        self.last_mass: list[float] = []

    def __repr__(self) -> str:
        key = f", api_key_env={self.settings.api_key_env!r}" if self.settings.api_key_env else ""
        return f"HTTPJudge(url={self.settings.url!r}, model_name={self.settings.model_name!r}{key})"

    # ------------------------------------------------------------------ Judge interface

    def option_probs(self, texts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Next-token probability of each option after each text, normalised over the options.

        One greedy 1-token request per ``batch_size`` texts with ``logprobs=top_logprobs``; see the
        module docstring for the whitespace-stripped matching and the uniform fallback.
        """
        if not options:
            raise JudgeError("option_probs needs at least one option")
        result: list[list[float]] = []
        self.last_mass = []
        for start, batch in self._batches(texts):
            payload = {"prompt": list(batch), "max_tokens": 1, "temperature": 0,
                       "logprobs": self.settings.top_logprobs}
            with _texts_at(start, len(batch)):
                choices = self._choices(self._post(payload), len(batch))
                tops = [self._top_logprobs(choice) for choice in choices]
            for top in tops:
                probs = option_distribution(top, options)
                self.last_mass.append(option_mass(top, options))
                if probs is None:
                    self.missing_options += 1
                    probs = [1.0 / len(options)] * len(options)
                result.append(probs)
        return result

    def continue_texts(self, texts: Sequence[str], max_new_tokens: int, temperature: float,
                       seed: int) -> list[str]:
        """A continuation of each text (e.g. a chain-of-thought rationale), in text order.

        Greedy when ``temperature == 0`` (batched list requests); otherwise one request per text
        with a seed from :func:`derived_seed`, ``batch_size`` requests in flight at once.
        """
        if max_new_tokens < 1:
            raise JudgeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise JudgeError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            out: list[str] = []
            for start, batch in self._batches(texts):
                payload = {"prompt": list(batch), "max_tokens": max_new_tokens, "temperature": 0}
                with _texts_at(start, len(batch)):
                    choices = self._choices(self._post(payload), len(batch))
                out.extend(str(c.get("text", "")) for c in choices)
            return out
        return self._sampled(list(texts), max_new_tokens, temperature, seed)

    # ------------------------------------------------------------------ requests

    def _batches(self, texts: Sequence[str]):
        """``(start, texts[start:start + batch_size])`` for each request."""
        size = self.settings.batch_size
        for start in range(0, len(texts), size):
            yield start, texts[start:start + size]

    def _sampled(self, texts: list[str], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        """One concurrent request per text, each with its own derived seed."""
        def one(position: int) -> str:
            text = texts[position]
            payload = {"prompt": [text], "max_tokens": max_new_tokens, "temperature": temperature,
                       "seed": derived_seed(seed, text)}
            with _texts_at(position, 1):
                return str(self._choices(self._post(payload), 1)[0].get("text", ""))

        if not texts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.batch_size, len(texts))) as pool:
            return list(pool.map(one, range(len(texts))))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` (plus ``model``) with bounded retries (module docstring); the JSON reply."""
        if self.settings.model_name:
            payload = {"model": self.settings.model_name, **payload}
        body = json.dumps(payload).encode("utf-8")
        attempt = 0
        while True:
            key = self._api_key()
            try:
                return self._send(body, key)
            except urllib.error.HTTPError as exc:
                detail = self._scrub(_error_detail(exc), key)
                if exc.code not in RETRY_STATUS or attempt >= self.settings.max_retries:
                    raise JudgeError(self._failure(f"HTTP {exc.code}", detail, attempt)) from None
                delay = _retry_after(exc)
            except _Transient as exc:
                if attempt >= self.settings.max_retries:
                    raise JudgeError(self._failure("bad reply", self._scrub(str(exc), key),
                                                   attempt)) from None
                delay = None
            except TRANSPORT_ERRORS as exc:
                if attempt >= self.settings.max_retries:
                    reason = getattr(exc, "reason", exc)
                    if _is_timeout(exc):
                        status = "timed out"
                        detail = f"no reply within timeout_s = {self.settings.timeout_s:g} s"
                    else:
                        status = "no response"
                        detail = self._scrub(str(reason) or type(reason).__name__, key)
                    raise JudgeError(self._failure(status, detail, attempt)) from None
                delay = None
            if delay is None:
                delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
            self.retries += 1
            self._sleep(delay)
            attempt += 1

    def _send(self, body: bytes, key: str | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            raw = response.read()
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Transient(f"the reply is not JSON: "
                             f"{self._scrub(raw[:200].decode('utf-8', 'replace'), key)!r}") from None
        if not isinstance(reply, dict):
            raise JudgeError(f"judge endpoint {self.endpoint} returned {type(reply).__name__}, "
                             "expected a JSON object")
        return reply

    def _api_key(self) -> str | None:
        """The key from ``os.environ[api_key_env]`` (read now, never stored), or None if unset."""
        name = self.settings.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise JudgeError(f"judge api_key_env names the environment variable {name!r}, "
                             "which is not set (export it before running)")
        return key

    @staticmethod
    def _scrub(text: str, key: str | None) -> str:
        return redact(text, key)

    def _failure(self, status: str, detail: str, attempt: int) -> str:
        tries = f" after {attempt + 1} attempts" if attempt else ""
        hint = ""
        if "404" in status and not self.settings.url.rstrip("/").endswith("/v1"):
            hint = " (the url usually ends with /v1, e.g. http://localhost:8000/v1)"
        detail = " ".join(detail.split())  # one line, whatever the server put in its message
        return f"judge request to {self.endpoint} failed{tries}: {status}: {detail}{hint}"

    # ------------------------------------------------------------------ reply parsing

    def _choices(self, reply: dict[str, Any], expected: int) -> list[dict[str, Any]]:
        """The reply's choices in prompt order (sorted by ``index``); checks there is one per prompt."""
        choices = reply.get("choices")
        if not isinstance(choices, list) or len(choices) != expected:
            got = len(choices) if isinstance(choices, list) else "no"
            raise JudgeError(f"judge endpoint {self.endpoint} returned {got} choices for "
                             f"{expected} prompts")
        if not all(isinstance(c, dict) for c in choices):
            raise JudgeError(f"judge endpoint {self.endpoint} returned a choice that is not an object")
        if all("index" in c for c in choices):
            choices = sorted(choices, key=lambda c: c["index"])
            if [c["index"] for c in choices] != list(range(expected)):
                raise JudgeError(f"judge endpoint {self.endpoint} returned choice indices "
                                 f"{[c['index'] for c in choices]}, expected 0..{expected - 1}")
        return choices

    def _top_logprobs(self, choice: dict[str, Any]) -> dict[str, float]:
        logprobs = choice.get("logprobs") or {}
        top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
        if not top or not isinstance(top[0], dict):
            raise JudgeError(f"judge endpoint {self.endpoint} returned no logprobs.top_logprobs; "
                             "it must support 'logprobs' on the legacy /completions API")
        return top[0]


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI-style ``{"error": {"message": ...}}`` or raw text)."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return str(exc.reason)
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:300]
    except json.JSONDecodeError:
        return raw[:300] or str(exc.reason)


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """Seconds from a numeric ``Retry-After`` header, capped at ``MAX_RETRY_AFTER_S``."""
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None


def _is_timeout(exc: BaseException) -> bool:
    """Whether a transport error is the client's ``timeout_s`` running out."""
    reason = getattr(exc, "reason", exc)
    return isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError) or \
        "timed out" in str(reason).lower()


@contextmanager
def _texts_at(start: int, count: int):
    """Tag a :class:`JudgeError` raised inside with the positions ``[start, start + count)`` of
    the texts whose request failed (the first tag wins)."""
    try:
        yield
    except JudgeError as exc:
        if exc.texts is None:
            exc.texts = (start, start + count)
        raise


REDACT_WINDOW = 6


def redact(text: str, secret: str | None, window: int = REDACT_WINDOW) -> str:
    """``text`` with the secret and every piece of it masked as ``***``.

    Servers echo keys partly ("Incorrect API key provided: sk-abc123***...xyz"), so masking only the
    whole key is not enough: every run of ``text`` covered by ``window``-character slices of the
    secret (the whole secret when it is shorter) becomes one ``***``. No ``window`` consecutive
    characters of the secret survive."""
    if not secret or not text:
        return text
    size = min(window, len(secret))
    pieces = {secret[i:i + size] for i in range(len(secret) - size + 1)}
    covered = [False] * len(text)
    for i in range(len(text) - size + 1):
        if text[i:i + size] in pieces:
            covered[i:i + size] = [True] * size
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append("***")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
