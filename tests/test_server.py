"""`nl2sql serve` (nl2sql/server.py) and its client (nl2sql/client.py), with the scripted model on the demo warehouse:
tokens, limits, database allowlist, the query log's client column, a client that disconnects, ask(server=URL)."""
from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from nl2sql.generate import ScriptedGenerator  # noqa: E402
from nl2sql.querylog import QueryLog  # noqa: E402
from nl2sql.server import check_listen, create_app  # noqa: E402
from serving import SlowScripted, free_port  # noqa: E402

TOKEN = "s3cret-token-for-tests"
COUNT = "SELECT COUNT(*) FROM customers"


@pytest.fixture
def srv_settings(settings, tmp_path):
    return settings.replace(query_log=str(tmp_path / "log.sqlite"), api_token=TOKEN, candidates=1)


def client_for(s, outputs=(), generator=None):
    return TestClient(create_app(s, generator=generator or ScriptedGenerator(list(outputs))))


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_ask_answers_and_logs_the_client(srv_settings):
    c = client_for(srv_settings, [COUNT])
    r = c.post("/v1/ask", json={"question": "How many customers are there?"},
               headers={**auth(), "X-Nl2SQL-Client": "ana@laptop"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["error"] is None and body["sql"].lower().startswith("select count")
    n = body["result"]["rows"][0][0]
    import nl2sql
    assert n == int(nl2sql.execute(COUNT, settings=srv_settings).df.iloc[0, 0])
    [entry] = QueryLog(srv_settings.query_log_path).entries()
    assert entry["id"] == body["entry_id"] and entry["client"].startswith("ana@laptop@")
    assert entry["question"] == "How many customers are there?" and entry["db"] == "demo"
    r = c.post("/v1/feedback", json={"entry_id": body["entry_id"], "rating": 1}, headers=auth())
    assert r.status_code == 200
    assert QueryLog(srv_settings.query_log_path).entries()[0]["rating"] == 1


def test_missing_or_wrong_token_is_401_and_nothing_is_logged(srv_settings, caplog):
    c = client_for(srv_settings, [COUNT, COUNT])
    for headers in ({}, auth("wrong-token"), {"Authorization": TOKEN}):
        r = c.post("/v1/ask", json={"question": "How many customers are there?"}, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "NL2SQL_API_TOKEN" in r.json()["hint"]
    assert c.get("/v1/schema", headers=auth("nope")).status_code == 401
    assert c.get("/health").status_code == 200          # probes and the API docs need no token
    assert c.get("/openapi.json").status_code == 200
    assert QueryLog(srv_settings.query_log_path).entries() == []
    log_bytes = srv_settings.query_log_path.read_bytes()
    assert b"wrong-token" not in log_bytes and TOKEN.encode() not in log_bytes
    assert "wrong-token" not in caplog.text and TOKEN not in caplog.text


def test_request_over_the_size_limit_is_413(srv_settings):
    c = client_for(srv_settings.replace(serve_max_request_bytes=2000), [COUNT])
    r = c.post("/v1/ask", json={"question": "x" * 5000}, headers=auth())
    assert r.status_code == 413 and "NL2SQL_SERVE_MAX_REQUEST_BYTES" in r.json()["hint"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"x" * 500
    r = c.post("/v1/ask", content=chunks(), headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert QueryLog(srv_settings.query_log_path).entries() == []


def test_a_flood_gets_429_with_retry_after_and_the_service_stays_up(srv_settings):
    c = client_for(srv_settings.replace(serve_requests_per_minute=5), [COUNT] * 10)
    codes = [c.get("/v1/databases", headers=auth()).status_code for _ in range(12)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    r = c.get("/v1/databases", headers=auth())
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "NL2SQL_SERVE_REQUESTS_PER_MINUTE" in r.json()["hint"]
    assert c.get("/health").json()["status"] == "ok"
    assert 'nl2sql_requests_total{path="/v1/databases",status="429"}' in c.get("/metrics").text


@pytest.mark.parametrize("db", ["postgresql://postgres@127.0.0.1:5432/postgres", "/etc/passwd", "sales"])
def test_a_database_outside_the_servers_list_is_403(srv_settings, db):
    c = client_for(srv_settings, [COUNT])
    for r in (c.post("/v1/ask", json={"question": "How many customers?", "db": db}, headers=auth()),
              c.post("/v1/execute", json={"sql": "SELECT 1", "db": db}, headers=auth()),
              c.get("/v1/schema", params={"db": db}, headers=auth())):
        assert r.status_code == 403, r.text
        assert "NL2SQL_SERVE_DATABASES" in r.json()["hint"] and "demo" in r.json()["error"]
        assert "postgres@" not in r.text
    assert QueryLog(srv_settings.query_log_path).entries() == []


def test_named_databases_are_served(srv_settings, sqlite_db):
    s = srv_settings.replace(serve_databases=f"demo,singers={sqlite_db}")
    c = client_for(s, ["SELECT COUNT(*) FROM singer"])
    assert c.get("/v1/databases", headers=auth()).json()["databases"] == ["demo", "singers"]
    r = c.post("/v1/ask", json={"question": "How many singers?", "db": "singers"}, headers=auth())
    assert r.json()["result"]["rows"] == [[6]]
    tables = {t["name"] for t in c.get("/v1/schema", params={"db": "singers"}, headers=auth()).json()["tables"]}
    assert {"singer", "concert"} <= tables


def test_execute_takes_the_guarded_path(srv_settings):
    c = client_for(srv_settings)
    r = c.post("/v1/execute", json={"sql": "DELETE FROM customers"}, headers=auth())
    assert r.status_code == 422 and r.json()["error_type"] in ("UnsafeSQLError", "ValidationError")
    r = c.post("/v1/execute", json={"sql": COUNT}, headers=auth())
    assert r.status_code == 200 and r.json()["result"]["rows"][0][0] > 0


def test_input_errors_are_clear(srv_settings):
    c = client_for(srv_settings, [COUNT])
    r = c.post("/v1/ask", json={"question": "   "}, headers=auth())
    assert r.status_code == 422 and r.json()["error_type"] == "InputError"
    r = c.post("/v1/feedback", json={"entry_id": 1, "rating": 5}, headers=auth())
    assert r.status_code == 422
    # feedback on an answer the log does not have is refused, not acknowledged and lost
    r = c.post("/v1/feedback", json={"entry_id": 987654, "rating": 1}, headers=auth())
    assert r.status_code == 422 and r.json()["error_type"] == "InputError" and "987654" in r.json()["error"]
    # a malformed body names the field, as nl2sql's own errors do (not FastAPI's bare `detail`)
    r = c.post("/v1/ask", json={"question": "How many?", "examples": [["a question without its SQL"]]}, headers=auth())
    assert r.status_code == 422 and r.json()["error_type"] == "InputError", r.text
    assert "examples.0.1" in r.json()["error"] and "/docs" in r.json()["hint"] and "without its SQL" not in r.text
    # a follow-up's context is bounded like the server's own examples: it cannot fill the shared model's prompt
    pair = ["How many customers are there?", COUNT]
    r = c.post("/v1/ask", json={"question": "and now?", "examples": [pair] * (srv_settings.examples + 1)},
               headers=auth())
    assert r.status_code == 422 and f"at most {srv_settings.examples}" in r.json()["error"]
    long_question = "why " * (srv_settings.max_question_chars // 4 + 1)
    r = c.post("/v1/ask", json={"question": "and now?", "examples": [[long_question, COUNT]]}, headers=auth())
    assert r.status_code == 422 and "too long" in r.json()["error"]
    assert QueryLog(srv_settings.query_log_path).entries() == []


def test_no_token_no_listening_beyond_localhost(settings):
    from nl2sql.errors import ConfigError
    check_listen("127.0.0.1", settings.replace(api_token=""))
    with pytest.raises(ConfigError, match="NL2SQL_API_TOKEN"):
        check_listen("0.0.0.0", settings.replace(api_token=""))
    check_listen("0.0.0.0", settings.replace(api_token=TOKEN))


# --- a real uvicorn server in a thread: disconnects and the client library ---------------------------

@pytest.fixture
def live(srv_settings):
    import uvicorn
    servers = []

    def start(s, generator):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(s, generator=generator), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        servers.append(server)
        return f"http://127.0.0.1:{port}"
    yield start
    for server in servers:
        server.should_exit = True


def test_a_client_that_disconnects_cancels_its_work_and_nothing_is_logged(srv_settings, live):
    gen = SlowScripted([COUNT], seconds=10)   # 'for ever', unless cancelled
    url = live(srv_settings, gen)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"question": "How many customers are there?"}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert gen.started.wait(10)
    sock.close()                      # the analyst closed the notebook
    assert gen.cancelled.wait(10)     # the work stopped well before its 10 s
    time.sleep(0.2)
    assert QueryLog(srv_settings.query_log_path).entries() == []
    from nl2sql.client import Client
    metrics = urllib_get(url + "/metrics")
    assert "nl2sql_asks_cancelled_total 1" in metrics
    assert Client(url, token=TOKEN).health()["status"] == "ok"   # and the service is still up


def urllib_get(url):
    import urllib.request
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def test_ask_through_the_server_returns_the_same_answer(srv_settings, live, monkeypatch):
    import nl2sql
    from nl2sql.api import Answer
    url = live(srv_settings, ScriptedGenerator([COUNT, COUNT]))
    monkeypatch.setenv("NL2SQL_API_TOKEN", TOKEN)
    a = nl2sql.ask("How many customers are there?", server=url)
    assert isinstance(a, Answer) and a.ok and a.model == "scripted" and a.db == "demo"
    assert int(a.df.iloc[0, 0]) == int(nl2sql.execute(COUNT, settings=srv_settings).df.iloc[0, 0])
    monkeypatch.setenv("NL2SQL_SERVER", url)   # the environment variable does the same, stages streamed
    stages = []
    b = nl2sql.ask("How many customers are there?", progress=stages.append)
    assert b.sql == a.sql and b.entry_id == a.entry_id + 1
    assert "generate" in stages and "execute" in stages
    entries = QueryLog(srv_settings.query_log_path).entries()
    assert len(entries) == 2 and all(e["client"] for e in entries)


def test_client_errors_say_what_to_do(srv_settings, live):
    from nl2sql.client import Client, ServerWentAway
    from nl2sql.errors import ConfigError, ConnectError, InputError
    url = live(srv_settings, ScriptedGenerator([]))
    with pytest.raises(ConfigError, match="token"):
        Client(url, token="wrong").ask("How many customers?")
    with pytest.raises(InputError):
        Client(url, token=TOKEN).ask("   ")
    with pytest.raises(ConnectError, match="nl2sql serve"):
        Client(f"http://127.0.0.1:{free_port()}", token=TOKEN).health()   # nothing listens there
    with socket.socket() as silent:   # takes the connection (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(ConnectError, match=r"within 0.5 s") as slow:
            Client(f"http://127.0.0.1:{silent.getsockname()[1]}", token=TOKEN, timeout=0.5).health()
        assert "timeout=" in slow.value.hint and not isinstance(slow.value, ServerWentAway)
    with pytest.raises(InputError, match="name of one of the server's databases"):
        Client(url, token=TOKEN).ask("How many?", db=object())
    with pytest.raises(InputError, match="NL2SQL_API_TOKEN") as in_url:   # a token in the URL is never echoed
        Client(url.replace("http://", f"http://ana:{TOKEN}@"))
    assert TOKEN not in str(in_url.value)
    for bad in ("localhost:8765", "http://127.0.0.1:port", "http://[::1", "http://", "http://my host:8765"):
        with pytest.raises(InputError, match="not an http\\(s\\) URL with a host"):   # not 'the server went away'
            Client(bad, token=TOKEN)


def test_an_old_query_log_gains_the_client_column(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, db TEXT, "
                "question TEXT NOT NULL, sql TEXT, corrected_sql TEXT, executed INTEGER, error TEXT, rating INTEGER, "
                "comment TEXT, model TEXT, adapter TEXT, latency REAL)")
    con.execute("INSERT INTO entries (created, question) VALUES (1, 'old question')")
    con.commit()
    con.close()
    log = QueryLog(path)
    log.record(question="new", db="demo", sql="SELECT 1", executed=True, client="bo@host")
    old, new = log.entries()
    assert old["client"] is None and new["client"] == "bo@host"


# --- the real service in a subprocess, stopped mid-answer and restarted ---------------------------------

@pytest.mark.parametrize("sig,seconds,finishes", [
    ("SIGTERM", 30, False),   # past the 5 s grace period: the question is dropped, the client told so
    ("SIGTERM", 1.5, True),   # within the grace period: the answer is written and logged
    ("SIGKILL", 30, False),   # no chance to say anything: the client sees the connection drop
])
def test_a_restart_mid_answer_is_a_clear_error_and_the_log_stays_consistent(tmp_path, sig, seconds, finishes):
    import signal

    from nl2sql.client import Client, ServerWentAway
    from serving import ServeProcess
    log_path = tmp_path / "log.sqlite"
    srv = ServeProcess(tmp_path, {"NL2SQL_QUERY_LOG": str(log_path), "NL2SQL_CANDIDATES": "1",
                                  "NL2SQL_DATA_DIR": str(tmp_path / "data"), "NL2SQL_API_TOKEN": TOKEN},
                       scripted=(seconds, [COUNT])).start()
    question = "How many customers are there?"
    try:
        asking, out = srv.ask_in_background(question, token=TOKEN, name="restart-test")
        srv.wait_for("generating 1")      # the question is with the model
        took = srv.stop(getattr(signal, sig))
        asking.join(30)
        assert took < 8                   # SIGTERM: the 5 s grace period, then gone
        entries = QueryLog(log_path).entries()   # the log opens
        con = sqlite3.connect(log_path)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()
        if finishes:
            assert out["answer"].ok and "error" not in out
            [entry] = entries               # complete: its SQL, result flag and client
            assert (entry["question"], entry["sql"], entry["executed"]) == (question, COUNT, 1)
            assert entry["client"].startswith("restart-test@")
        else:
            err = out["error"]
            assert isinstance(err, ServerWentAway), repr(err)
            if sig == "SIGTERM":            # past the grace period the server still said why (503, not a bare 500)
                assert err.status == 503 and "stopping" in str(err) and "nothing was logged" in str(err)
            else:                           # killed: the connection dropped mid-answer
                assert "went away" in str(err)
            assert "Retry" in str(err) and "Traceback" not in str(err)
            assert entries == []            # the dropped question is absent, not half-written
        if sig == "SIGTERM":
            assert "Traceback" not in srv.log.read_text()

        srv.scripted = (0, [COUNT])         # the restarted model answers at once
        srv.start()                         # the same port, the same query log
        again = Client(srv.url, token=TOKEN, name="restart-test").ask(question)
        assert again.ok and again.sql == COUNT and int(again.df.iloc[0, 0]) > 0
        entries = QueryLog(log_path).entries()   # the log accepts the next write
        assert [e["question"] for e in entries] == [question] * (2 if finishes else 1)
        assert entries[-1]["id"] == again.entry_id and entries[-1]["executed"] == 1
    finally:
        srv.stop(signal.SIGKILL)


def test_a_follow_up_through_the_server_carries_its_context_and_the_schema_comes_back_whole(srv_settings, live):
    from nl2sql.client import Client
    from nl2sql.schema import Schema
    gen = ScriptedGenerator([COUNT, COUNT + " WHERE segment = 'Consumer'"])
    client = Client(live(srv_settings, gen), token=TOKEN)
    first = client.ask("How many customers are there?")
    second = client.ask("only consumers", examples=[(first.question, first.sql)])
    assert "-- Question: How many customers are there?\n-- SQL:\nSELECT COUNT(*) FROM customers\n" in gen.prompts[1]
    entries = QueryLog(srv_settings.query_log_path).entries()
    assert entries[0]["context"] is None
    assert json.loads(entries[1]["context"]) == [["How many customers are there?", COUNT]]
    assert second.entry_id == entries[1]["id"]
    schema = client.schema()
    assert isinstance(schema, Schema) and schema.name == "demo" and schema.dialect == "duckdb"
    customers = next(t for t in schema.tables if t.name == "customers")
    assert any(c.primary_key for c in customers.columns) and all(isinstance(c.samples, tuple) for c in customers.columns)


@pytest.mark.model
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_nl2sql_serve_with_the_bundled_model_stopped_while_decoding(tmp_path, settings, sig):
    """The CLI's `nl2sql serve`, the bundled model in its batcher: stopped while the question's rows are in the
    decoding batch (/metrics says so). SIGTERM: within the grace period the answer is finished and logged, or
    dropped with ServerWentAway; SIGKILL: ServerWentAway. Either way the log holds only complete rows and the
    restarted server answers the same question."""
    import signal
    import urllib.request

    from nl2sql.client import Client, ServerWentAway
    from serving import ServeProcess
    log_path = tmp_path / "log.sqlite"
    srv = ServeProcess(tmp_path, {"NL2SQL_QUERY_LOG": str(log_path), "NL2SQL_DATA_DIR": str(settings.data_dir),
                                  "NL2SQL_API_TOKEN": TOKEN}).start()
    question = "How many stores are in each region?"
    try:
        asking, out = srv.ask_in_background(question, token=TOKEN)
        deadline = time.monotonic() + 600   # the first question loads the model
        while True:
            with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as r:
                rows = re.search(r"^nl2sql_batch_rows (\d+)$", r.read().decode(), re.M)
            if rows and int(rows.group(1)) > 0:
                break                       # the question's rows are being decoded
            assert asking.is_alive() and time.monotonic() < deadline, out
            time.sleep(0.01)
        assert srv.stop(getattr(signal, sig)) < 8
        asking.join(30)
        entries = QueryLog(log_path).entries()
        if "answer" in out:
            assert sig == "SIGTERM" and out["answer"].ok
            assert [(e["question"], e["sql"], e["executed"]) for e in entries] == [(question, out["answer"].sql, 1)]
        else:
            assert isinstance(out["error"], ServerWentAway) and "Retry" in str(out["error"]), repr(out["error"])
            assert entries == []
        srv.start()
        again = Client(srv.url, token=TOKEN).ask(question)
        assert again.ok and len(again.df) == 5
        assert QueryLog(log_path).entries()[-1]["id"] == again.entry_id
    finally:
        srv.stop(signal.SIGKILL)


def test_tokens_stay_out_of_the_settings_repr(srv_settings):
    """repr(settings) lands in logs and bug reports: the server's token and an escalation key are not in it."""
    s = srv_settings.replace(escalate_api_key="k-escalate-secret")
    assert s.api_token == TOKEN and TOKEN not in repr(s) and "k-escalate-secret" not in repr(s)
    assert "query_log=" in repr(s)   # the rest is still there


# --- the streamed /v1/ask (NDJSON: each stage as it starts, then the answer) ---------------------------------

def post(url, payload, token=TOKEN, headers=None):
    """POST JSON with urllib: (status, content type, body bytes), HTTP errors included."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {}),
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def stream_lines(url, payload, headers=None):
    """The streamed answer's lines as they arrive: [(seconds since the request, parsed line)]."""
    import urllib.request
    req = urllib.request.Request(url + "/v1/ask", data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
                                          **(headers or {})})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("application/x-ndjson")
        return [(time.monotonic() - t0, json.loads(line)) for line in r]


def in_process_stages(settings, question):
    from nl2sql.api import Pipeline
    stages = []
    Pipeline(settings, generator=ScriptedGenerator([COUNT])).ask(question, progress=stages.append)
    return stages


def test_streamed_ask_sends_each_stage_as_it_starts_then_the_same_answer(srv_settings, live):
    from nl2sql.client import Client
    question = "How many customers are there?"
    url = live(srv_settings, SlowScripted([COUNT], seconds=1.0))   # the model takes a second to write
    lines = stream_lines(url, {"question": question, "stream": True}, headers={"X-Nl2SQL-Client": "ana@laptop"})
    *stages, (answered_at, last) = lines
    expected = in_process_stages(srv_settings, question)   # the stages Pipeline.ask reports in process, in order
    assert [line for _, line in stages] == [{"stage": s} for s in expected]
    assert expected[0] == "schema" and expected.index("generate") < expected.index("execute")
    generate_at = next(t for t, line in stages if line == {"stage": "generate"})
    assert answered_at - generate_at > 0.8   # sent when the model began, not with the answer
    streamed = last["answer"]
    status, kind, plain = post(url + "/v1/ask", {"question": question})   # the non-streamed form
    assert status == 200 and kind == "application/json"
    plain = json.loads(plain)
    assert plain["entry_id"] == streamed["entry_id"] + 1

    def same(body):
        return {k: v for k, v in body.items() if k not in ("entry_id", "timings")}
    assert same(streamed) == same(plain) and set(streamed["timings"]) == set(plain["timings"])
    first, second = QueryLog(srv_settings.query_log_path).entries()   # both logged, the streamed one with its client
    assert first["id"] == streamed["entry_id"] and first["client"].startswith("ana@laptop@")
    assert (first["question"], first["sql"], first["executed"]) == (second["question"], second["sql"], 1)
    # Accept: application/x-ndjson asks for the same stream
    lines = stream_lines(url, {"question": question}, headers={"Accept": "application/x-ndjson"})
    assert [line for _, line in lines[:-1]] == [{"stage": s} for s in expected] and "answer" in lines[-1][1]
    # the client: progress(stage) per stage, and the same Answer as without it
    seen = []
    client = Client(url, token=TOKEN)
    a = client.ask(question, progress=seen.append)
    b = client.ask(question)
    assert seen == expected
    assert (a.sql, a.model, a.db, a.df.to_dict()) == (b.sql, b.model, b.db, b.df.to_dict())
    assert b.entry_id == a.entry_id + 1


def test_streamed_ask_keeps_every_guard_and_errors_match(srv_settings, live):
    from nl2sql.client import Client
    from nl2sql.errors import ConfigError
    url = live(srv_settings.replace(serve_requests_per_minute=6), ScriptedGenerator([COUNT]))
    streamed = {"Accept": "application/x-ndjson"}
    status, _, body = post(url + "/v1/ask", {"question": "How many customers?", "stream": True}, token=None)
    assert status == 401 and "NL2SQL_API_TOKEN" in json.loads(body)["hint"]
    with pytest.raises(ConfigError, match="token"):
        Client(url, token="wrong").ask("How many customers?", progress=print)
    # a database outside the list, and an unusable question: the same status and bytes in both forms
    for payload, code, hint in (({"question": "How many customers?", "db": "/etc/passwd"}, 403, "NL2SQL_SERVE_DATABASES"),
                                ({"question": "  "}, 422, "e.g.")):
        plain = post(url + "/v1/ask", payload)
        assert plain[0] == code and hint in json.loads(plain[2])["hint"]
        assert post(url + "/v1/ask", {**payload, "stream": True}) == plain
        assert post(url + "/v1/ask", payload, headers=streamed) == plain
    # six requests so far (a 401 takes none of the client's rate): the seventh in the minute is refused
    status, _, body = post(url + "/v1/ask", {"question": "How many customers?", "stream": True})
    assert status == 429 and "NL2SQL_SERVE_REQUESTS_PER_MINUTE" in json.loads(body)["hint"]
    assert QueryLog(srv_settings.query_log_path).entries() == []


def test_a_streamed_request_over_the_size_limit_is_413(srv_settings):
    c = client_for(srv_settings.replace(serve_max_request_bytes=2000), [COUNT])
    r = c.post("/v1/ask", json={"question": "x" * 5000, "stream": True}, headers=auth())
    assert r.status_code == 413 and "NL2SQL_SERVE_MAX_REQUEST_BYTES" in r.json()["hint"]
    assert QueryLog(srv_settings.query_log_path).entries() == []


def test_a_client_that_disconnects_mid_stream_cancels_its_work_and_nothing_is_logged(srv_settings, live):
    gen = SlowScripted([COUNT], seconds=10)   # 'for ever', unless cancelled
    url = live(srv_settings, gen)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"question": "How many customers are there?", "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    sock.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b'{"stage": "generate"}' not in received:   # the stream has begun: the model is writing
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 200") and gen.started.is_set()
    sock.close()                      # the analyst closed the notebook
    assert gen.cancelled.wait(10)     # the work stopped well before its 10 s
    time.sleep(0.2)
    assert QueryLog(srv_settings.query_log_path).entries() == []
    metrics = urllib_get(url + "/metrics")
    assert "nl2sql_asks_cancelled_total 1" in metrics and "nl2sql_asks_in_flight 0" in metrics


# --- a corrected SQL is checked against its answer's database before it is written -------------------------

@pytest.mark.parametrize("bad,why", [
    ("DELETE FROM customers", "read-only"),
    ("SELECT COUNT(*) FROM customers; DROP TABLE customers", "one statement"),
    ("SELECT COUNT(*) FROM customers WHERE no_such_column = 1", "no_such_column"),
    ("SELECT 1", "reads no table"),
])
def test_a_corrected_sql_that_is_not_one_read_only_query_over_the_schema_is_refused(srv_settings, bad, why):
    c = client_for(srv_settings, [COUNT])
    entry = c.post("/v1/ask", json={"question": "How many customers are there?"}, headers=auth()).json()["entry_id"]
    before = QueryLog(srv_settings.query_log_path).entries()
    r = c.post("/v1/feedback", json={"entry_id": entry, "rating": -1, "corrected_sql": bad}, headers=auth())
    assert r.status_code == 422 and r.json()["error_type"] == "InputError", r.text
    assert f"answer {entry} was not saved" in r.json()["error"] and why in r.json()["error"]
    assert "/v1/schema?db=demo" in r.json()["hint"]
    assert QueryLog(srv_settings.query_log_path).entries() == before   # nothing written, not even the rating


def test_a_valid_correction_is_stored_as_checked(srv_settings, live):
    from nl2sql.client import Client
    from nl2sql.errors import InputError
    client = Client(live(srv_settings, ScriptedGenerator([COUNT])), token=TOKEN)
    a = client.ask("How many consumer customers are there?")
    fixed = "select count(*) from customers where segment = 'Consumer'"
    with pytest.raises(InputError, match="not saved"):      # the client raises the server's InputError
        client.feedback(a.entry_id, corrected_sql="UPDATE customers SET segment = 'x'")
    client.feedback(a.entry_id, rating=-1, corrected_sql=fixed)
    [e] = QueryLog(srv_settings.query_log_path).entries()
    assert e["corrected_sql"] == "SELECT COUNT(*) FROM customers WHERE segment = 'Consumer'" and e["rating"] == -1
    with pytest.raises(InputError, match="no answer 424242"):
        client.feedback(424242, corrected_sql=fixed)


def test_a_correction_for_an_answer_asked_on_a_database_this_server_does_not_serve_is_refused(srv_settings):
    c = client_for(srv_settings, [COUNT])
    log = QueryLog(srv_settings.query_log_path)
    elsewhere = log.record(question="How many?", db="/data/other.sqlite", sql="SELECT 1", executed=True)  # shared log
    before = log.entry(elsewhere)
    r = c.post("/v1/feedback", json={"entry_id": elsewhere, "corrected_sql": COUNT}, headers=auth())
    assert r.status_code == 403 and "does not serve" in r.json()["error"], r.text
    assert log.entry(elsewhere) == before and log.entry(elsewhere + 1) is None
