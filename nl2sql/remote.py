"""An OpenAI-compatible escalation backend: the larger model runs on another machine (vLLM, SGLang, llama.cpp's
server, or another `nl2sql serve` on a GPU box), behind the same Generator protocol as the model in process.

    NL2SQL_ESCALATE_MODEL=openai:http://gpu-box:8000/v1   NL2SQL_ESCALATE_MODEL_NAME=...   NL2SQL_ESCALATE_API_KEY=...

Both ends of the wire are here: `RemoteGenerator` (the client the router uses) and what `nl2sql serve` needs to
answer the same protocol (`CompletionRequest`, `completion_json`, `models_json`), so the two cannot drift apart.

What is sent: POST {base}/v1/completions with the prompt the local model gets (schema, glossary entries, examples,
question), n, temperature, max_tokens, stop, seed, logprobs, and the schema's SQL grammar (Lark, nl2sql/grammar.py)
as `structured_outputs: {"grammar": ...}` (vLLM 0.12 and later) and `guided_grammar` (older vLLM, which ignores
the other field; newer ones ignore this one). An `nl2sql serve` target also gets `nl2sql: {"prefix_chars": N}`,
the length of the schema part of the prompt, whose KV cache it keeps across questions, and `scope`, the tables
and their columns, from which it builds the same binder (nl2sql/binding.py) the local model decodes with.
What comes back is never trusted: each candidate goes through the same validation, literal snapping and guarded
executor as a local one, so a server that ignores the grammar (or is not what it claims) gets its SQL refused,
never run. Confidence: an `nl2sql serve` returns the exact parts the local model gives (summed log-probability,
per-token margins); from other servers they come from the top-2 logprobs. A remote candidate has no token ids of
a local tokenizer, so it gets no repair branches (nl2sql/repair.py needs them); other servers get no binder either.
"""
from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass

from .client import send_json
from .config import Settings
from .errors import ConfigError, ConnectError, InputError, ModelError
from .generate import GenRequest, Generation

SCHEME = "openai:"
OWNED_BY = "nl2sql"        # what `nl2sql serve` says in /v1/models, so a client knows the extensions are understood
GRAMMAR_FIELDS = ("auto", "structured_outputs", "guided_grammar", "off")
STOP = ["\n--", "\n\n"]   # the prompt's next line starts with "--"; a model that goes on past its SQL stops there
TOP_LOGPROBS = 2           # the chosen token and its runner-up: the margin confidence reads
MAX_RESPONSE_BYTES = 16_000_000  # a server that sends more is not answering an SQL question


