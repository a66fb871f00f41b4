"""Embedded engines (DuckDB, SQLite) in a child process that can be killed.

Why: DuckDB's interrupt and SQLite's progress handler act only between steps of a query; one long function
call (a huge string builder, a giant sort) runs on past the timeout, and its memory is the caller's. Here
each embedded warehouse owns one worker process that opens the database read-only itself, with an
address-space limit (RLIMIT_AS). The parent waits for the answer until the statement timeout plus a grace
period, watching the worker's resident memory; past either limit it kills the worker (SIGKILL) and starts a
fresh one on the next query. Results come back pickled over a pipe, framed by length (the worker is our own
code; the SQL it runs has no say in the bytes' structure beyond the values, which pickle as plain data).

The worker imports only the standard library and the engine's module, so that it starts fast
(about 0.3 s; see benchmarks/executor_overhead.py for the per-query cost).
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time

GRACE_S = 0.5            # how long past the timeout the parent waits before killing (target: <= 1 s)
POLL_S = 0.01            # how often the parent looks at the worker's memory while it waits
IDLE_EXIT_S = 60.0       # a worker with no query for this long exits (restarted on demand)
_HEADER = struct.Struct("!I")


class WorkerError(Exception):
    """What a worker reported, or why it was killed: kind is timeout | memory | refused | toobig | connect | died."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# --- parent side ----------------------------------------------------------------------------------------

