"""`nl2sql serve`: one warm model shared by every analyst, notebook and app over HTTP (FastAPI on uvicorn).

Same Settings and the same guarded path as the library: `/v1/ask` runs `Pipeline.ask`, `/v1/execute` runs
`executor.run_checked`. What the service adds:
  - one Pipeline whose generator is a BatchingGenerator (nl2sql/batching.py): questions asked together decode
    in one batch, each answer the one its question gets alone;
  - a bearer token (NL2SQL_API_TOKEN) on everything but /health, /metrics and the API docs, compared in constant time
    and never logged; without one the service listens on localhost only;
  - a request size limit (413) and a per-client rate limit (429 with Retry-After);
  - databases by name only (NL2SQL_SERVE_DATABASES): a client cannot make the server open a URL or a file;
  - a client that disconnects mid-answer cancels its work (its rows leave the batch) and nothing is logged;
    an answer is logged in one transaction once it is complete, with the client that asked;
  - `/v1/ask` streamed on request (NDJSON): each stage's name as it starts, then the same answer;
  - a corrected SQL sent as feedback is checked against its answer's database before it is written.
Errors come back as JSON {error, error_type, hint}; the client raises the same Nl2SqlError subclass.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, whose models are local
import asyncio
import contextvars
import dataclasses
import hmac
import importlib
import ipaddress
import json
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from .config import Settings
from .errors import ConfigError, ConnectError, InputError, ModelError, Nl2SqlError, ValidationError

CLIENT_HEADER = "x-nl2sql-client"
_KNOWN_PATHS = {"/health", "/metrics", "/docs", "/openapi.json", "/v1/ask", "/v1/execute", "/v1/feedback", "/v1/schema",
                "/v1/databases",
                "/v1/models", "/v1/completions"}  # other paths count as "other" in /metrics (no label per scanned URL)
# no token and no rate limit: probes, scrapers and the API docs (counts and the API's shape only, no data)
_OPEN_PATHS = {"/health", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


def _require_fastapi():
    try:
        for name in ("fastapi", "uvicorn"):
            importlib.import_module(name)
    except ImportError:
        raise ConfigError("`nl2sql serve` needs FastAPI and uvicorn.", hint='pip install "nl2sql[serve]"') from None


class Forbidden(Nl2SqlError):
    """The request names something this server does not serve (a database outside its list)."""


class ServerStopping(Nl2SqlError):
    """The server is stopping (SIGTERM, a restart) and dropped the request before its answer (503)."""


class _Commit:
    """Whether a request's answer reached the query log, decided once: the work writes the log and a stop (or a
    disconnect) cancels it under one lock, so a stop that races the write either comes first (nothing is written)
    or waits for it (and the client is told the answer was logged). Without it, a SIGTERM that landed between the
    last cancellation check and the write told the client "nothing was logged" of an answer that was."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entry = None    # the log entry's id once written

    def write(self, record, check_cancelled) -> object:
        """record()'s result, unless check_cancelled() raises first (the request was dropped: RequestCancelled)."""
        with self.lock:
            check_cancelled()
            self.entry = record()
            return self.entry

    def cancel(self, event: threading.Event):
        """Set the request's cancel event once any write in progress is done; the entry id it wrote, or None."""
        with self.lock:
            event.set()
            return self.entry


_commit: contextvars.ContextVar = contextvars.ContextVar("nl2sql_commit", default=None)


def database_map(settings: Settings) -> dict:
    """NL2SQL_SERVE_DATABASES as {name: db} (db None = the demo warehouse).

    >>> database_map(Settings(serve_databases="demo, sales=postgresql://ro@db/sales"))
    {'demo': None, 'sales': 'postgresql://ro@db/sales'}
    """
    out: dict = {}
    for part in (p.strip() for p in settings.serve_databases.split(",")):
        if not part:
            continue
        if part == "demo":
            out["demo"] = None
            continue
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ConfigError(f"NL2SQL_SERVE_DATABASES entry {part.split('://')[0]!r} is not name=URL-or-path.",
                              hint="Example: NL2SQL_SERVE_DATABASES='demo,sales=postgresql://ro@db/sales'.")
        out[name.strip()] = target.strip()
    return out or {"demo": None}


def is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, settings: Settings) -> None:
    """Refuse to listen beyond localhost without a token (anyone who can reach the port could ask)."""
    if not is_local(host) and not settings.api_token:
        raise ConfigError(f"Refusing to listen on {host} without a token: anyone who reaches it could query the "
                          "databases.", hint="Set NL2SQL_API_TOKEN to a long random string (clients send the same), "
                                             "or listen on 127.0.0.1.")


