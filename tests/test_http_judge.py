"""The OpenAI-compatible HTTP judge against the loopback completions server (tiny Llama, char vocab)."""

import json
import math
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from test_rl_rollout import _tiny

from alignlab.config import JudgeSettings
from alignlab.data.tokenize import prompt_ids
from alignlab.feedback.http import HTTPJudge, JudgeError, option_distribution
from alignlab.feedback.testing_server import serve_completions

KEY = "sk-test-SECRET-4242"
KEY_ENV = "ALIGNLAB_TEST_JUDGE_KEY"
TEXTS = ["<user>is the sky blue?\n<assistant>answer: ", "<user>2+2?\n<assistant>", "<user>hi\n<assistant>ok",
         "<system>be kind\n<user>cat?\n<assistant>", "<user>pick one\n<assistant>i pick "]


@pytest.fixture(scope="module")
def lm():
    """The rollout tests' tiny Llama (seed 0) with the char tokenizer."""
    return _tiny()


def _serve(lm, **kwargs):
    server, url = serve_completions(*lm, **kwargs)
    return server, url


@pytest.fixture(scope="module")
def server_url(lm):
    server, url = _serve(lm)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def keyed_url(lm):
    server, url = _serve(lm, api_key=KEY, model_name="tiny")
    yield url
    server.shutdown()
    server.server_close()


def _judge(url, **extra):
    return HTTPJudge(JudgeSettings(kind="http", url=url, **extra), backoff_s=0.01)


def _last_logits(lm, text):
    model, tok = lm
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt_ids(tok, text)])).logits[0, -1].float()


def _char_options(lm, k, n):
    """``n`` plain characters that are among the top ``k`` next tokens after every text."""
    tok = lm[1]
    common = None
    for text in TEXTS:
        top = {tok.decode([i]) for i in torch.topk(_last_logits(lm, text), k).indices.tolist()}
        common = top if common is None else common & top
    chars = sorted(c for c in common if len(c) == 1 and c.isalnum())
    assert len(chars) >= n, f"only {chars} are in every top-{k}; change TEXTS"
    return chars[:n]


def _local_option_probs(lm, text, options):
    ids = lm[1].convert_tokens_to_ids(list(options))
    return torch.softmax(_last_logits(lm, text)[ids], -1).tolist()


def test_option_distribution_hand_numbers():
    top = {"A": math.log(0.5), " A": math.log(0.1), "B\n": math.log(0.2), "C": math.log(0.2)}
    assert option_distribution(top, ["A", "B"]) == pytest.approx([0.75, 0.25])
    assert option_distribution(top, [" B", "C"]) == pytest.approx([0.5, 0.5])
    assert option_distribution(top, ["D", "E"]) is None


def test_option_probs_match_local_softmax(lm, server_url):
    options = _char_options(lm, 20, 3)
    judge = _judge(server_url, top_logprobs=20)
    got = judge.option_probs(TEXTS, options)
    for text, row in zip(TEXTS, got):
        assert row == pytest.approx(_local_option_probs(lm, text, options), abs=1e-5)
    assert judge.missing_options == 0
    assert judge.last_mass[0] == pytest.approx(
        sum(torch.softmax(_last_logits(lm, TEXTS[0]), -1)[lm[1].convert_tokens_to_ids(options)].tolist()),
        abs=1e-5)


def test_option_outside_top_n_is_uniform_and_counted(lm, server_url):
    tok = lm[1]
    text = next(t for t in TEXTS if tok.decode([int(_last_logits(lm, t).argmax())]).isalnum())
    best = tok.decode([int(_last_logits(lm, text).argmax())])
    others = [c for c in "xyzqj" if c != best][:2]
    judge = _judge(server_url, top_logprobs=1)
    assert judge.option_probs([text], [best, others[0]]) == [[1.0, 0.0]]  # only `best` is listed
    assert judge.missing_options == 0
    assert judge.option_probs([text, text], others) == [[0.5, 0.5], [0.5, 0.5]]
    assert judge.missing_options == 2


def test_batches_keep_order(lm, server_url):
    options = _char_options(lm, 20, 2)
    judge = _judge(server_url, top_logprobs=20, batch_size=2)
    sent = []
    real_send = judge._send
    judge._send = lambda body, key: sent.append(json.loads(body)) or real_send(body, key)
    texts = TEXTS[::-1] + TEXTS[:1]
    got = judge.option_probs(texts, options)
    assert [len(p["prompt"]) for p in sent] == [2, 2, 2]
    for text, row in zip(texts, got):
        assert row == pytest.approx(_local_option_probs(lm, text, options), abs=1e-5)


