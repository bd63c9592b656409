"""A small OpenAI-compatible ``/v1/completions`` server backed by a local HF causal LM.

It serves the subset of the legacy completions API that :class:`alignlab.feedback.http.HTTPJudge`
uses, so the ``http`` judge can be tested over loopback and tried locally without vLLM:

* ``POST /v1/completions`` with ``prompt`` (a string or a list of strings), ``max_tokens`` (>= 1,
  default 16), ``temperature`` (0 = greedy, default 1), ``logprobs`` (0..20: the top-N next-token
  log-probabilities at every generated position), ``seed``, ``n`` (only 1), ``model`` (must be the
  served name when given) and ``user``; any other field is refused with 400.
* ``GET /v1/models``.
* With ``api_key`` set, every request needs ``Authorization: Bearer <api_key>`` (else 401).

Semantics. Each prompt text is tokenised with :func:`alignlab.data.tokenize.prompt_ids` (no special
tokens beyond a bos prepended when the tokenizer has one and the text does not start with it) and
decoded token by token with a KV cache, one prompt at a time (no padding, so a reply equals an
unbatched local forward). ``logprobs`` are the raw model's log-softmax (before temperature), as
vLLM reports them by default; token strings are ``tokenizer.decode([id])``, and when two ids decode
to the same string the more likely one is kept. As in the OpenAI API, the chosen token is added to
the top-N map when it is not already there. Sampling uses a ``torch.Generator`` seeded with ``seed``
(each prompt of a list gets the same seed, as vLLM does). Generation stops at eos (the tokenizer's
and the model's ``generation_config``); the returned text skips special tokens. Errors come back as
``{"error": {"message", "type", "code"}}`` JSON bodies. Not for production: requests are served one
at a time under a lock.

Faults. A :class:`FaultPlan` (``serve_completions(..., faults=plan)``; ``--faults 500,timeout,-``
and ``--then-fault 503`` by hand) makes chosen requests fail as real endpoints do: 5xx and 429
statuses (with ``Retry-After``), a reply later than the client's timeout, a dropped connection, a
truncated JSON body, a reply without ``logprobs``; the fault tests (``tests/test_faults.py``) drive
the ``http`` judge and the ``label`` stage through them.

Run it by hand: ``python -m alignlab.feedback.testing_server MODEL_DIR --port 8000``
(``--api-key-env VAR`` to require the key held in ``$VAR``); the judge url is then
``http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from alignlab.data.tokenize import prompt_ids

MAX_LOGPROBS = 20
MAX_BODY_BYTES = 16 * 1024 * 1024
ALLOWED_FIELDS = frozenset({"model", "prompt", "max_tokens", "temperature", "logprobs", "seed", "n",
                            "user"})


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error reply with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# ----------------------------------------------------------------------------- request parsing


def _int_field(body: dict[str, Any], name: str, default: int | None, low: int,
               high: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RequestError(400, f"'{name}' must be an integer {bound}, got {value!r}")
    return value


def parse_request(body: Any, model_name: str, max_logprobs: int = MAX_LOGPROBS) -> dict[str, Any]:
    """Validate a completions request body; the normalised fields (``prompts`` is a list)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        raise RequestError(400, f"unsupported field(s) {unknown}; this server accepts "
                                f"{sorted(ALLOWED_FIELDS)}")
    if "model" in body and body["model"] != model_name:
        raise RequestError(404, f"the model {body['model']!r} does not exist (serving "
                                f"{model_name!r})", "not_found_error")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError(400, "'prompt' must be a string or a non-empty list of strings")
    temperature = body.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError(400, f"'temperature' must be a number >= 0, got {temperature!r}")
    if _int_field(body, "n", 1, 1, 1) != 1:
        raise RequestError(400, "'n' must be 1")
    return {"prompts": prompts, "temperature": float(temperature),
            "max_tokens": _int_field(body, "max_tokens", 16, 1),
            "logprobs": _int_field(body, "logprobs", None, 0, max_logprobs),
            "seed": _int_field(body, "seed", None, 0)}


# ----------------------------------------------------------------------------- the model side


