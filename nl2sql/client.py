"""The client of `nl2sql serve`: `nl2sql.ask(..., server=URL)` (or NL2SQL_SERVER) asks the service instead of
loading a model, and gets the same Answer back. Standard library only (urllib), so a notebook needs nothing
beyond nl2sql itself.

    >>> Client("http://127.0.0.1:8765").url
    'http://127.0.0.1:8765'
"""
from __future__ import annotations

import getpass
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request

from . import errors
from .config import Settings
from .errors import ConnectError, InputError, Nl2SqlError


class ServerError(Nl2SqlError):
    """The server answered with an error that is not one of nl2sql's own (or did not answer properly)."""


class ServerWentAway(ConnectError):
    """The server took the request, then the connection dropped before the answer: it stopped or restarted."""


def default_client_name() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return socket.gethostname()


class Client:
    """Talks to one `nl2sql serve` URL. `token` defaults to NL2SQL_API_TOKEN; `name` (user@host by default)
    goes to the server's query log as the client that asked."""

    def __init__(self, url: str, *, token: str | None = None, name: str | None = None, timeout: float = 300.0,
                 settings: Settings | None = None):
        settings = settings or Settings.from_env()
        self.url = _checked_url(url)
        self.token = token if token is not None else settings.api_token
        self.name = name or default_client_name()
        self.timeout = timeout

    # --- the endpoints ------------------------------------------------------------------------
    def ask(self, question: str, db=None, *, execute: bool = True, session: str | None = None, examples=None,
            progress=None):
        """The server's answer as an nl2sql Answer (df rebuilt from the JSON rows; entry_id set). `examples`:
        (question, SQL) pairs a follow-up refers to, as for Pipeline.ask; None lets the server pick.
        `progress`: called with each stage's name ("schema", "link", "generate", "execute", ...) as the server
        starts it, as Pipeline.ask does (the answer is streamed); the answer is the same."""
        from .api import Answer
        if db is not None and not isinstance(db, str):
            raise InputError("Through a server, db= is the name of one of the server's databases.",
                             hint="Pass a name from Client.databases(), or unset NL2SQL_SERVER to use your own "
                                  "connection in process.")
        payload = {"question": question, "db": db, "execute": execute, "session": session}
        if examples:
            payload["examples"] = [[q, sql] for q, sql in examples]
        body = self._call("POST", "/v1/ask", payload) if progress is None else self._streamed("/v1/ask", payload,
                                                                                             progress)
        fields = {k: v for k, v in body.items() if k in Answer.__dataclass_fields__ and k != "df"}
        answer = Answer(**fields)
        answer.df = _frame(body.get("result"))
        answer.entry_id = body.get("entry_id")
        return answer

    def execute(self, sql: str, db: str | None = None):
        """Run one read-only query on the server (its guarded executor); returns nl2sql.executor.Result."""
        from .executor import Result
        body = self._call("POST", "/v1/execute", {"sql": sql, "db": db})
        return Result(body["sql"], _frame(body["result"]), body["truncated"], body["seconds"])

    def feedback(self, entry_id: int, *, rating: int | None = None, comment: str | None = None,
                 corrected_sql: str | None = None) -> None:
        self._call("POST", "/v1/feedback", {"entry_id": entry_id, "rating": rating, "comment": comment,
                                            "corrected_sql": corrected_sql})

    def schema(self, db: str | None = None):
        """The database's nl2sql.schema.Schema (named by the server's name for it), sample values included."""
        from .schema import Column, ForeignKey, Schema, Table
        body = self._call("GET", "/v1/schema" + (f"?db={urllib.parse.quote(db)}" if db else ""))
        tables = tuple(Table(t["name"], tuple(Column(**{**c, "samples": tuple(c.get("samples") or ())})
                                              for c in t["columns"]),
                             t.get("comment") or "", tuple(ForeignKey(**fk) for fk in t.get("foreign_keys") or ()))
                       for t in body["tables"])
        return Schema(body["db"], body["dialect"], tables)

    def databases(self) -> list[str]:
        return self._call("GET", "/v1/databases")["databases"]

    def health(self) -> dict:
        return self._call("GET", "/health")

    # --- HTTP -----------------------------------------------------------------------------------
    def _streamed(self, path: str, payload: dict, progress) -> dict:
        """POST for an NDJSON answer: progress(stage) per {"stage"} line; the {"answer"} line's body, or the error
        of an {"error"} line raised as _call raises it. A server that answers plain JSON (one from before
        streaming) gives its answer without stages."""
        try:
            with open_json(self.url + path, "POST", payload, token=self.token, timeout=self.timeout,
                           headers={"X-Nl2SQL-Client": self.name, "Accept": "application/x-ndjson"}) as resp:
                if "ndjson" not in resp.headers.get("Content-Type", ""):
                    return self._parsed(resp.read())
                for raw in resp:
                    event = self._parsed(raw)
                    if "stage" in event:
                        try:
                            progress(event["stage"])
                        except Exception:  # noqa: BLE001 - a display callback must never fail the question
                            pass
                    elif "answer" in event:
                        return event["answer"]
                    elif "error" in event:
                        raise _error_of(event["error"], event.get("status"), self.url)
        except urllib.error.HTTPError as e:
            raise _error_from(e, self.url) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _unanswered(e, self.url, self.timeout) from None
        # the stream ended without its answer: the connection dropped (a stopped server)
        raise _unanswered(http.client.IncompleteRead(b""), self.url, self.timeout)

    def _parsed(self, raw: bytes) -> dict:
        try:
            return json.loads(raw.strip() or b"{}")
        except ValueError:
            raise ServerError(f"The server at {self.url} did not answer with JSON.",
                              hint="Is this URL an `nl2sql serve` service?") from None

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        try:
            raw = send_json(self.url + path, method, payload, token=self.token, timeout=self.timeout,
                            headers={"X-Nl2SQL-Client": self.name})
        except urllib.error.HTTPError as e:
            raise _error_from(e, self.url) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _unanswered(e, self.url, self.timeout) from None
        return self._parsed(raw)


