"""The OpenAI-compatible escalation backend (nl2sql/remote.py) and `nl2sql serve` speaking that protocol
(/v1/models, /v1/completions in nl2sql/server.py).

The backend is a real `nl2sql serve` in a subprocess over real HTTP, with a scripted model that answers by the
question in its prompt (what an unreliable server might send included) and writes down what it was asked; the
small model in process is scripted too. Validation, the guarded executor and SQLite are real. Marked `model`: the
same with the bundled model on both sides."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from nl2sql import routing  # noqa: E402
from nl2sql.api import Pipeline  # noqa: E402
from nl2sql.errors import ConfigError, ConnectError  # noqa: E402
from nl2sql.grammar import parses, sql_grammar  # noqa: E402
from nl2sql.querylog import QueryLog  # noqa: E402
from nl2sql.remote import RemoteGenerator  # noqa: E402
from nl2sql.server import create_app  # noqa: E402
from serving import ServeProcess, free_port, wait_until_up  # noqa: E402  (tests/serving.py)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "remote-test-token-0123456789"
FRANCE = "SELECT name FROM singer WHERE country = 'France'"
NETHERLANDS = "SELECT name FROM singer WHERE country = 'Netherlands'"
ALL = "SELECT name FROM singer"
Q_FRANCE = "Which singers are from France or the Netherlands?"   # names both: UNSURE's candidates stay apart
Q_DROP = "Which singers are from Spain?"        # the server answers it with a write and a wrong column
UNSURE = [(NETHERLANDS, -0.1), (FRANCE, -0.2)]   # two candidates, two results: confidence about 0.75

# the server's scripted model: SQL by the question its prompt ends with; every call written to CALLS as JSON
SERVER = r'''
import json, sys, uvicorn
from nl2sql.config import Settings
from nl2sql.generate import Generation
from nl2sql.server import create_app

port, calls, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ANSWERS = {"Which singers are from France or the Netherlands?": ["SELECT name FROM singer WHERE country = 'France'"],
           "Which singers are from Spain?": ["DELETE FROM singer", "SELECT wage FROM singer"],
           "completions": ["SELECT 1\n-- Question: more"]}

class ByQuestion:
    model_name, adapter_name = "scripted-large", "v7"
    def decode(self, ids):
        return "".join(chr(i) for i in ids)
    def candidates(self, prompt, grammar, max_new_tokens, *, prefix=None, n=1, binder=None, seed=0,
                   temperature=0.7, forced=()):
        question = prompt.rstrip().split("-- Question: ")[-1].split("\n")[0]
        with open(calls, "a") as fh:
            fh.write(json.dumps({"prompt": prompt, "grammar": grammar, "prefix": prefix, "n": n, "seed": seed,
                                 "temperature": temperature, "max_new_tokens": max_new_tokens,
                                 "scope": binder and {t: sorted(c) for t, c in binder.columns.items()}}) + "\n")
        sqls = ANSWERS.get(question, ANSWERS["completions"])
        return [Generation(sqls[i % len(sqls)], 5, 0.01, grammar is not None, [], [9.0, 0.5], [-1, -1],
                           logprob=-0.25) for i in range(n)]
    def generate(self, *a, **kw):
        return self.candidates(*a, **kw)[0]

s = Settings.from_env(model="scripted-large", api_token=sys.argv[4], data_dir=data_dir, candidates=1)
uvicorn.run(create_app(s, generator=ByQuestion()), host="127.0.0.1", port=port, log_level="warning")
'''


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real `nl2sql serve` (uvicorn, the FastAPI app, its guards) in a subprocess around the scripted model."""
    d = tmp_path_factory.mktemp("remote")
    port, calls = free_port(), d / "calls.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = d / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(calls), str(d / "data"), TOKEN],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/health", proc, log)
        yield url, calls
    finally:
        _stop(proc)


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _routed(settings, url, *outputs, **changes):
    """A pipeline whose scripted small model is unsure, escalating straight to the remote backend at `url`."""
    from nl2sql.generate import ScriptedGenerator
    s = settings.replace(**{"candidates": 2, "escalate_below": 0.9, "escalate_candidates": 0,
                            "escalate_model": f"openai:{url}/v1", "escalate_api_key": TOKEN,
                            "escalate_model_candidates": 3, **changes})
    return Pipeline(s, generator=ScriptedGenerator(list(outputs) or [UNSURE] * 4))


