"""The analyst page against `nl2sql serve` (NL2SQL_SERVER, with NL2SQL_API_TOKEN): the calls the page makes on a
Pipeline, answered by the server through nl2sql.client, so the app's process loads no model (nor torch). The
server logs every answer, with this app as the client that asked; ratings and corrections go back to it.
"""
from __future__ import annotations

import threading

from ..client import Client, default_client_name


class ServerPipeline:
    """What nl2sql/ui/analyst.py and sidebar.py use of nl2sql.api.Pipeline, over HTTP. Databases are the server's
    names for them (GET /v1/databases); their schemas come with sample values, so `warehouse()` is None."""

    remote = True
    model_loaded = True  # the server's concern

    def __init__(self, settings):
        self.settings = settings
        self.client = Client(settings.server, settings=settings, name=f"nl2sql-app {default_client_name()}")
        self._schemas: dict = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.client.url

    def databases(self) -> list[str]:
        return self.client.databases()

    def schema(self, db):
        with self._lock:
            cached = self._schemas.get(db)
        if cached is None:  # fetched outside the lock: a slow server must not hold up other sessions' pages
            cached = self.client.schema(db)
            with self._lock:
                self._schemas[db] = cached
        return cached

    def warehouse(self, db):
        return None

    def ask(self, question, db, *, examples=None, session=None, progress=None):
        """`progress` as for Pipeline.ask: the server streams each stage's name (the app's status line)."""
        return self.client.ask(question, db, session=session, examples=examples, progress=progress)

    def execute(self, db, sql):
        return self.client.execute(sql, db)

    def feedback(self, entry_id: int, **fields) -> None:
        self.client.feedback(entry_id, **fields)


_pipelines: dict = {}
_pipelines_lock = threading.Lock()


def server_pipeline(settings) -> ServerPipeline:
    """One per server URL and token in this process (its schemas are shared by the browser sessions)."""
    key = (settings.server, settings.api_token)
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = ServerPipeline(settings)
        return _pipelines[key]


def is_remote(pipe) -> bool:
    return getattr(pipe, "remote", False)