def test_api_key_from_env(lm, keyed_url, monkeypatch):
    options = _char_options(lm, 20, 2)
    judge = _judge(keyed_url, model_name="tiny", api_key_env=KEY_ENV, top_logprobs=20)
    monkeypatch.setenv(KEY_ENV, KEY)
    assert judge.option_probs(TEXTS[:2], options)[1] == pytest.approx(
        _local_option_probs(lm, TEXTS[1], options), abs=1e-5)
    assert KEY not in repr(judge) and KEY not in repr(vars(judge))

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=KEY_ENV):
        judge.option_probs(TEXTS[:1], options)

    wrong = "sk-wrong-KEY-777"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(JudgeError, match="401") as info:
        judge.option_probs(TEXTS[:1], options)
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert keyed_url in str(info.value)

    with pytest.raises(JudgeError, match="401"):  # no key configured at all
        _judge(keyed_url, model_name="tiny").option_probs(TEXTS[:1], options)


class _FlakyHandler(BaseHTTPRequestHandler):
    """Fails the first ``server.failures`` requests with 503, then answers with reversed choices."""

    def log_message(self, *args):
        return

    def do_POST(self):
        self.server.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.requests <= self.server.failures:
            self._send(503, {"error": {"message": "overloaded"}})
            return
        choices = [{"index": i, "text": f"reply {i}", "finish_reason": "length",
                    "logprobs": {"top_logprobs": [{"A": math.log((i + 1) / 10),
                                                   " B": math.log(1 - (i + 1) / 10)}]}}
                   for i in range(len(body["prompt"]))]
        self._send(200, {"object": "text_completion", "choices": choices[::-1]})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    server.requests, server.failures = 0, 2
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_retries_5xx_then_succeeds_and_orders_by_index(flaky):
    server, url = flaky
    judge = _judge(url, max_retries=2)
    probs = judge.option_probs(["x", "y", "z"], ["A", "B"])
    assert server.requests == 3  # two 503s, then the answer
    assert [p[0] for p in probs] == pytest.approx([0.1, 0.2, 0.3])
    assert [p[1] for p in probs] == pytest.approx([0.9, 0.8, 0.7])
    assert judge.continue_texts(["x", "y"], 4, 0.0, 0) == ["reply 0", "reply 1"]


def test_retries_exhausted_names_url_and_status(flaky):
    server, url = flaky
    server.failures = 10
    with pytest.raises(JudgeError, match="503") as info:
        _judge(url, max_retries=1).option_probs(["x"], ["A", "B"])
    assert server.requests == 2 and f"{url}/completions" in str(info.value)
    assert "overloaded" in str(info.value)


def test_connection_refused_is_a_judge_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match=f"127.0.0.1:{port}"):
        _judge(f"http://127.0.0.1:{port}/v1", max_retries=1, timeout_s=2).option_probs(["x"], ["A"])


def test_greedy_continuation_matches_local_generate(lm, server_url):
    model, tok = lm
    got = _judge(server_url, batch_size=2).continue_texts(TEXTS, 8, 0.0, seed=0)
    expected = []
    for text in TEXTS:
        ids = torch.tensor([prompt_ids(tok, text)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, pad_token_id=0, eos_token_id=2)
        expected.append(tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
    assert got == expected
    assert any(expected)


def test_sampled_continuation_is_seeded_per_text(server_url):
    judge = _judge(server_url, batch_size=3)
    both = judge.continue_texts(TEXTS[:3], 8, 1.0, seed=5)
    assert both == judge.continue_texts(TEXTS[:3], 8, 1.0, seed=5)
    assert both == [judge.continue_texts([t], 8, 1.0, seed=5)[0] for t in TEXTS[:3]]  # batch-free
    assert both != judge.continue_texts(TEXTS[:3], 8, 1.0, seed=6)
    sent = []
    real_send = judge._send
    judge._send = lambda body, key: sent.append(json.loads(body)) or real_send(body, key)
    judge.continue_texts(TEXTS[:3], 2, 1.0, seed=5)
    assert sorted(len(p["prompt"]) for p in sent) == [1, 1, 1]  # one seed per prompt, all different
    assert len({p["seed"] for p in sent}) == 3


def _raw(url, path, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_routes_and_json_errors(keyed_url):
    assert _raw(keyed_url, "/models")[0] == 401
    status, body = _raw(keyed_url, "/models", key=KEY)
    assert status == 200 and body["data"][0]["id"] == "tiny"
    cases = [({"model": "tiny"}, 400, "prompt"), ({"prompt": "a", "stream": True}, 400, "stream"),
             ({"prompt": "a", "model": "other"}, 404, "other"), (b"{not json", 400, "JSON"),
             ({"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
             ({"prompt": ["a"], "logprobs": 99}, 400, "logprobs")]
    for request, code, word in cases:
        status, body = _raw(keyed_url, "/completions", request, key=KEY)
        assert status == code and word in body["error"]["message"], (request, body)
    status, body = _raw(keyed_url, "/completions", {"prompt": "ab", "max_tokens": 2, "logprobs": 3,
                                                   "temperature": 0}, key=KEY)
    choice = body["choices"][0]
    assert status == 200 and len(choice["logprobs"]["tokens"]) == len(choice["logprobs"]["top_logprobs"])
    assert 3 <= len(choice["logprobs"]["top_logprobs"][0]) <= 4