def remote_base(spec: str) -> str | None:
    """The server root of an `openai:URL` escalation model, or None when `spec` is not one.

    >>> remote_base("openai:http://gpu:8000/v1"), remote_base("openai:https://h/x/v1/"), remote_base("bundled")
    ('http://gpu:8000', 'https://h/x', None)
    """
    if not spec.startswith(SCHEME):
        return None
    url = spec[len(SCHEME):].strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"NL2SQL_ESCALATE_MODEL {spec!r} is not openai: followed by an http(s) URL.",
                          hint="Example: NL2SQL_ESCALATE_MODEL=openai:http://gpu-box:8000/v1")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def shown(url: str) -> str:
    """A URL as it may appear in messages and logs: without user:password@.

    >>> shown("http://bob:pw@gpu:8000")
    'http://gpu:8000'
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RemoteGenerator:
    """The Generator protocol over an OpenAI-compatible completions API (see the module docstring).

    The served model is found on first use: NL2SQL_ESCALATE_MODEL_NAME, checked against GET /v1/models, or the
    only model there. `calls`, `wall_s` and `server_s` count requests, their seconds here and the seconds the
    server says it decoded (an `nl2sql serve` reports them), for the HTTP overhead."""

    def __init__(self, settings: Settings):
        self.base = remote_base(settings.escalate_model)
        if self.base is None:
            raise ConfigError(f"NL2SQL_ESCALATE_MODEL {settings.escalate_model!r} is not an openai: URL.",
                              hint="Example: NL2SQL_ESCALATE_MODEL=openai:http://gpu-box:8000/v1")
        if settings.escalate_grammar not in GRAMMAR_FIELDS:
            raise ConfigError(f"NL2SQL_ESCALATE_GRAMMAR {settings.escalate_grammar!r} is not one of "
                              f"{', '.join(GRAMMAR_FIELDS)}.", hint="Leave it at auto unless the server refuses it.")
        if settings.escalate_adapter not in ("", "none"):
            raise ConfigError("NL2SQL_ESCALATE_ADAPTER does not apply to a remote backend: the server loads it.",
                              hint="vLLM: --lora-modules NAME=DIR and NL2SQL_ESCALATE_MODEL_NAME=NAME; nl2sql serve: "
                                   "NL2SQL_ADAPTER on that server. Unset NL2SQL_ESCALATE_ADAPTER here.")
        self.settings = settings
        self.api_key = settings.escalate_api_key
        self.timeout = settings.escalate_timeout
        self._model: str | None = None
        self._nl2sql = False            # the server is an `nl2sql serve` (understands the nl2sql extension)
        self._adapter: str | None = None  # the adapter an `nl2sql serve` says it answered with
        self._lock = threading.Lock()
        self.calls, self.wall_s, self.server_s = 0, 0.0, 0.0

    # --- the Generator protocol --------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._model or self.settings.escalate_model_name or f"{SCHEME}{shown(self.base)}"

    @property
    def adapter_name(self) -> str | None:
        return self._adapter

    def decode(self, ids) -> str:
        if ids:
            raise ModelError("A remote backend's candidates carry no token ids to decode.",
                             hint="Report this: repair should not branch on a remote candidate.")
        return ""

    def generate(self, prompt, grammar, max_new_tokens, prefix=None, forced=(), binder=None) -> Generation:
        return self.candidates(prompt, grammar, max_new_tokens, prefix=prefix, forced=forced, binder=binder)[0]

    def candidates_many(self, requests: list[GenRequest]) -> list[list[Generation]]:
        return [self.candidates(r.prompt, r.grammar, r.max_new_tokens, prefix=r.prefix, n=r.n, binder=r.binder,
                                seed=r.seed, temperature=r.temperature, forced=r.forced) for r in requests]

    def candidates(self, prompt: str, grammar: str | None, max_new_tokens: int, *, prefix: str | None = None,
                   n: int = 1, binder=None, seed: int = 0, temperature: float = 0.7,
                   forced: tuple = ()) -> list[Generation]:
        """n candidates from the server for `prompt`, under `grammar` where the server applies it. An nl2sql
        serve also gets the binder's tables and columns; validation catches what another server's candidates would
        have been turned down for."""
        if forced:
            raise ModelError("A remote backend cannot continue from forced tokens.",
                             hint="Report this: repair should not branch on a remote candidate.")
        model = self.model()
        body = {"model": model, "prompt": prompt, "n": max(1, n), "temperature": max(0.0, temperature),
                "max_tokens": max_new_tokens, "stop": STOP, "seed": seed, "logprobs": TOP_LOGPROBS}
        if grammar is not None:
            body.update(self._grammar_fields(grammar))
        if self._nl2sql:
            ext = {"prefix_chars": len(prefix)} if prefix and prompt.startswith(prefix) else {}
            if binder is not None:
                ext["scope"] = {t.name: [c.name for c in t.columns] for t in binder.tables.values()}
            body["nl2sql"] = ext
        t0 = time.perf_counter()
        out = self._call("POST", "/v1/completions", body)
        wall = time.perf_counter() - t0
        choices = out.get("choices") if isinstance(out, dict) else None
        if not isinstance(choices, list) or not choices:
            raise ModelError(f"The escalation server at {shown(self.base)} answered with no completions.",
                             hint="Check that it serves the completions API (POST /v1/completions).")
        gens = [generation_from_choice(c, grammar is not None, wall) for c in
                sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)]
        ext = [c["nl2sql"] for c in choices if isinstance(c, dict) and isinstance(c.get("nl2sql"), dict)]
        server = max((float(e.get("seconds") or 0.0) for e in ext), default=0.0)
        with self._lock:
            if ext:
                self._adapter = ext[0].get("adapter")
            self.calls, self.wall_s, self.server_s = self.calls + 1, self.wall_s + wall, self.server_s + server
        return gens

    # --- the server ------------------------------------------------------------------------------------
    def model(self) -> str:
        """The served model's id (asked once): the configured name, or the server's only model."""
        with self._lock:
            if self._model is not None:
                return self._model
        wanted = self.settings.escalate_model_name
        try:
            listed = self._call("GET", "/v1/models")
            data = [m for m in listed.get("data", []) if isinstance(m, dict) and m.get("id")]
        except ModelError:  # some servers have no model list: use the configured name as it is
            if not wanted:
                raise
            data = [{"id": wanted}]
        ids = [m["id"] for m in data]
        if wanted and wanted not in ids:
            raise ConfigError(f"The escalation server at {shown(self.base)} does not serve {wanted!r}; it serves: "
                              f"{', '.join(ids) or 'nothing'}.", hint="Set NL2SQL_ESCALATE_MODEL_NAME to one of those.")
        if not wanted and len(ids) != 1:
            raise ConfigError(f"The escalation server at {shown(self.base)} serves {len(ids)} models "
                              f"({', '.join(ids[:5])}); which one should answer?",
                              hint="Set NL2SQL_ESCALATE_MODEL_NAME to one of them.")
        chosen = next(m for m in data if m["id"] == (wanted or ids[0]))
        with self._lock:
            self._model, self._nl2sql = chosen["id"], chosen.get("owned_by") == OWNED_BY
        return self._model

    def _grammar_fields(self, grammar: str) -> dict:
        mode = self.settings.escalate_grammar
        if mode == "off":
            return {}
        if mode == "auto":
            mode = "structured_outputs" if self._nl2sql else "both"
        fields = {}
        if mode in ("structured_outputs", "both"):
            fields["structured_outputs"] = {"grammar": grammar}
        if mode in ("guided_grammar", "both"):
            fields["guided_grammar"] = grammar
        return fields

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        where = shown(self.base)
        try:
            raw = send_json(self.base + path, method, payload, token=self.api_key, timeout=self.timeout,
                            max_bytes=MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as e:
            raise _http_error(e, where, len(json.dumps(payload)) if payload is not None else 0) from None
        except (TimeoutError, socket.timeout):
            raise ConnectError(f"The escalation server at {where} did not answer within {self.timeout:g} s.",
                               hint="Check that it is up and not overloaded, or raise NL2SQL_ESCALATE_TIMEOUT.") from None
        except (urllib.error.URLError, OSError) as e:
            raise ConnectError(f"The escalation server at {where} could not be reached "
                               f"({getattr(e, 'reason', e)}).",
                               hint="Start it (vLLM, or `nl2sql serve` on that machine) or fix "
                                    "NL2SQL_ESCALATE_MODEL.") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ModelError(f"The escalation server at {where} sent more than {MAX_RESPONSE_BYTES:,} bytes for {path}.",
                             hint="Check what is serving at NL2SQL_ESCALATE_MODEL.")
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise ModelError(f"The escalation server at {where} answered {path} with something that is not JSON.",
                             hint="Is NL2SQL_ESCALATE_MODEL the URL of an OpenAI-compatible server?") from None


def _http_error(e, where: str, sent: int):
    """An HTTP error as the nl2sql error that says what to do (never repeating the API key)."""
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    # nl2sql serve: {error, hint}; OpenAI and vLLM: {error: {message}} or {message}
    message = (err.get("message") if isinstance(err, dict) else err) or (body.get("message") if isinstance(body, dict)
                                                                          else None) or f"HTTP {e.code}"
    message = " ".join(str(message).split())[:300]
    if e.code in (401, 403):
        return ConfigError(f"The escalation server at {where} refused the API key (HTTP {e.code}: {message}).",
                           hint="Set NL2SQL_ESCALATE_API_KEY to the token that server expects "
                                "(its NL2SQL_API_TOKEN for nl2sql serve, --api-key for vLLM).")
    if e.code == 404:
        return ConfigError(f"The escalation server at {where} has no such endpoint or model ({message}).",
                           hint="NL2SQL_ESCALATE_MODEL is the server's base URL (…/v1); NL2SQL_ESCALATE_MODEL_NAME one "
                                "of its models.")
    if e.code == 413:
        return ModelError(f"The escalation request ({sent:,} bytes: prompt and grammar) is larger than the server at "
                          f"{where} accepts.", hint="Raise NL2SQL_SERVE_MAX_REQUEST_BYTES on that nl2sql serve.")
    if e.code == 429:
        wait = e.headers.get("Retry-After")
        return ModelError(f"The escalation server at {where} is rate limiting this client ({message}).",
                          hint=f"Retry in {wait} s." if wait else "Retry later, or raise its rate limit.")
    return ModelError(f"The escalation server at {where} refused the request (HTTP {e.code}: {message}).",
                      hint="Its log says more; NL2SQL_ESCALATE_GRAMMAR=off if it does not take a Lark grammar.")


def generation_from_choice(choice: dict, constrained: bool, seconds: float) -> Generation:
    """One completion choice as a Generation (no token ids). Confidence parts from the nl2sql extension when the
    server is an `nl2sql serve`, else from OpenAI logprobs (margin: the chosen token's log-probability minus the
    best other one's, which is the logit gap the local model measures).

    >>> g = generation_from_choice({"text": " SELECT 1", "finish_reason": "stop", "logprobs": {
    ...     "tokens": ["SELECT", " 1"], "token_logprobs": [-0.1, -0.5],
    ...     "top_logprobs": [{"SELECT": -0.1, "WITH": -3.1}, {" 1": -0.5}]}}, True, 0.2)
    >>> g.text, g.tokens, round(g.logprob, 3), g.margins, g.error
    ('SELECT 1', 2, -0.6, [3.0, inf], None)
    """
    if not isinstance(choice, dict):
        raise ModelError("The escalation server's answer has a malformed choice.", hint="Check the server's version.")
    text = str(choice.get("text") or "").strip()
    ext = choice.get("nl2sql") if isinstance(choice.get("nl2sql"), dict) else None
    if ext is not None:
        margins = [math.inf if m is None else float(m) for m in ext.get("margins", [])]
        tokens = int(ext.get("tokens") or len(margins))
        return Generation(text, tokens, seconds, bool(ext.get("constrained", constrained)), [], margins,
                          [-1] * len(margins), logprob=float(ext.get("logprob") or 0.0),
                          backtracks=int(ext.get("backtracks") or 0), error=ext.get("error"))
    lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else {}
    chosen = [float(x) for x in (lp.get("token_logprobs") or []) if x is not None]
    margins = []
    for tok, own, top in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []):
        others = [v for k, v in (top or {}).items() if k != tok and v is not None]
        margins.append(float(own) - max(others) if others and own is not None else math.inf)
    error = None
    if choice.get("finish_reason") == "length":
        error = "The SQL was cut off at the token limit (NL2SQL_MAX_NEW_TOKENS) on the escalation server."
    return Generation(text, len(lp.get("tokens") or []), seconds, constrained, [], margins, [-1] * len(margins),
                      logprob=sum(chosen), error=error)


# --- the server's side: `nl2sql serve` answers /v1/models and /v1/completions (nl2sql/server.py) -----------

def models_json(settings: Settings) -> dict:
    """GET /v1/models of `nl2sql serve`: the one model it serves (by NL2SQL_MODEL), owned by nl2sql."""
    return {"object": "list", "data": [{"id": settings.model, "object": "model", "created": 0, "owned_by": OWNED_BY}]}


@dataclass
class CompletionRequest:
    """A POST /v1/completions body, checked: what `nl2sql serve` decodes for it."""
    prompts: list
    n: int
    temperature: float
    max_tokens: int
    stop: list
    seed: int
    grammar: str | None
    prefix_chars: int
    scope: dict | None = None   # {table: [columns]}: decode with the binder of these

    @classmethod
    def from_body(cls, body: dict, settings: Settings) -> "CompletionRequest":
        model = body.get("model")
        if model not in (None, "", settings.model):
            raise ConfigError(f"This server serves model {settings.model!r}, not {model!r}.",
                              hint="GET /v1/models lists it; leave model empty or name that one.")
        if body.get("stream"):
            raise InputError("Streaming is not supported by nl2sql serve.", hint="Send stream=false.")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise InputError("prompt must be a non-empty string (or a list of them).",
                             hint="Send the prompt text; token-id prompts are not supported.")
        if len(prompts) > 16:
            raise InputError(f"{len(prompts)} prompts in one request; the limit is 16.", hint="Send fewer at a time.")
        n = _int(body.get("n", 1), "n")
        if not 1 <= n <= settings.serve_batch_rows:
            raise InputError(f"n={n} is outside 1..{settings.serve_batch_rows}.",
                             hint="Ask for fewer candidates, or raise NL2SQL_SERVE_BATCH_ROWS on the server.")
        cap = 4 * settings.max_new_tokens
        max_tokens = _int(body.get("max_tokens") or settings.max_new_tokens, "max_tokens")
        if not 1 <= max_tokens <= cap:
            raise InputError(f"max_tokens={max_tokens} is outside 1..{cap}.",
                             hint="Ask for fewer, or raise NL2SQL_MAX_NEW_TOKENS on the server.")
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise InputError("temperature must be a number from 0 to 2.", hint="0 decodes every candidate greedily.")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise InputError("stop must be a string or a list of at most 4 strings.", hint="Example: stop=['\\n--'].")
        ext = body.get("nl2sql") if isinstance(body.get("nl2sql"), dict) else {}
        prefix = ext.get("prefix_chars", 0)
        return cls(prompts, n, float(temperature), max_tokens, stop, _int(body.get("seed") or 0, "seed"),
                   _grammar(body), prefix if isinstance(prefix, int) and prefix > 0 else 0, _scope(ext.get("scope")))

    def binder(self):
        """The binder of the client's tables and columns (nl2sql/binding.py), or None when it sent none."""
        if not self.scope:
            return None
        from .binding import binder_for
        from .schema import Column, Schema, Table
        return binder_for(Schema("remote", "sqlite", tuple(Table(t, tuple(Column(c) for c in cols))
                                                           for t, cols in self.scope.items())))

    def prefix(self, prompt: str) -> str | None:
        """The schema part of `prompt`, whose KV cache the server keeps (the client's prefix_chars)."""
        return prompt[: self.prefix_chars] if 0 < self.prefix_chars < len(prompt) else None


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer.", hint=f"Send {name} as a JSON integer.")
    return value


MAX_SCOPE_COLUMNS = 20_000


def _scope(scope) -> dict | None:
    """The `nl2sql.scope` of a request, checked: {table name: [column names]}."""
    if scope is None:
        return None
    ok = isinstance(scope, dict) and all(isinstance(t, str) and isinstance(cols, list) and
                                         all(isinstance(c, str) for c in cols) for t, cols in scope.items())
    if not ok:
        raise InputError("nl2sql.scope must map table names to lists of column names.",
                         hint="nl2sql's remote backend sends it; leave it out otherwise.")
    if sum(len(cols) for cols in scope.values()) > MAX_SCOPE_COLUMNS:
        raise InputError(f"nl2sql.scope lists more than {MAX_SCOPE_COLUMNS:,} columns.",
                         hint="Send the tables of the question's prompt only.")
    return scope


def _grammar(body: dict) -> str | None:
    """The Lark grammar of a request (vLLM's structured_outputs.grammar or guided_grammar), checked by llguidance."""
    so = body.get("structured_outputs")
    if so is not None and not isinstance(so, dict):
        raise InputError("structured_outputs must be an object.", hint='Send {"grammar": "<Lark grammar>"}.')
    other = sorted(k for k, v in (so or {}).items() if k != "grammar" and v not in (None, False, ""))
    other += [k for k in ("guided_json", "guided_regex", "guided_choice") if body.get(k)]
    if other:
        raise InputError(f"nl2sql serve applies a Lark grammar only, not {', '.join(other)}.",
                         hint="Send structured_outputs.grammar (or guided_grammar).")
    grammar = (so or {}).get("grammar") or body.get("guided_grammar")
    if grammar is None:
        return None
    if not isinstance(grammar, str):
        raise InputError("The grammar must be Lark text.", hint="nl2sql.grammar.sql_grammar(schema) builds one.")
    import llguidance
    problem = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar))
    if problem:
        raise InputError(f"The grammar does not compile: {' '.join(problem.split())[:300]}",
                         hint="Send a Lark grammar as llguidance reads it (nl2sql/grammar.py).")
    return grammar


def _cut(text: str, stop: list) -> tuple[str, bool]:
    """`text` up to the first stop string (which is not returned), and whether one was found."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def completion_json(model: str, results: list, req: CompletionRequest, adapter: str | None) -> dict:
    """The OpenAI completions response for `results` (a list of Generations per prompt), with each choice's
    confidence parts in an `nl2sql` field (logprobs stay null: per-token log-probabilities are not kept)."""
    choices, tokens = [], 0
    for gens in results:
        for g in gens:
            text, stopped = _cut(g.text, req.stop)
            cut_off = bool(g.error) and "cut off" in g.error
            choices.append({"index": len(choices), "text": text, "logprobs": None,
                            "finish_reason": "length" if cut_off else "stop",
                            "nl2sql": {"tokens": g.tokens, "logprob": g.logprob, "constrained": g.constrained,
                                       "margins": [m if math.isfinite(m) else None for m in g.margins],
                                       "backtracks": g.backtracks, "error": g.error, "seconds": round(g.seconds, 4),
                                       "adapter": adapter, "stopped": stopped}})
            tokens += g.tokens
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": {"completion_tokens": tokens}}