def test_an_unsure_question_is_answered_by_the_remote_server(settings, sqlite_db, backend, tmp_path):
    url, calls = backend
    before = len(_calls(calls))
    pipe = _routed(settings, url)
    a = pipe.ask(Q_FRANCE, str(sqlite_db))
    assert a.ok and a.escalated == "model" and a.route_note is None, a.route_note
    assert a.answered_by == "scripted-large + v7" and a.model == "scripted"  # who wrote the SQL; who was asked
    assert "France" in a.sql and set(a.df["Name"]) == {"Justin Brown", "Rose White", "John Nizinik", "Tribal King"}
    assert a.candidates == 3 and a.agreement == 3
    # the server's own confidence parts: all agree, 5 tokens of log-probability -0.25, one margin of two below 2
    assert a.confidence == pytest.approx(0.5 + 0.3 * math.exp(-0.25 / 5) + 0.2 * 0.5, abs=1e-4)
    [call] = _calls(calls)[before:]
    # the same prompt and grammar the small model got, the schema part marked for the server's prefix cache
    assert call["prompt"] == pipe.generator.prompts[0] and call["grammar"] == pipe.generator.grammars[0]
    assert call["prefix"] and call["prompt"].startswith(call["prefix"]) and "-- Question" not in call["prefix"]
    assert call["n"] == 3 and call["temperature"] == settings.temperature and call["max_new_tokens"] == 160
    # and it decodes with the same binder: the tables and columns of the prompt's schema
    assert call["scope"]["singer"] == ["age", "country", "is_male", "name", "singer_id", "song_name",
                                       "song_release_year"] and "concert" in call["scope"]
    log = QueryLog(tmp_path / "log.sqlite")
    entry = log.record(question=a.question, db="x", sql=a.sql, executed=True, model=a.model,
                       confidence=a.confidence, escalated=a.escalated, answered_by=a.answered_by)
    assert next(e for e in log.entries() if e["id"] == entry)["answered_by"] == "scripted-large + v7"
    gen = routing.larger_pipeline(pipe).generator
    assert isinstance(gen, RemoteGenerator) and gen.calls == 1 and gen.wall_s >= gen.server_s > 0


def test_sql_the_server_sends_is_validated_here_and_refused(settings, sqlite_db, backend):
    url, _ = backend   # the scripted server ignores the grammar: a DELETE and a column the schema lacks
    pipe = _routed(settings, url, repair_attempts=2)
    a = pipe.ask(Q_DROP, str(sqlite_db))
    assert a.ok and a.escalated is None and a.answered_by == "scripted" and a.candidates == 2
    assert "larger model's SQL failed" in a.route_note
    import nl2sql
    count = nl2sql.execute("SELECT COUNT(*) FROM singer", db=str(sqlite_db), settings=settings).df.iloc[0, 0]
    assert int(count) == 6


def test_a_wrong_key_is_a_clear_note_and_the_small_answer_stands(settings, sqlite_db, backend):
    url, _ = backend
    pipe = _routed(settings, url, escalate_api_key="not-the-token")
    a = pipe.ask(Q_FRANCE, str(sqlite_db))
    assert a.ok and a.escalated is None and a.raw_sql == NETHERLANDS
    assert "refused the API key" in a.route_note and "NL2SQL_ESCALATE_API_KEY" in a.route_note
    assert "not-the-token" not in a.route_note and TOKEN not in a.route_note
    with pytest.raises(ConfigError, match="HTTP 401"):
        RemoteGenerator(pipe.settings).model()


def test_a_backend_that_is_down_leaves_the_small_answer_and_is_not_asked_on_every_question(settings, sqlite_db):
    url = f"http://127.0.0.1:{free_port()}"            # nothing listens there
    pipe = _routed(settings, url)
    a = pipe.ask(Q_FRANCE, str(sqlite_db))
    assert a.ok and a.escalated is None and a.raw_sql == NETHERLANDS and a.answered_by == "scripted"
    assert "could not be reached" in a.route_note and "NL2SQL_ESCALATE_MODEL" in a.route_note
    retry_at = routing._down[pipe][0]
    b = pipe.ask("Which singers are from the Netherlands or France?", str(sqlite_db))
    assert b.ok and b.route_note == a.route_note and routing._down[pipe][0] == retry_at   # not tried again
    assert 20 < retry_at - time.monotonic() <= routing.RETRY_REMOTE_S


def test_a_backend_that_hangs_times_out(settings, sqlite_db):
    with socket.socket() as sock:   # accepts connections (the backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        pipe = _routed(settings, f"http://127.0.0.1:{sock.getsockname()[1]}", escalate_timeout=0.5)
        t0 = time.monotonic()
        a = pipe.ask(Q_FRANCE, str(sqlite_db))
    assert a.ok and a.escalated is None and "did not answer within 0.5 s" in a.route_note
    assert time.monotonic() - t0 < 10


