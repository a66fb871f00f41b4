"""Confidence routing (nl2sql/routing.py): a confidence per answer, escalation to more candidates and then to a
larger backend, and the small model's answer standing when the larger one is down or wrong.

The models are scripted (a list of candidates per decoding); validation, the guarded executor and SQLite are real
(Spider's concert_singer copy of tests/conftest.py)."""
import math

import pytest

from nl2sql import routing
from nl2sql.api import Answer, Pipeline
from nl2sql.generate import Generation, ScriptedGenerator
from nl2sql.querylog import QueryLog

FRANCE = "SELECT name FROM singer WHERE country = 'France'"
NETHERLANDS = "SELECT name FROM singer WHERE country = 'Netherlands'"
ALL = "SELECT name FROM singer"
OLD = "SELECT name FROM singer WHERE age > 40"
# names both values its scripted candidates compare with: candidates that differ stay different (a value the
# question never names would be rewritten to the one it does, nl2sql/values.py, and they would agree)
Q = "Which singers are from France or the Netherlands?"


def _pipe(settings, *outputs, **changes):
    return Pipeline(settings.replace(**changes), generator=ScriptedGenerator(outputs))


def _gen(margins, logprob, n=None):
    n = len(margins) if n is None else n
    return Generation("x", n, 0.0, True, list(range(n)), list(margins), [-1] * n, logprob=logprob)


@pytest.mark.parametrize("agreement, margins, logprob, attempts, expected", [
    (4, [9.0, 9.0], 0.0, 1, 1.0),                      # all agree, every token sure, probability 1
    (1, [9.0, 9.0], 0.0, 1, 0.5 * 0.25 + 0.3 + 0.2),   # one of four agrees
    (4, [0.1, 9.0], 0.0, 1, 0.5 + 0.3 + 0.2 * 0.5),    # one token a near toss-up
    (4, [9.0, 9.0], -2 * math.log(2), 1, 0.5 + 0.3 * 0.5 + 0.2),  # mean token probability 1/2
    (4, [math.inf, 9.0], 0.0, 2, 1.0 * 0.7),           # a forced token is left out; one repair costs 30 %
])
def test_confidence_combines_agreement_tokens_and_repairs(agreement, margins, logprob, attempts, expected):
    a = Answer("q", agreement=agreement, candidates=4, attempts=attempts)
    assert routing.confidence(a, _gen(margins, logprob)) == pytest.approx(expected, abs=1e-4)


def test_an_answer_with_an_error_has_confidence_zero():
    assert routing.confidence(Answer("q", error="no such column", agreement=0), _gen([9.0], 0.0)) == 0.0


def test_a_sure_answer_is_not_escalated(settings, sqlite_db):
    pipe = _pipe(settings, [(FRANCE, -0.1)] * 4, candidates=4, escalate_below=0.5)
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.confidence > 0.99 and a.escalated is None and a.answered_by == "scripted"
    assert len(pipe.generator.prompts) == 1 and "escalate" not in a.timings


def test_routing_is_off_by_default(settings, sqlite_db):
    pipe = _pipe(settings, [(FRANCE, -0.1), (ALL, -0.2), (OLD, -0.3), (NETHERLANDS, -0.4)], candidates=4)
    a = pipe.ask(Q, str(sqlite_db))
    assert a.confidence < 0.7 and a.escalated is None and len(pipe.generator.prompts) == 1


def test_an_unsure_answer_gets_more_candidates_and_their_vote(settings, sqlite_db):
    first = [(NETHERLANDS, -0.1), (FRANCE, -0.2), (ALL, -0.3), (OLD, -0.4)]       # four different results
    more = [(NETHERLANDS, -0.1)] + [(FRANCE, -0.3)] * 9 + [(ALL, -0.5)] * 2       # twelve: most say France
    pipe = _pipe(settings, first, more, candidates=4, escalate_below=0.7, escalate_candidates=12)
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated == "candidates" and a.candidates == 12 and a.agreement == 9
    assert "France" in a.sql and set(a.df["Name"]) >= {"Justin Brown", "Rose White"}
    assert a.confidence >= 0.7 and a.timings["escalate"] > 0
    assert pipe.generator.prompts[0] == pipe.generator.prompts[1]  # the same prompt, only more candidates


def test_still_unsure_goes_to_the_larger_backend(settings, sqlite_db):
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                 escalate_candidates=0, escalate_model="bigger-model")
    larger = ScriptedGenerator([[(FRANCE, -0.05), (FRANCE, -0.1)]])
    larger.model_name = "bigger-model"
    routing.larger_pipeline(pipe, generator=larger)
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated == "model" and a.answered_by == "bigger-model" and "France" in a.sql
    assert a.model == "scripted"  # the model asked stays on record; answered_by says who wrote the SQL
    assert larger.prompts == pipe.generator.prompts  # the same prompt (and grammar) as the small model's