class LocalCompleter:
    """Greedy or sampled continuation of prompt texts with per-token top-N log-probabilities."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)
        self.lock = threading.Lock()

    def complete(self, text: str, max_tokens: int, temperature: float, logprobs: int | None,
                 seed: int | None) -> tuple[dict[str, Any], int, int]:
        """``(choice without index, prompt token count, completion token count)`` for one prompt."""
        ids = prompt_ids(self.tokenizer, text)
        if not ids:
            raise RequestError(400, "a prompt tokenised to no tokens")
        generator = torch.Generator().manual_seed(seed if seed is not None else
                                                  int.from_bytes(os.urandom(4), "big"))
        with self.lock, torch.no_grad():
            tokens, steps, finish = self._decode(ids, max_tokens, temperature, logprobs, generator)
        choice = {"text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                  "logprobs": self._logprobs_block(steps) if logprobs is not None else None,
                  "finish_reason": finish}
        return choice, len(ids), len(steps)

    def _decode(self, ids: list[int], max_tokens: int, temperature: float, logprobs: int | None,
                generator: torch.Generator):
        """Token-by-token decoding with a KV cache; ``(kept tokens, per-step records, reason)``."""
        device = next(self.model.parameters()).device
        step_input, past = torch.tensor([ids], device=device), None
        tokens, steps = [], []
        for _ in range(max_tokens):
            out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
            token = self._choose(logp, temperature, generator)
            steps.append((token, logp, logprobs))
            if token in self.eos_ids:
                return tokens, steps, "stop"
            tokens.append(token)
            step_input = torch.tensor([[token]], device=device)
        return tokens, steps, "length"

    @staticmethod
    def _choose(logp: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
        if temperature == 0:
            return int(torch.argmax(logp))
        probs = torch.softmax(logp / temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _logprobs_block(self, steps) -> dict[str, Any]:
        """The legacy API's ``logprobs`` object: tokens, their logprobs, top-N maps, text offsets."""
        tokens, token_logprobs, tops, offsets, offset = [], [], [], [], 0
        for token, logp, n in steps:
            piece = self.tokenizer.decode([token])
            tokens.append(piece)
            token_logprobs.append(float(logp[token]))
            tops.append(self._top_map(logp, n, token))
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
                "text_offset": offsets}

    def _top_map(self, logp: torch.Tensor, n: int, chosen: int) -> dict[str, float]:
        top: dict[str, float] = {}
        if n > 0:
            values, indices = torch.topk(logp, min(n, logp.numel()))
            for value, index in zip(values.tolist(), indices.tolist()):
                top.setdefault(self.tokenizer.decode([index]), value)
        top.setdefault(self.tokenizer.decode([chosen]), float(logp[chosen]))
        return top


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set() if tokenizer.eos_token_id is None else {int(tokenizer.eos_token_id)}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    return ids


def completion_reply(completer: LocalCompleter, request: dict[str, Any],
                     model_name: str) -> dict[str, Any]:
    """The ``text_completion`` reply for a parsed request (choices indexed in prompt order)."""
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, text in enumerate(request["prompts"]):
        choice, n_prompt, n_completion = completer.complete(
            text, request["max_tokens"], request["temperature"], request["logprobs"], request["seed"])
        choices.append({"index": index, **choice})
        prompt_tokens += n_prompt
        completion_tokens += n_completion
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


# ----------------------------------------------------------------------------- scripted faults


class FaultPlan:
    """Scripted failures of ``POST /v1/completions``, for fault-injection tests and drills.

    Each POST takes the next entry of ``script`` (``None`` = serve it normally); when the script is
    used up, every further POST gets ``then`` (``None``: served normally). Faults:

    * ``"500"``, ``"502"``, ``"503"``, ``"504"``, ``"429"``: that status with an OpenAI-style JSON
      error body; 429 and 503 carry ``Retry-After: <retry_after>`` when ``retry_after`` is set;
    * ``"timeout"``: the server sleeps ``delay_s`` before answering (a client with a shorter
      timeout gives up; the late answer goes nowhere);
    * ``"drop"``: the connection is closed without any reply;
    * ``"malformed"``: status 200 with a truncated JSON body;
    * ``"no_logprobs"``: status 200, well-formed, one choice per prompt but no ``logprobs``.

    ``requests`` counts every POST (faulted or not) and ``injected`` lists the faults served, in
    order. Thread-safe; change the plan between calls with :meth:`reset`.
    """

    KINDS = frozenset({"500", "502", "503", "504", "429", "timeout", "drop", "malformed",
                       "no_logprobs"})

    def __init__(self, script: Sequence[str | None] = (), then: str | None = None,
                 retry_after: float | None = None, delay_s: float = 2.0):
        self.lock = threading.Lock()
        self.retry_after, self.delay_s = retry_after, delay_s
        self.requests, self.injected = 0, []
        self.reset(script, then)

    def reset(self, script: Sequence[str | None] = (), then: str | None = None) -> None:
        """A new script and fallback (the counters are kept)."""
        unknown = sorted({f for f in [*script, then] if f is not None} - self.KINDS)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(self.KINDS)}")
        with self.lock:
            self.script, self.then = list(script), then

    def take(self) -> str | None:
        """The fault for the next POST (None: serve it)."""
        with self.lock:
            self.requests += 1
            fault = self.script.pop(0) if self.script else self.then
            if fault is not None:
                self.injected.append(fault)
            return fault