def test_bad_settings_are_clear(settings):
    with pytest.raises(ConfigError, match="openai: followed by an http"):
        RemoteGenerator(settings.replace(escalate_model="openai:gpu-box:8000"))
    with pytest.raises(ConfigError, match="NL2SQL_ESCALATE_GRAMMAR"):
        RemoteGenerator(settings.replace(escalate_model="openai:http://h/v1", escalate_grammar="ebnf"))
    with pytest.raises(ConfigError, match="lora-modules"):
        RemoteGenerator(settings.replace(escalate_model="openai:http://h/v1", escalate_adapter="/some/adapter"))


def test_a_missing_model_name_says_what_is_served(settings, backend):
    url, _ = backend
    s = settings.replace(escalate_model=f"openai:{url}/v1", escalate_api_key=TOKEN, escalate_model_name="llama-70b")
    with pytest.raises(ConfigError, match="does not serve 'llama-70b'; it serves: scripted-large"):
        RemoteGenerator(s).model()
    with pytest.raises(ConnectError, match="could not be reached"):
        RemoteGenerator(s.replace(escalate_model=f"openai:http://127.0.0.1:{free_port()}")).model()


# --- nl2sql serve's side: the OpenAI endpoints, in process ----------------------------------------------------

class _Recorder:
    model_name, adapter_name = "scripted", None

    def __init__(self, text):
        self.text, self.asked = text, []

    def decode(self, ids):
        return ""

    def candidates(self, prompt, grammar, max_new_tokens, *, prefix=None, n=1, binder=None, seed=0,
                   temperature=0.7, forced=()):
        from nl2sql.generate import Generation
        self.asked.append({"prompt": prompt, "grammar": grammar, "prefix": prefix, "n": n, "seed": seed,
                           "temperature": temperature, "max_new_tokens": max_new_tokens,
                           "scope": binder and {t: sorted(c) for t, c in binder.columns.items()}})
        return [Generation(self.text, 4, 0.0, grammar is not None, [], [3.0, float("inf")], [-1, -1], logprob=-0.5)
                for _ in range(n)]