class _RateLimiter:
    """A token bucket per client: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, per_minute))
        self._buckets: dict = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 10_000:  # forget the idle ones
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 120}
            return (1 - tokens) / self.rate


class _Metrics:
    """Counters for /metrics (Prometheus text format)."""

    def __init__(self):
        self.requests: dict = {}      # (path, status) -> count
        self.asks = 0
        self.ask_seconds = 0.0
        self.ask_buckets = {b: 0 for b in (0.5, 1, 2, 5, 10, 20, 60, math.inf)}
        self.cancelled = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1

    def answered(self, seconds: float) -> None:
        with self._lock:
            self.asks += 1
            self.ask_seconds += seconds
            for b in self.ask_buckets:
                if seconds <= b:
                    self.ask_buckets[b] += 1

    def render(self, batcher, model_loaded: bool) -> str:
        out = ["# HELP nl2sql_requests_total HTTP requests by path and status.",
               "# TYPE nl2sql_requests_total counter"]
        with self._lock:
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'nl2sql_requests_total{{path="{path}",status="{status}"}} {n}')
            out += ["# HELP nl2sql_ask_seconds Time to answer a question (generation, validation, execution).",
                    "# TYPE nl2sql_ask_seconds histogram"]
            for b, n in self.ask_buckets.items():
                le = "+Inf" if b == math.inf else f"{b:g}"
                out.append(f'nl2sql_ask_seconds_bucket{{le="{le}"}} {n}')
            out += [f"nl2sql_ask_seconds_sum {self.ask_seconds:.4f}", f"nl2sql_ask_seconds_count {self.asks}",
                    "# HELP nl2sql_asks_cancelled_total Questions whose client left before the answer.",
                    "# TYPE nl2sql_asks_cancelled_total counter", f"nl2sql_asks_cancelled_total {self.cancelled}",
                    "# HELP nl2sql_asks_in_flight Questions being answered now.",
                    "# TYPE nl2sql_asks_in_flight gauge", f"nl2sql_asks_in_flight {self.in_flight}"]
        out += ["# HELP nl2sql_model_loaded 1 once the model is in memory.", "# TYPE nl2sql_model_loaded gauge",
                f"nl2sql_model_loaded {int(model_loaded)}"]
        if batcher is not None:
            out += ["# HELP nl2sql_batch_rows Rows in the decoding batch now.", "# TYPE nl2sql_batch_rows gauge",
                    f"nl2sql_batch_rows {batcher.rows_decoding}",
                    "# HELP nl2sql_generation_waiting Generation requests waiting for room in the batch.",
                    "# TYPE nl2sql_generation_waiting gauge", f"nl2sql_generation_waiting {batcher.requests_waiting}",
                    "# HELP nl2sql_batched_steps_total Decoding steps that served more than one question.",
                    "# TYPE nl2sql_batched_steps_total counter", f"nl2sql_batched_steps_total {batcher.batches}"]
        return "\n".join(out) + "\n"


class _SizeLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 (by Content-Length, or counted as it streams)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # read the body here (it is small by definition), counting as it streams: a body sent without a
        # Content-Length is refused as soon as it passes the limit, before the endpoint sees any of it
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: http.disconnect when the client leaves
        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"The request is larger than the limit ({self.limit:,} bytes).",
                           "error_type": "InputError", "hint": "Send less, or raise NL2SQL_SERVE_MAX_REQUEST_BYTES "
                                                               "on the server."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _Guard:
    """ASGI middleware: the bearer token (401) and the per-client rate limit (429 + Retry-After), then counts
    the response for /metrics. Pure ASGI (not BaseHTTPMiddleware) so endpoints still see a client disconnect."""

    def __init__(self, app, settings: Settings, limiter: "_RateLimiter", metrics: "_Metrics"):
        self.app, self.settings, self.limiter, self.metrics = app, settings, limiter, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse
        path = scope["path"]
        if path not in _OPEN_PATHS:
            token = self.settings.api_token
            if token:
                given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
                kind, _, value = given.partition(" ")
                if kind.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                    self.metrics.request(path, 401)
                    return await JSONResponse(
                        {"error": "Missing or wrong API token.", "error_type": "ConfigError",
                         "hint": "Send Authorization: Bearer <token>; clients read NL2SQL_API_TOKEN."},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            client = scope.get("client")
            wait = self.limiter.take(client[0] if client else "unknown")
            if wait > 0:
                self.metrics.request(path, 429)
                per = self.settings.serve_requests_per_minute
                return await JSONResponse(
                    {"error": "Too many requests from this client.", "error_type": "ResourceLimitError",
                     "hint": f"Retry in {math.ceil(wait)} s; the server allows {per} per minute "
                             "(NL2SQL_SERVE_REQUESTS_PER_MINUTE)."},
                    status_code=429, headers={"Retry-After": str(math.ceil(wait))})(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.request(path if path in _KNOWN_PATHS else "other", message["status"])
            await send(message)
        await self.app(scope, receive, counted)


def _status(e: Nl2SqlError) -> int:
    if isinstance(e, Forbidden):
        return 403
    if isinstance(e, ServerStopping):
        return 503
    if isinstance(e, (InputError, ValidationError)):
        return 422
    if isinstance(e, ModelError):
        return 503
    if isinstance(e, (ConnectError, ConfigError)):
        return 400
    return 400


def _error_body(e: Nl2SqlError) -> dict:
    """The JSON of an error response; a streamed answer's error line carries the same."""
    return {"error": e.message, "error_type": type(e).__name__, "hint": e.hint}