def send_json(url: str, method: str, payload: dict | None, *, token: str | None, timeout: float,
              headers: dict | None = None, max_bytes: int | None = None) -> bytes:
    """One JSON request with a bearer token; the response body (at most max_bytes + 1 bytes are read, so a caller
    can refuse a larger one). urllib's errors propagate: each caller says what they mean for its server."""
    with open_json(url, method, payload, token=token, timeout=timeout, headers=headers) as resp:
        return resp.read() if max_bytes is None else resp.read(max_bytes + 1)


def open_json(url: str, method: str, payload: dict | None, *, token: str | None, timeout: float,
              headers: dict | None = None):
    """send_json's request, its response left open to be read (a stream of lines); `headers` may replace
    Accept."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)


def _checked_url(url) -> str:
    """`url` without its trailing /, if it is http(s) with a host (and a numeric port, if any). A user:password@
    part is refused without repeating the URL: it may hold a token."""
    if not isinstance(url, str):
        raise InputError(f"The server URL must be text, not {type(url).__name__}.", hint=_URL_EXAMPLE)
    if "@" in url.split("?")[0].split("#")[0]:
        raise InputError("The server URL holds a user:password@ part, which nl2sql serve does not read.",
                         hint="Drop it from the URL (NL2SQL_SERVER) and put the token in NL2SQL_API_TOKEN.")
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number, an unclosed [IPv6 address
        valid = False
    if not valid or any(ch.isspace() for ch in url):
        raise InputError(f"The server URL {url!r} is not an http(s) URL with a host.", hint=_URL_EXAMPLE)
    return url.rstrip("/")


_URL_EXAMPLE = "Example: server='http://127.0.0.1:8765' (what `nl2sql serve` prints)."


def _unanswered(e: BaseException, url: str, timeout: float) -> ConnectError:
    """No answer: the server is not there (refused, unknown host), was too slow, or went away mid-request (the
    connection dropped or the reply was cut off), in which case the work may or may not have been done."""
    reason = getattr(e, "reason", e)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return ConnectError(f"The nl2sql server at {url} did not answer within {timeout:g} s.",
                            hint="It may be busy (many questions at once, or loading its model): retry in a "
                                 "moment, or wait longer with nl2sql.client.Client(url, timeout=SECONDS).")
    if isinstance(reason, (http.client.HTTPException, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return ServerWentAway(f"The nl2sql server at {url} went away while working on this request (it stopped or "
                              "restarted).", hint="Retry in a moment; if it keeps happening, check the server's log.")
    return ConnectError(f"The nl2sql server at {url} did not answer ({reason}); it may be stopped or restarting.",
                        hint="Start it with `nl2sql serve`, retry in a moment, or unset NL2SQL_SERVER to answer in "
                             "process.")


def _error_from(e, url: str) -> Nl2SqlError:
    """The Nl2SqlError the server's JSON names (the same class the library would raise), with its hint."""
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    return _error_of(body, e.code, url, e.headers.get("Retry-After"))


def _error_of(body: dict, code: int | None, url: str, retry_after: str | None = None) -> Nl2SqlError:
    """The error of the server's error JSON (an error response, or a streamed answer's error line)."""
    if not isinstance(body, dict):
        body = {}
    message = body.get("error") or f"The server at {url} answered HTTP {code}."
    hint = body.get("hint")
    if code == 429 and retry_after:
        hint = hint or f"Retry in {retry_after} s."
    if code == 404 and not body.get("error_type"):
        hint = "Is this URL an `nl2sql serve` service?"
    cls = getattr(errors, body.get("error_type") or "", None)
    if body.get("error_type") == "ServerStopping":  # it dropped the request while stopping
        cls = ServerWentAway
    if not (isinstance(cls, type) and issubclass(cls, Nl2SqlError)):
        cls = ServerError
    err = cls(message, hint=hint)
    err.status = code
    return err


def _frame(result):
    if result is None:
        return None
    import pandas as pd
    return pd.DataFrame(result["rows"], columns=result["columns"])
