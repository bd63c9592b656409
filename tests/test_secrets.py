"""The HTTP judge's API key never reaches a run folder, a log, stdout/stderr or an error message.

The ``label`` stage runs through the CLI with an http judge whose ``api_key_env`` names a variable
holding the key, against (1) the loopback completions server (success), (2) the same server expecting
another key (401), (3) a server that echoes the key partly in a 401 body, as OpenAI's API does
("Incorrect API key provided: sk-abcd****wxyz"), (4) one that echoes the whole Authorization header in
a 500 body (retried, then failing), and (5) one that answers 200 with a non-JSON page quoting the
header. Then every file under the run folders, the CLI output (stdout and stderr), the log records and
the exception messages are searched for the key and for its first 8 characters.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_models_tiny import save_tiny_lm
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.config import JudgeSettings
from alignlab.feedback.http import HTTPJudge, JudgeError, redact

KEY = "sk-Zq7Wd93LkPv0Xr2Tn8Ye4Mb6"
KEY_ENV = "ALIGNLAB_SECRET_TEST_KEY"
NEEDLES = (KEY, KEY[:8], KEY[-8:])


class _EchoHandler(BaseHTTPRequestHandler):
    """Replies per ``server.mode`` and echoes what it was sent, as careless servers do."""

    def log_message(self, *args):
        return

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization", "")
        given = auth.removeprefix("Bearer ")
        self.server.requests += 1
        if self.server.mode == "partial_401":
            message = f"Incorrect API key provided: {given[:8]}{'*' * 12}{given[-4:]}"
            self._send(401, json.dumps({"error": {"message": message}}).encode())
        elif self.server.mode == "header_500":
            self._send(500, json.dumps({"error": {"message": f"crash; headers: Authorization: {auth}"}}).encode())
        else:  # html_200
            self._send(200, f"<html>proxy error for {auth}</html>".encode())

    def _send(self, status, data):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.mode, server.requests = "partial_401", 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _pairs(path, n=3):
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}], "chosen": f"yes {i}",
             "rejected": "no", "label": 1.0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _label(folder, data, out, url):
    args = ["label", f"judge.model.path={folder}", f"data.path={data}", f"out={out}",
            "constitution=gym", "judge.kind=http", f"judge.url={url}", "judge.model_name=tiny",
            "judge.top_logprobs=100", f"judge.api_key_env={KEY_ENV}", "judge.max_retries=1",
            "judge.retry_backoff_s=0.01", "flush_every=2"]
    result = CliRunner().invoke(app, args)
    try:
        stderr = result.stderr  # click >= 8.2 keeps stderr apart as well as in output
    except ValueError:
        stderr = ""
    return result, result.output + stderr


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


def test_redact_masks_whole_and_partial_echoes():
    assert redact(f"Bearer {KEY}", KEY) == "Bearer ***"
    # OpenAI-style partial echo: the first 8 characters go; 4 trailing ones (< window) may stay
    assert redact(f"provided: {KEY[:8]}{'*' * 12}{KEY[-4:]}", KEY) == f"provided: ***{'*' * 12}{KEY[-4:]}"
    assert redact(f"a {KEY[:5]} b", KEY) == f"a {KEY[:5]} b"  # shorter than the 6-char window
    assert redact("nothing here", KEY) == "nothing here"
    assert redact(f"x{KEY}y{KEY}", KEY) == "x***y***"
    assert redact("abc abc", "abc") == "*** ***"  # a key shorter than the window: masked whole
    assert redact("text", None) == "text" and redact("", KEY) == ""


def test_api_key_never_written_or_shown(tmp_path, monkeypatch, caplog, echo_server):
    from alignlab.config import ModelSettings
    from alignlab.feedback.testing_server import serve_completions
    from alignlab.models.loading import load_causal_lm

    caplog.set_level(logging.DEBUG)
    folder = str(save_tiny_lm(tmp_path / "judge"))
    data = _pairs(tmp_path / "pairs.jsonl")
    monkeypatch.setenv(KEY_ENV, KEY)
    outputs, errors = {}, []
    model, tok = load_causal_lm(ModelSettings(path=folder), for_training=False)

    server, url = serve_completions(model, tok, model_name="tiny", max_logprobs=100, api_key=KEY)
    try:
        result, outputs["ok"] = _label(folder, data, tmp_path / "ok", url)
        assert result.exit_code == 0, outputs["ok"]
        assert len((tmp_path / "ok" / "labels.jsonl").read_text().splitlines()) == 3
        judge = HTTPJudge(JudgeSettings(kind="http", url=url, model_name="tiny", api_key_env=KEY_ENV))
        errors += [repr(judge), repr(vars(judge))]
    finally:
        server.shutdown()
        server.server_close()

    server, url = serve_completions(model, tok, model_name="tiny", max_logprobs=100,
                                    api_key="sk-the-server-wants-another")
    try:
        result, outputs["wrong_key"] = _label(folder, data, tmp_path / "wrong_key", url)
        assert result.exit_code == 2 and "401" in outputs["wrong_key"], outputs["wrong_key"]
    finally:
        server.shutdown()
        server.server_close()

    echo, echo_url = echo_server
    for mode, status in (("partial_401", "401"), ("header_500", "500"), ("html_200", "not JSON")):
        echo.mode, echo.requests = mode, 0
        result, outputs[mode] = _label(folder, data, tmp_path / mode, echo_url)
        assert result.exit_code == 2 and status in outputs[mode], outputs[mode]
        assert echo.requests == (1 if mode == "partial_401" else 2)  # 5xx / non-JSON: one retry
        assert "***" in outputs[mode]  # the echo was there, and was masked
        with pytest.raises(JudgeError) as info:
            HTTPJudge(JudgeSettings(kind="http", url=echo_url, api_key_env=KEY_ENV, max_retries=0)
                      ).option_probs(["x"], ["A", "B"])
        errors.append(str(info.value))

    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "pairs.jsonl"
             and "judge" not in p.parts]
    assert {"config.yaml", "log.txt", "labels.jsonl", "label_stats.json"} <= {p.name for p in files}
    assert all(KEY_ENV in (tmp_path / run / "config.yaml").read_text() for run in outputs)
    leaks = {str(p): _leaks(p.read_bytes().decode("utf-8", "replace")) for p in files}
    leaks.update({f"output:{k}": _leaks(v) for k, v in outputs.items()})
    leaks.update({f"error:{i}": _leaks(e) for i, e in enumerate(errors)})
    leaks["logging"] = _leaks(caplog.text)
    assert {where: found for where, found in leaks.items() if found} == {}