class EmbeddedWorker:
    """One child process holding one read-only connection; `run` sends it a query and waits, killing it past
    the deadline or the memory limit. Thread-safe (one query at a time, like the connection itself)."""

    def __init__(self, kind: str, path: str, *, memory_limit_bytes: int, open_args: dict,
                 idle_exit_s: float = IDLE_EXIT_S):
        self.kind = kind
        self.idle_exit_s = idle_exit_s
        self.path = path
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.open_args = open_args
        self._proc: subprocess.Popen | None = None
        self._baseline_rss = 0
        self._lock = threading.Lock()
        self.restarts = 0

    # lifecycle
    def _start(self) -> None:
        env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1")
        self._proc = subprocess.Popen([sys.executable, "-m", "nl2sql.engines.worker", str(self.idle_exit_s)],
                                      stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        reply = self._call({"op": "open", "kind": self.kind, "path": self.path,
                            "memory_limit_bytes": self.memory_limit_bytes, **self.open_args}, deadline=30.0)
        self._baseline_rss = reply["rss"]

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
        if p is not None:
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except Exception:
                    pass

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    # requests
    def request(self, message: dict, *, timeout: float):
        """Send one request; the reply's payload, or WorkerError. Starts the worker if needed."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None and self._proc.returncode != 0:  # not an idle exit
                    self.restarts += 1
                self._kill()
                self._start()
            proc = self._proc
            try:
                return self._call(message, deadline=timeout + GRACE_S)
            except WorkerError as e:
                if e.kind != "died" or proc.returncode != 0:
                    raise
            # it exited idle just as this request came: once more, with a fresh worker
            self._start()
            return self._call(message, deadline=timeout + GRACE_S)

    def _call(self, message: dict, *, deadline: float):
        p = self._proc
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            p.stdin.write(_HEADER.pack(len(data)) + data)
            p.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            raise WorkerError("died", "The query process ended unexpectedly.") from None
        end = time.monotonic() + deadline
        fd = p.stdout.fileno()
        buf = bytearray()
        need = None
        limit = self._baseline_rss + self.memory_limit_bytes if self._baseline_rss else None
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self._kill()
                raise WorkerError("timeout", "killed past the deadline")
            ready, _, _ = select.select([fd], [], [], min(POLL_S, left))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    try:
                        code = p.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        code = None
                    self._kill()
                    if code is not None and code < 0 and -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
                        raise WorkerError("memory", "the query process was stopped (memory)")
                    raise WorkerError("died", "The query process ended unexpectedly.")
                buf += chunk
                if need is None and len(buf) >= _HEADER.size:
                    need = _HEADER.unpack_from(buf)[0] + _HEADER.size
                if need is not None and len(buf) >= need:
                    status, payload = pickle.loads(bytes(buf[_HEADER.size:need]))
                    if status == "ok":
                        return payload
                    raise WorkerError(*payload)
            elif limit is not None and _rss(p.pid) > limit:
                self._kill()
                raise WorkerError("memory", "killed over the memory limit")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --- worker side ----------------------------------------------------------------------------------------

def _read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _serve(idle_exit_s: float) -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    engine = None
    while True:
        # An idle worker goes away (the parent starts a new one on the next query): a process that opened
        # many databases, e.g. an evaluation over every Spider database, keeps only the busy ones running.
        # (Nothing is buffered here between requests: the parent sends the next one only after our reply.)
        if not select.select([inp.fileno()], [], [], idle_exit_s)[0]:
            return
        try:
            (n,) = _HEADER.unpack(_read_exactly(inp, _HEADER.size))
            message = pickle.loads(_read_exactly(inp, n))
        except EOFError:
            return  # the parent went away
        try:
            if message["op"] == "open":
                engine = _open(message)
                reply = ("ok", {"rss": _rss(os.getpid())})
            else:
                reply = ("ok", engine.run(message))
        except WorkerError as e:
            reply = ("error", (e.kind, str(e)))
        except MemoryError:
            reply = ("error", ("memory", "out of memory"))
        except Exception as e:  # an engine error: its first line, for the parent's message
            reply = ("error", ("refused", (str(e).strip().splitlines() or [type(e).__name__])[0][:300]))
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # a value that does not pickle
            data = pickle.dumps(("error", ("refused", f"a result value could not be sent back: {e}"[:300])))
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()


def _limit_address_space(message: dict) -> None:
    import resource
    extra = int(message.get("address_space_bytes") or 0)
    if extra:
        with open(f"/proc/{os.getpid()}/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))


def _open(message: dict):
    if message["kind"] == "duckdb":
        engine = _DuckDB(message)
    else:
        engine = _SQLite(message)
    _limit_address_space(message)  # after the engine's own start-up reservations
    return engine


def fetch_capped(fetchmany, row_limit: int, max_bytes: int):
    """Up to row_limit rows and about max_bytes of data; (rows, truncated) where truncated means a cap cut it."""
    rows: list[tuple] = []
    size = 0
    while len(rows) <= row_limit:
        batch = fetchmany(min(500, row_limit + 1 - len(rows)))
        if not batch:
            return rows, False
        for r in batch:
            size += sum(len(v) if isinstance(v, (str, bytes, bytearray)) else
                        len(repr(v)) if isinstance(v, (list, dict, tuple)) else 8 for v in r)
            if size > max_bytes:
                return rows, True
            rows.append(tuple(r))
    return rows[:row_limit], True


class _DuckDB:
    def __init__(self, m: dict):
        import duckdb
        self.duckdb = duckdb
        try:
            self.conn = duckdb.connect(m["path"], read_only=True, config=m["config"])
            self.conn.execute("SET lock_configuration = true")
        except duckdb.Error as e:
            raise WorkerError("connect", str(e).splitlines()[0][:300]) from None

    def run(self, m: dict):
        duckdb = self.duckdb
        sql = m["sql"]
        if m.get("check_statement", True):
            # DuckDB's own parser: exactly one SELECT. Read-only mode still allows temp tables, macros,
            # variables and search_path changes, which would outlive the query on this connection.
            statements = self.conn.extract_statements(sql)
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                kinds = ", ".join(str(st.type).rsplit(".", 1)[-1] for st in statements) or "none"
                raise WorkerError("statement", kinds)
        timer = threading.Timer(m["timeout"], self.conn.interrupt)
        timer.start()
        try:
            cur = self.conn.execute(sql)
            columns = [d[0] for d in cur.description]
            rows, truncated = fetch_capped(cur.fetchmany, m["row_limit"], m["max_bytes"])
        except duckdb.InterruptException:
            raise WorkerError("timeout", "interrupted") from None
        except duckdb.OutOfMemoryException:
            raise WorkerError("memory", "out of memory") from None
        finally:
            timer.cancel()
        return columns, rows, truncated


class _SQLite:
    def __init__(self, m: dict):
        import sqlite3
        from urllib.parse import quote
        self.sqlite3 = sqlite3
        try:
            self.conn = sqlite3.connect(f"file:{quote(m['path'], safe='/')}?mode=ro", uri=True,
                                        check_same_thread=False)
            self.conn.execute("SELECT 1").fetchall()
        except sqlite3.Error as e:
            raise WorkerError("connect", str(e).splitlines()[0][:300]) from None
        # Engine-level read-only beyond mode=ro: no ATTACH (limit 0), values no larger than max_bytes,
        # and an authorizer that allows reads and the allowlisted functions only.
        if hasattr(self.conn, "setlimit"):
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1000, min(int(m["max_bytes"]), 1_000_000_000)))
        allowed = frozenset(m["functions"])

        def authorize(action, arg1, arg2, db_name, trigger):
            if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in allowed:
                return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY
        self.conn.set_authorizer(authorize)

    def run(self, m: dict):
        sqlite3 = self.sqlite3
        deadline = time.monotonic() + m["timeout"]
        stopped = []

        def check():
            if time.monotonic() > deadline:
                stopped.append(True)
                return 1  # non-zero aborts the statement with "interrupted"
            return 0
        self.conn.set_progress_handler(check, 10000)
        cur = self.conn.cursor()
        try:
            cur.execute(m["sql"])
            if cur.description is None:
                raise WorkerError("statement", "not a query")
            columns = [d[0] for d in cur.description]
            rows, truncated = fetch_capped(cur.fetchmany, m["row_limit"], m["max_bytes"])
        except sqlite3.Error as e:
            text = str(e)
            if stopped or "interrupted" in text:
                raise WorkerError("timeout", "interrupted") from None
            if "too big" in text.lower():
                raise WorkerError("toobig", text) from None
            raise
        finally:
            cur.close()
            self.conn.rollback()
        return columns, rows, truncated


if __name__ == "__main__":
    _serve(float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_EXIT_S)