async def _chain(first, rest):
    yield first
    async for item in rest:
        yield item


def _frame(df) -> dict | None:
    if df is None:
        return None
    data = json.loads(df.to_json(orient="split", date_format="iso", index=False))
    return {"columns": [str(c) for c in df.columns], "rows": data["data"]}


def create_app(settings: Settings | None = None, *, generator=None):
    """The FastAPI app. `generator` replaces the model (tests pass a ScriptedGenerator); by default the
    configured model is loaded on the first question and shared through a BatchingGenerator."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from pydantic import BaseModel, Field

    from . import executor as execute_mod
    from .api import Pipeline
    from .batching import BatchingGenerator, cancel_scope, check_cancelled
    from .generate import RequestCancelled, SqlGenerator
    from .querylog import QueryLog, db_key

    settings = settings or Settings.from_env()
    databases = database_map(settings)
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="nl2sql-serve")  # threads wait on the batch
    limiter = _RateLimiter(settings.serve_requests_per_minute)
    metrics = _Metrics()
    log = QueryLog(settings.query_log_path)
    state: dict = {"batcher": None, "generator": None}
    state_lock = threading.Lock()

    class _Pipeline(Pipeline):
        @property
        def generator(self):
            with state_lock:  # the first questions arrive together: load the model once
                if state["generator"] is None:
                    inner = generator if generator is not None else Pipeline.generator.fget(self)
                    if isinstance(inner, SqlGenerator):  # the real model: batch across requests
                        state["batcher"] = BatchingGenerator(inner, max_rows=self.settings.serve_batch_rows)
                        inner = state["batcher"]
                    state["generator"] = self._generator = inner
            return state["generator"]

    pipe = _Pipeline(settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if state["batcher"] is not None:  # stopping: what is still decoding ends with RequestCancelled
            state["batcher"].close()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nl2sql", version="1", lifespan=lifespan,
                  description="Ask your warehouse questions in words. Every call but /health and these docs needs "
                              "`Authorization: Bearer <NL2SQL_API_TOKEN>` when the server has a token.")

    @app.exception_handler(Nl2SqlError)
    async def nl2sql_error(request: Request, e: Nl2SqlError):
        return JSONResponse(_error_body(e), status_code=_status(e))

    @app.exception_handler(RequestValidationError)
    async def malformed_body(request: Request, e: RequestValidationError):
        """A body with a missing or mistyped field: which one, as an InputError (not FastAPI's bare `detail`, which
        the client could only report as 'HTTP 422'); the value sent is not repeated."""
        first = (e.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"error": f"The request's {where} is not valid: {first.get('msg', 'malformed')}.",
                             "error_type": "InputError", "hint": "The fields of each endpoint are on /docs."},
                            status_code=422)

    def resolve_db(name):
        if name in (None, ""):
            name = "demo" if "demo" in databases else next(iter(databases))
        if not isinstance(name, str) or name not in databases:
            shown = name if isinstance(name, str) and "://" not in name and len(name) < 80 else "that database"
            raise Forbidden(f"This server does not serve {shown}; it answers about: {', '.join(databases)}.",
                            hint="Name one of those, or ask the administrator to add it to NL2SQL_SERVE_DATABASES.")
        return name, databases[name]

    async def watch(request: Request, fn, stages: "queue.SimpleQueue | None" = None):
        """Run fn() in a worker thread under a cancel scope and yield, in order: ("stage", name) for each name the
        work puts on `stages` (the streamed /v1/ask), then ("done", fn's result), or ("gone", None) when the
        client disconnected. fn's errors are raised. The one place a disconnect is noticed: the scope is set when
        the client leaves, when the server stops, or when the caller stops reading, so the question's rows leave
        the batch."""
        event = threading.Event()
        commit = _Commit()
        ctx = contextvars.copy_context()

        def work():
            _commit.set(commit)   # in this request's own context copy
            with cancel_scope(event):
                return fn()
        task = asyncio.get_running_loop().run_in_executor(pool, ctx.run, work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                while stages is not None and not stages.empty():  # all of them before the answer
                    yield "stage", stages.get_nowait()
                if done:
                    yield "done", task.result()
                    return
                if await request.is_disconnected():
                    event.set()
                    metrics.cancelled += 1
                    try:
                        await task
                    except (RequestCancelled, Exception):
                        pass
                    yield "gone", None
                    return
        except asyncio.CancelledError:  # the server is stopping and its grace period is over: stop the work too,
            entry = commit.cancel(event)  # and tell the client so (not a bare 500), before the connection closes
            logged = ("nothing was logged." if entry is None else
                      f"its answer was logged (entry {entry}) just before, so look it up rather than ask again.")
            raise ServerStopping("The nl2sql server is stopping (shut down or restarted) and dropped this request "
                                 f"before its answer; {logged}", hint="Retry in a moment.") from None
        finally:
            if not task.done():  # closed unfinished (a stream's response was torn down): the work stops too
                event.set()

    async def run(request: Request, fn):
        """fn()'s result, or None when the client disconnected (its work cancelled: see watch)."""
        out = None
        async for kind, value in watch(request, fn):
            out = value if kind == "done" else None
        return out

    class AskBody(BaseModel):
        question: str = Field(description="The question, in words.")
        db: str | None = Field(None, description="One of the server's database names (GET /v1/databases).")
        execute: bool = Field(True, description="Run the SQL and return its rows (false: the SQL only).")
        session: str | None = Field(None, description="A conversation id, kept in the query log.")
        examples: list[tuple[str, str]] | None = Field(
            None, description="A follow-up: the [question, SQL] pairs it refers to, shown to the model (the app's "
                              "thread). Omitted: the database's verified pairs most like the question.")
        stream: bool = Field(False, description="Stream the answer as NDJSON (as does Accept: application/x-ndjson): "
                                                '{"stage": name} as each stage starts, then {"answer": the usual '
                                                'body} or {"error": the usual error, "status": its HTTP status}.')

    class ExecuteBody(BaseModel):
        sql: str = Field(description="One read-only SELECT in the database's dialect.")
        db: str | None = None

    class FeedbackBody(BaseModel):
        entry_id: int
        rating: int | None = Field(None, description="1 (thumbs up) or -1 (thumbs down).")
        comment: str | None = None
        corrected_sql: str | None = None

    def client_name(request: Request) -> str:
        name = "".join(ch for ch in request.headers.get(CLIENT_HEADER, "")[:100] if ch.isprintable()).strip()
        addr = request.client.host if request.client else "?"
        return f"{name}@{addr}" if name else addr

    @app.get("/health")
    def health():
        return {"status": "ok", "model_loaded": state["generator"] is not None, "databases": list(databases)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        return PlainTextResponse(metrics.render(state["batcher"], state["generator"] is not None),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/databases")
    def list_databases():
        return {"databases": list(databases)}

    def follow_up_context(examples):
        """A follow-up's (question, SQL) pairs: no more than the server's own retrieval puts in a prompt, each
        within the library's question and SQL limits, so that one client cannot fill the shared model's prompt."""
        if not examples:
            return None
        most = max(1, settings.examples)
        if len(examples) > most:
            raise InputError(f"A follow-up may refer to at most {most} earlier answers; this one sent {len(examples)}.",
                             hint="Send the answer the question follows up on, or raise NL2SQL_EXAMPLES on the server.")
        if any(len(q) > settings.max_question_chars or len(sql) > settings.max_sql_chars for q, sql in examples):
            raise InputError(f"An earlier answer a follow-up refers to is too long (questions up to "
                             f"{settings.max_question_chars:,} characters, SQL up to {settings.max_sql_chars:,}).",
                             hint="Send the question and SQL of that answer as they were asked and answered.")
        return [tuple(pair) for pair in examples]

    @app.post("/v1/ask")
    async def ask(body: AskBody, request: Request):
        """Answer a question: SQL in the database's dialect, its rows, and the entry id feedback refers to.
        Streamed (`stream`, or Accept: application/x-ndjson): each stage's name as it starts, then the answer."""
        name, db = resolve_db(body.db)
        who = client_name(request)
        context = follow_up_context(body.examples)
        stream = body.stream or "application/x-ndjson" in request.headers.get("accept", "")
        stages = queue.SimpleQueue() if stream else None

        def work():
            t0 = time.perf_counter()
            a = pipe.ask(body.question, db, execute=body.execute, examples=context, session=body.session,
                         progress=stages.put if stages is not None else None)
            latency = time.perf_counter() - t0
            dialect = pipe.schema(db).dialect
            # the log names the database as the app does (querylog.db_key), so its corrections are retrieved as
            # examples and `nl2sql train` can reopen it, whichever client logged them. A client that left, or a
            # stop, before this point: nothing goes to the log (_Commit)
            entry = _commit.get().write(lambda: log.record(
                question=a.question, db=db_key(db), sql=a.sql, executed=a.df is not None, error=a.error,
                model=a.model, adapter=a.adapter, latency=latency, raw_sql=a.raw_sql, dialect=dialect,
                session=body.session, context=context, candidates=a.candidates, agreement=a.agreement, client=who,
                confidence=a.confidence, escalated=a.escalated, answered_by=a.answered_by, attempts=a.attempts),
                check_cancelled)
            metrics.answered(latency)
            return a, entry

        def reply(out):
            a, entry = out
            fields = {f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "df"}
            return {**fields, "db": name, "result": _frame(a.df), "entry_id": entry}
        if stream:
            return await streamed(request, work, stages, reply)
        metrics.in_flight += 1
        try:
            out = await run(request, work)
        finally:
            metrics.in_flight -= 1
        if out is None:
            return _disconnected()
        return reply(out)

    def _disconnected():
        return JSONResponse({"error": "The client disconnected.", "error_type": "RequestCancelled"}, status_code=499)

    class _Lines(StreamingResponse):
        """NDJSON whose client disconnect only watch() notices: Starlette's own listener would take the same
        disconnect and cancel the stream under watch(), which would read as a stopping server."""
        media_type = "application/x-ndjson"

        async def __call__(self, scope, receive, send):
            await self.stream_response(send)

    async def streamed(request: Request, work, stages, reply):
        """The streamed /v1/ask. What fails before the first stage (an unusable question) is the usual error
        response, status and all; later errors are an error line, since the 200 has gone out."""
        events = watch(request, work, stages)
        metrics.in_flight += 1
        try:
            first = await anext(events)
        except BaseException:
            metrics.in_flight -= 1
            raise
        if first[0] == "gone":
            metrics.in_flight -= 1
            return _disconnected()

        def line(obj) -> bytes:
            return json.dumps(obj).encode() + b"\n"

        async def lines():
            try:
                async for kind, value in _chain(first, events):
                    if kind == "stage":
                        yield line({"stage": value})
                    elif kind == "done":  # the very bytes the non-streamed endpoint answers with
                        yield b'{"answer":' + JSONResponse(jsonable_encoder(reply(value))).body + b"}\n"
            except Nl2SqlError as e:
                yield line({"error": _error_body(e), "status": _status(e)})
            finally:
                metrics.in_flight -= 1
                await events.aclose()  # unfinished (the response torn down): its work is cancelled
        return _Lines(lines())

    @app.post("/v1/execute")
    async def execute(body: ExecuteBody, request: Request):
        """Run one read-only query through the same guarded executor as nl2sql.execute()."""
        name, db = resolve_db(body.db)
        result = await run(request, lambda: execute_mod.run_checked(pipe.warehouse(db), body.sql, settings))
        if result is None:
            return _disconnected()
        return {"sql": result.sql, "result": _frame(result.df), "truncated": result.truncated,
                "seconds": round(result.seconds, 4), "db": name}

    def no_entry(entry_id) -> InputError:
        return InputError(f"The query log has no answer {entry_id}.",
                          hint="Send the entry_id that /v1/ask returned with the answer.")

    def checked_correction(entry_id: int, sql: str) -> str:
        """A corrected SQL as it is kept: checked against its entry's database by the validator that checks the
        model's SQL (one read-only query over that schema's names, reading a table), in that database's dialect,
        and kept as checked (as `nl2sql examples import` keeps its pairs). The examples and training read it
        later, so a bad one is refused now, with what is wrong."""
        from .validate import validate
        entry = log.entry(entry_id)
        if entry is None:
            raise no_entry(entry_id)
        served = {db_key(target): (name, target) for name, target in databases.items()}
        if entry["db"] not in served:  # an answer logged on a database this server does not serve (a shared log)
            raise Forbidden(f"Answer {entry_id} was asked on a database this server does not serve, so its "
                            "corrected SQL cannot be checked here.", hint="Correct it where it was asked.")
        name, target = served[entry["db"]]
        schema = pipe.schema(target)
        try:
            checked = validate(sql, schema, read=entry["dialect"] or schema.dialect, max_chars=settings.max_sql_chars,
                               settings=settings)
            if not checked.tables:
                raise ValidationError("The SQL reads no table, so it cannot answer a question about the data.")
        except Nl2SqlError as e:
            raise InputError(f"The corrected SQL for answer {entry_id} was not saved: {e.message}",
                             hint=f"{e.hint + ' ' if e.hint else ''}Send one read-only SELECT over the tables and "
                                  f"columns of {name} (GET /v1/schema?db={name}), in its dialect.") from None
        return checked.sql

    @app.post("/v1/feedback")
    def feedback(body: FeedbackBody):
        if body.rating not in (None, 1, -1):
            raise InputError("rating must be 1 or -1.", hint="Send 1 for a good answer, -1 for a wrong one.")
        corrected = body.corrected_sql
        if corrected is not None:
            corrected = checked_correction(body.entry_id, corrected)
        if not log.feedback(body.entry_id, rating=body.rating, comment=body.comment, corrected_sql=corrected):
            raise no_entry(body.entry_id)
        return {"ok": True, "entry_id": body.entry_id}

    @app.get("/v1/schema")
    async def schema(request: Request, db: str | None = None):
        """Tables, columns (with types, keys, comments and sample values) and foreign keys of a database."""
        name, target = resolve_db(db)
        s = await run(request, lambda: pipe.schema(target))
        return {"db": name, "dialect": s.dialect, "tables": [dataclasses.asdict(t) for t in s.tables]}

    # --- the OpenAI completions API: this server as another nl2sql's escalation backend (nl2sql/remote.py) ---
    from .remote import CompletionRequest, completion_json, models_json

    class CompletionBody(BaseModel):
        model_config = {"extra": "allow"}  # OpenAI clients send more (top_p, user, ...); what is not read is ignored
        prompt: str | list = Field(description="The prompt text the model continues (e.g. nl2sql's own prompt).")
        model: str | None = Field(None, description="The model of GET /v1/models (or empty).")
        n: int = 1
        temperature: float | None = Field(None, description="Candidates after the first (which is greedy) sample "
                                                            "at this temperature; 0 = all greedy.")
        max_tokens: int | None = None
        stop: str | list | None = None
        seed: int | None = None
        structured_outputs: dict | None = Field(None, description='{"grammar": "<Lark>"}: decode under it '
                                                                  "(llguidance), as vLLM does.")
        guided_grammar: str | None = Field(None, description="The same, as older vLLM names it.")

    @app.get("/v1/models")
    def models():
        return models_json(settings)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        """OpenAI-compatible completions under a Lark grammar (the batched model, the same constrained decoding
        as /v1/ask): each choice carries its confidence parts in an `nl2sql` field. Nothing is logged."""
        req = CompletionRequest.from_body(body.model_dump(), settings)

        def work():
            gen = pipe.generator
            binder = req.binder()
            results = [gen.candidates(p, req.grammar, req.max_tokens, prefix=req.prefix(p), n=req.n, seed=req.seed,
                                      temperature=req.temperature, binder=binder) for p in req.prompts]
            return results, gen.adapter_name
        out = await run(request, work)
        if out is None:
            return _disconnected()
        return completion_json(settings.model, out[0], req, out[1])

    app.state.pipeline = pipe
    return _SizeLimit(_Guard(app, settings, limiter, metrics), settings.serve_max_request_bytes)


def serve(host: str = "127.0.0.1", port: int = 8765, settings: Settings | None = None, *, generator=None) -> None:
    """Run the service until SIGINT/SIGTERM (in-flight answers get a few seconds to finish). `generator`: as in
    create_app (tests run the real service around a scripted model)."""
    settings = settings or Settings.from_env()
    check_listen(host, settings)
    _require_fastapi()
    import uvicorn
    app = create_app(settings, generator=generator)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