@pytest.fixture
def openai_app(settings, tmp_path):
    s = settings.replace(query_log=str(tmp_path / "log.sqlite"), api_token=TOKEN, serve_requests_per_minute=30)
    gen = _Recorder("SELECT name FROM singer\n-- Question: and more")
    return TestClient(create_app(s, generator=gen)), gen, s


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_serve_speaks_openai_completions_with_a_grammar(openai_app, sqlite_db, settings):
    c, gen, s = openai_app
    models = c.get("/v1/models", headers=_auth()).json()
    assert models["data"] == [{"id": s.model, "object": "model", "created": 0, "owned_by": "nl2sql"}]
    grammar = sql_grammar(Pipeline(settings).schema(str(sqlite_db)))
    prompt = "-- Database x. Tables:\nsinger(name text)\n-- Question: Who?\n-- SQL:\n"
    r = c.post("/v1/completions", headers=_auth(), json={
        "model": s.model, "prompt": prompt, "n": 3, "temperature": 0.5, "max_tokens": 50, "stop": ["\n--"],
        "seed": 11, "top_p": 1, "structured_outputs": {"grammar": grammar}, "nl2sql": {"prefix_chars": 35, "scope": {"singer": ["Name"]}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == s.model and len(body["choices"]) == 3
    first = body["choices"][0]
    assert first["text"] == "SELECT name FROM singer" and first["finish_reason"] == "stop"
    assert parses(grammar, first["text"])
    assert first["nl2sql"]["margins"] == [3.0, None] and first["nl2sql"]["logprob"] == -0.5
    assert gen.asked == [{"prompt": prompt, "grammar": grammar, "prefix": prompt[:35], "n": 3, "seed": 11,
                          "temperature": 0.5, "max_new_tokens": 50, "scope": {"singer": ["name"]}}]
    r = c.post("/v1/completions", headers=_auth(), json={"prompt": prompt, "guided_grammar": grammar})
    assert r.status_code == 200 and gen.asked[-1]["grammar"] == grammar and gen.asked[-1]["n"] == 1
    assert gen.asked[-1]["scope"] is None and gen.asked[-1]["prefix"] is None
    assert gen.asked[-1]["max_new_tokens"] == s.max_new_tokens
    assert QueryLog(s.query_log_path).entries() == []   # completions are not questions: nothing logged


@pytest.mark.parametrize("change, status, words", [
    ({"structured_outputs": {"grammar": "start: foo("}}, 422, "does not compile"),
    ({"structured_outputs": {"regex": "SELECT.*"}}, 422, "Lark grammar only"),
    ({"stream": True}, 422, "Streaming"),
    ({"n": 500}, 422, "NL2SQL_SERVE_BATCH_ROWS"),
    ({"max_tokens": 100000}, 422, "NL2SQL_MAX_NEW_TOKENS"),
    ({"temperature": -1}, 422, "temperature"),
    ({"prompt": ""}, 422, "prompt"),
    ({"nl2sql": {"scope": {"singer": "name"}}}, 422, "table names to lists of column names"),
    ({"model": "gpt-4"}, 400, "GET /v1/models"),
])
def test_serve_refuses_bad_completion_requests_clearly(openai_app, change, status, words):
    c, gen, _ = openai_app
    r = c.post("/v1/completions", headers=_auth(), json={"prompt": "-- SQL:\n", **change})
    assert r.status_code == status, r.text
    assert words in r.json()["error"] + (r.json()["hint"] or "") and gen.asked == []


def test_completions_sit_behind_the_token_and_the_rate_limit(openai_app):
    c, gen, _ = openai_app
    for headers in ({}, _auth("wrong")):
        assert c.post("/v1/completions", headers=headers, json={"prompt": "x"}).status_code == 401
        assert c.get("/v1/models", headers=headers).status_code == 401
    codes = [c.get("/v1/models", headers=_auth()).status_code for _ in range(40)]
    assert codes[0] == 200 and codes[-1] == 429
    assert gen.asked == []


# --- a vLLM-shaped server: the grammar fields and logprobs of a backend that is not nl2sql ---------------------

class _VllmLike(BaseHTTPRequestHandler):
    bodies: list = []

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "Qwen/Qwen2.5-Coder-7B", "object": "model", "owned_by": "vllm"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append({**body, "auth": self.headers.get("Authorization")})
        lp = {"tokens": ["SELECT", " name"], "token_logprobs": [-0.05, -1.0],
              "top_logprobs": [{"SELECT": -0.05, "WITH": -4.05}, {" name": -1.0, " Name": -1.5}]}
        self._send({"choices": [{"index": i, "text": " SELECT name FROM singer", "logprobs": lp,
                                 "finish_reason": "stop" if i == 0 else "length"} for i in range(body["n"])]})

    def _send(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_a_vllm_server_gets_both_grammar_fields_and_its_logprobs_become_confidence(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VllmLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gen = RemoteGenerator(settings.replace(escalate_model=f"openai:http://127.0.0.1:{server.server_port}/v1",
                                               escalate_api_key="k-123"))
        out = gen.candidates("-- SQL:\n", "start: \"SELECT\"", 99, prefix="-- ", n=2, seed=5, temperature=0.3)
    finally:
        server.shutdown()
    [body] = _VllmLike.bodies
    assert body["structured_outputs"] == {"grammar": "start: \"SELECT\""} and body["guided_grammar"] == "start: \"SELECT\""
    assert body["model"] == "Qwen/Qwen2.5-Coder-7B" and body["auth"] == "Bearer k-123" and "nl2sql" not in body
    assert (body["n"], body["seed"], body["temperature"], body["max_tokens"], body["logprobs"]) == (2, 5, 0.3, 99, 2)
    assert gen.model_name == "Qwen/Qwen2.5-Coder-7B" and gen.adapter_name is None
    assert out[0].text == "SELECT name FROM singer" and out[0].tokens == 2 and out[0].error is None
    assert out[0].margins == [4.0, 0.5] and round(out[0].logprob, 3) == -1.05
    assert "cut off" in out[1].error   # finish_reason length: a cut statement is no answer


@pytest.mark.model
def test_escalation_to_a_real_nl2sql_serve_with_the_bundled_model(settings, sqlite_db, tmp_path):
    """`nl2sql serve` (the bundled model, batched, llguidance grammar) as the escalation target of an in-process
    bundled model: the drop-in case, over real HTTP."""
    srv = ServeProcess(tmp_path, {"NL2SQL_API_TOKEN": TOKEN, "NL2SQL_DATA_DIR": str(settings.data_dir),
                                  "NL2SQL_QUERY_LOG": str(tmp_path / "server-log.sqlite")}).start()
    url = srv.url
    try:
        pipe = Pipeline(settings.replace(escalate_below=1.01, escalate_candidates=0, escalate_model=f"openai:{url}/v1",
                                         escalate_api_key=TOKEN, escalate_model_candidates=6))
        a = pipe.ask("How many singers are there?", str(sqlite_db))
        gen = routing.larger_pipeline(pipe).generator
        assert gen.calls == 1 and gen.model_name == settings.model
        if a.escalated == "model":
            assert a.answered_by.startswith(settings.model) and a.candidates == 6 and a.route_note is None
        else:  # the server's SQL failed where the small model's did not: that answer stands, with a note
            assert "larger model's SQL failed" in a.route_note
        assert a.ok and int(a.df.iloc[0, 0]) == 6
    finally:
        srv.stop()
