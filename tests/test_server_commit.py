"""A stop that races the query-log write of an answer (nl2sql/server.py `_Commit`): the client's error must say
truthfully whether the answer was logged, and a cancelled request must write nothing."""
import threading

import pytest

from nl2sql.batching import cancel_scope, check_cancelled
from nl2sql.generate import RequestCancelled
from nl2sql.server import _Commit


def test_a_stop_during_the_write_waits_for_it_and_reports_the_entry():
    commit, event = _Commit(), threading.Event()
    writing, release, out = threading.Event(), threading.Event(), {}

    def record():
        writing.set()
        release.wait(10)   # the write is slow: the stop arrives in the middle of it
        return 42

    def work():
        with cancel_scope(event):
            out["entry"] = commit.write(record, check_cancelled)
    t = threading.Thread(target=work)
    t.start()
    assert writing.wait(10)
    stopper = threading.Thread(target=lambda: out.setdefault("stopped", commit.cancel(event)))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive() and not event.is_set()   # the stop waits for the write in progress ...
    release.set()
    t.join(10), stopper.join(10)
    assert out == {"entry": 42, "stopped": 42} and event.is_set()   # ... and then says it was logged


def test_a_stop_before_the_write_means_nothing_is_written():
    commit, event = _Commit(), threading.Event()
    assert commit.cancel(event) is None and event.is_set()
    written = []
    with cancel_scope(event), pytest.raises(RequestCancelled):
        commit.write(lambda: written.append(1), check_cancelled)
    assert written == [] and commit.entry is None
