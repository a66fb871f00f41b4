"""Batched generation across requests: questions asked at the same time decode in one batch.

`BatchingGenerator` has the Generator protocol (nl2sql/generate.py), so a Pipeline uses it like the in-process
model; each `candidates()` call becomes a request on a queue. One decoding thread owns a `DecodeBatch`: it takes
in whatever requests arrived (waiting a few milliseconds when idle, so questions sent together start together),
steps every row one token, hands each request its candidates as soon as its rows are done, and takes in new
requests between steps (continuous batching). On 2 CPU cores a step of many rows costs little more than a step
of one, because reading the weights dominates, so eight questions take far less than eight times one.

Cancelling: a thread that runs under `cancel_scope(event)` (the server does this per HTTP request) gives up as
soon as the event is set: its rows leave the batch at the next step and its call raises RequestCancelled.
"""
from __future__ import annotations

import contextvars
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager

from .generate import DecodeBatch, GenRequest, Generation, RequestCancelled

_cancel: contextvars.ContextVar = contextvars.ContextVar("nl2sql_cancel", default=None)


@contextmanager
def cancel_scope(event: threading.Event):
    """Generation requests made inside this block are dropped once `event` is set."""
    token = _cancel.set(event)
    try:
        yield event
    finally:
        _cancel.reset(token)


def check_cancelled() -> None:
    """Raise RequestCancelled if the current cancel scope's event is set (call it between stages)."""
    event = _cancel.get()
    if event is not None and event.is_set():
        raise RequestCancelled()


class BatchingGenerator:
    """Shares one decoding batch among threads. `max_rows` caps the rows decoded together (each question
    brings NL2SQL_CANDIDATES rows); `window_s` is how long an idle batcher waits for companions of a request."""

    def __init__(self, inner, *, max_rows: int = 32, window_s: float = 0.01):
        self.inner = inner
        self.max_rows = max(1, max_rows)
        self.window_s = window_s
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nl2sql-batcher", daemon=True)
        self._thread.start()
        self.batches = 0          # steps run with more than one request in the batch (for /metrics)
        self.rows_decoding = 0
        self.requests_waiting = 0

    # --- the Generator protocol -------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def adapter_name(self) -> str | None:
        return self.inner.adapter_name

    def decode(self, ids) -> str:
        return self.inner.decode(ids)

    def generate(self, prompt, grammar, max_new_tokens, prefix=None, forced=(), binder=None) -> Generation:
        return self.candidates(prompt, grammar, max_new_tokens, prefix=prefix, forced=forced, binder=binder)[0]

    def candidates(self, prompt, grammar, max_new_tokens, *, prefix=None, n=1, binder=None, seed=0,
                   temperature=0.7, forced=()) -> list[Generation]:
        return self.candidates_many([GenRequest(prompt, grammar, max_new_tokens, prefix=prefix, n=n, binder=binder,
                                                seed=seed, temperature=temperature, forced=tuple(forced))])[0]

    def candidates_many(self, requests: list[GenRequest]) -> list[list[Generation]]:
        event = _cancel.get()
        futures = []
        for r in requests:
            if event is not None and r.cancelled is None:
                r.cancelled = event.is_set
            futures.append(self.submit(r))
        return [f.result() for f in futures]

    # --- the queue and the decoding thread ---------------------------------------------------------
    def submit(self, request: GenRequest) -> Future:
        fut: Future = Future()
        if self._closed.is_set():
            fut.set_exception(RequestCancelled("the generator is shutting down"))
            return fut
        self._queue.put((request, fut))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; those waiting or decoding end with RequestCancelled."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _drain(self, incoming: list, get) -> None:
        """Move queued requests into `incoming` until `get` finds none (queue.Empty); None closes the generator."""
        while True:
            try:
                item = get()
            except queue.Empty:
                return
            if item is None:
                self._closed.set()
                return
            incoming.append(item)

    def _loop(self) -> None:
        batch: DecodeBatch | None = None
        waiting: dict = {}       # handle -> Future of requests in the batch
        held = None              # a request that did not fit in the batch yet
        while True:
            if self._closed.is_set():
                break
            idle = batch is None or not batch.rows
            incoming = []
            if held is not None:
                incoming.append(held)
                held = None
            if idle and not incoming:
                item = self._queue.get()
                if item is None:
                    break
                incoming.append(item)
                deadline = time.monotonic() + self.window_s  # companions sent at the same time join this batch

                def until_deadline():
                    left = deadline - time.monotonic()
                    return self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                self._drain(incoming, until_deadline)
            else:
                self._drain(incoming, self._queue.get_nowait)
            if batch is None or not batch.rows:
                batch = DecodeBatch(self.inner)
                waiting = {}
            rows = len(batch.rows)
            for i, (req, fut) in enumerate(incoming):
                if rows and rows + max(1, req.n) > self.max_rows:
                    # wait for room; the rest go back to the queue in order behind it
                    held = (req, fut)
                    for rest in incoming[i + 1:]:
                        self._queue.put(rest)
                    break
                try:
                    with self.inner._lock:
                        h = batch.add(req)
                except BaseException as e:  # e.g. a grammar that does not compile: that request's error only
                    fut.set_exception(e)
                    continue
                waiting[h] = fut
                rows = len(batch.rows)
            self.requests_waiting = self._queue.qsize() + (held is not None)
            self.rows_decoding = len(batch.rows)
            try:
                if batch.rows:
                    if len(batch.live) > 1:
                        self.batches += 1
                    with self.inner._lock:
                        batch.step()
            except BaseException as e:  # an unexpected failure ends every request in this batch, not the service
                for fut in waiting.values():
                    if not fut.done():
                        fut.set_exception(e)
                batch, waiting = None, {}
                continue
            for h, out in batch.pop_finished():
                fut = waiting.pop(h)
                if isinstance(out, BaseException):
                    fut.set_exception(out)
                else:
                    fut.set_result(out)
        # closing: everything still queued or decoding is cancelled
        for fut in list(waiting.values()) + ([held[1]] if held else []):
            if not fut.done():
                fut.set_exception(RequestCancelled("the generator is shutting down"))
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item[1].done():
                item[1].set_exception(RequestCancelled("the generator is shutting down"))