def _inject(handler: BaseHTTPRequestHandler, fault: str, faults: FaultPlan) -> None:
    """Answer one POST with ``fault`` (see :class:`FaultPlan`)."""
    if fault == "timeout":
        time.sleep(faults.delay_s)
        return handler._serve(lambda: handler._completions())
    body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    if fault == "drop":
        handler.close_connection = True
        return None
    if fault == "malformed":
        return handler._send_raw(200, b'{"id": "cmpl-x", "choices": [{"index": 0, "text": "')
    if fault == "no_logprobs":
        try:
            prompt = json.loads(body.decode("utf-8")).get("prompt", [])
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            prompt = []
        count = 1 if isinstance(prompt, str) else max(len(prompt), 1)
        return handler._reply(200, {"object": "text_completion", "choices": [
            {"index": i, "text": "", "finish_reason": "length"} for i in range(count)]})
    status = int(fault)
    headers = {}
    if status in (429, 503) and faults.retry_after is not None:
        headers["Retry-After"] = f"{faults.retry_after:g}"
    return handler._reply(status, {"error": {"message": f"injected fault {status}",
                                             "type": "server_error", "code": status}}, headers)


# ----------------------------------------------------------------------------- HTTP


def _handler_class(completer: LocalCompleter, model_name: str, api_key: str | None,
                   max_logprobs: int = MAX_LOGPROBS, faults: FaultPlan | None = None):
    class CompletionsHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            self._serve(lambda: self._models())

        def do_POST(self) -> None:
            fault = faults.take() if faults is not None else None
            try:
                if fault is None:
                    self._serve(lambda: self._completions())
                else:
                    _inject(self, fault, faults)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout fault)
                self.close_connection = True

        def _serve(self, action) -> None:
            try:
                self._check_key()
                self._reply(200, action())
            except RequestError as exc:
                self._reply(exc.status, {"error": {"message": exc.message, "type": exc.kind,
                                                   "code": exc.status}})
            except Exception as exc:  # noqa: BLE001 - a model failure still gets a JSON reply
                self._reply(500, {"error": {"message": f"{type(exc).__name__}: {exc}",
                                            "type": "server_error", "code": 500}})

        def _check_key(self) -> None:
            if api_key is None:
                return
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise RequestError(401, "missing or invalid API key", "authentication_error")

        def _models(self) -> dict[str, Any]:
            if self.path.rstrip("/") != "/v1/models":
                raise RequestError(404, f"no route GET {self.path}", "not_found_error")
            return {"object": "list", "data": [{"id": model_name, "object": "model",
                                                "owned_by": "alignlab"}]}

        def _completions(self) -> dict[str, Any]:
            if self.path.rstrip("/") != "/v1/completions":
                raise RequestError(404, f"no route POST {self.path}", "not_found_error")
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                raise RequestError(413 if length > 0 else 400,
                                   f"request body must be 1..{MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
            return completion_reply(completer, parse_request(body, model_name, max_logprobs), model_name)

        def _reply(self, status: int, obj: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(obj).encode("utf-8"), headers)

        def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status != 200:  # an unread request body must not be parsed as the next request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

    return CompletionsHandler


def serve_completions(model, tokenizer, host: str = "127.0.0.1", port: int = 0,
                      api_key: str | None = None, model_name: str = "alignlab-local",
                      max_logprobs: int = MAX_LOGPROBS, faults: FaultPlan | None = None):
    """Start the server in a daemon thread; ``(server, base_url)`` with ``base_url`` ending in /v1.

    ``port=0`` picks a free port. Stop it with ``server.shutdown(); server.server_close()``.
    ``max_logprobs`` caps the ``logprobs`` a request may ask for (vLLM's ``--max-logprobs``).
    ``faults``: a :class:`FaultPlan` that makes chosen requests fail (fault-injection tests).
    """
    model.eval()
    handler = _handler_class(LocalCompleter(model, tokenizer), model_name, api_key, max_logprobs,
                             faults)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="alignlab-completions", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host}:{bound_port}/v1"


def main(argv: list[str] | None = None) -> None:
    """``python -m alignlab.feedback.testing_server MODEL [--host H] [--port P] [--api-key-env V]``."""
    from alignlab.config import ModelSettings
    from alignlab.models.loading import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="local Hugging Face folder (safetensors) or hub name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="name clients send as 'model'")
    parser.add_argument("--api-key-env", default=None, help="require the key held in this variable")
    parser.add_argument("--faults", default="", help="comma-separated faults for the first POSTs "
                        f"(drills; '-' = serve normally): {', '.join(sorted(FaultPlan.KINDS))}")
    parser.add_argument("--then-fault", default=None, help="fault for every POST after --faults")
    parser.add_argument("--retry-after", type=float, default=None, help="Retry-After of 429/503 faults")
    args = parser.parse_args(argv)
    faults = None
    if args.faults or args.then_fault:
        script = [None if f.strip() in ("", "-") else f.strip() for f in args.faults.split(",")] \
            if args.faults else []
        try:
            faults = FaultPlan(script, args.then_fault, args.retry_after)
        except ValueError as exc:
            parser.error(str(exc))
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env!r} is not set")
    model, tokenizer = load_causal_lm(ModelSettings(path=args.model), for_training=False)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    server, url = serve_completions(model, tokenizer, args.host, args.port, api_key, name,
                                    faults=faults)
    print(f"serving {name!r} at {url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