def test_the_larger_backend_decodes_its_own_number_of_candidates(settings, sqlite_db):
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                 escalate_candidates=0, escalate_model="bigger-model", escalate_model_candidates=5)
    larger = ScriptedGenerator([[(FRANCE, -0.05)] * 5])
    routing.larger_pipeline(pipe, generator=larger)
    a = pipe.ask(Q, str(sqlite_db))
    assert a.escalated == "model" and a.candidates == 5 and a.agreement == 5


def test_an_openai_url_is_a_remote_backend_and_a_malformed_one_a_note(settings, sqlite_db):
    from nl2sql.remote import RemoteGenerator
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                 escalate_candidates=0, escalate_model="openai:http://user:secret@gpu-box:8000/v1")
    gen = routing.larger_pipeline(pipe).generator
    assert isinstance(gen, RemoteGenerator) and gen.base == "http://user:secret@gpu-box:8000"
    assert gen.model_name == "openai:http://gpu-box:8000"   # before it is asked: where, without the password
    bad = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                escalate_candidates=0, escalate_model="openai:gpu-box:8000")
    a = bad.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated is None and "openai: followed by an http(s) URL" in a.route_note


def test_a_larger_backend_that_fails_to_load_leaves_the_small_answer_with_a_note(settings, sqlite_db, tmp_path):
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], [(NETHERLANDS, -0.1), (FRANCE, -0.2)],
                 candidates=2, escalate_below=0.9, escalate_candidates=0,
                 escalate_model=str(tmp_path / "no-such-checkpoint"))
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated is None and a.answered_by == "scripted" and a.sql
    assert "could not answer" in a.route_note and "no-such-checkpoint" in a.route_note
    # the next question does not try to load it again (it would cost the load's time on every question)
    b = pipe.ask("Which singers are from the Netherlands or France?", str(sqlite_db))
    assert b.ok and b.route_note == a.route_note and routing.larger_pipeline(pipe)._generator is None


def test_a_larger_backend_that_errors_or_fails_leaves_the_small_answer(settings, sqlite_db):
    class Broken(ScriptedGenerator):
        def candidates(self, *args, **kw):
            raise RuntimeError("CUDA out of memory")
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                 escalate_candidates=0, escalate_model="bigger-model")
    routing.larger_pipeline(pipe, generator=Broken([]))
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated is None and a.candidates == 2 and "CUDA out of memory" in a.route_note

    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], candidates=2, escalate_below=0.9,
                 escalate_candidates=0, escalate_model="bigger-model", repair_attempts=0)
    routing.larger_pipeline(pipe, generator=ScriptedGenerator([[("SELECT wage FROM singer", -0.1)] * 2]))
    a = pipe.ask(Q, str(sqlite_db))
    assert a.ok and a.escalated is None and a.sql and "wage" in a.route_note


def test_the_query_log_says_who_answered_and_how_sure(settings, sqlite_db, tmp_path):
    pipe = _pipe(settings, [(NETHERLANDS, -0.1), (FRANCE, -0.2)], [(FRANCE, -0.1)] * 6, candidates=2,
                 escalate_below=0.9, escalate_candidates=6)
    a = pipe.ask(Q, str(sqlite_db))
    log = QueryLog(tmp_path / "log.sqlite")
    entry = log.record(question=a.question, db="x", sql=a.sql, executed=True, model=a.model,
                       confidence=a.confidence, escalated=a.escalated, answered_by=a.answered_by)
    row = next(e for e in log.entries() if e["id"] == entry)
    assert row["escalated"] == "candidates" and row["answered_by"] == "scripted"
    assert row["confidence"] == a.confidence > 0.9


@pytest.mark.model
def test_escalation_end_to_end_with_a_second_in_process_model(settings, sqlite_db):
    """The bundled model answers; a question forced below the threshold goes through more candidates and then to
    a second model loaded in this process (the bundled base without the adapter: the only other checkpoint here)."""
    pipe = Pipeline(settings.replace(escalate_below=1.01, escalate_candidates=6, escalate_model="bundled",
                                     escalate_adapter="none"))
    a = pipe.ask("How many singers are there?", str(sqlite_db))
    larger = routing.larger_pipeline(pipe)
    assert larger.generator is not pipe.generator and larger.generator.adapter_name is None
    assert a.escalated in ("candidates", "model") and 0 <= a.confidence <= 1 and "escalate" in a.timings
    if a.escalated == "model":
        assert a.answered_by == larger.generator.model_name and a.candidates == settings.candidates
    else:  # the larger model's SQL failed where the more-candidates answer did not: that one stands, with a note
        assert a.route_note and a.candidates == 6
    assert a.ok and int(a.df.iloc[0, 0]) == 6
