"""Shadow replay, A/B rollout and the per-adapter comparison (nl2sql/lifecycle.py).

The registry holds real PEFT adapter directories (copies of the shipped one); the models answering are scripted;
the query log (SQLite), the guarded executor and the database (Spider's concert_singer copy) are real."""
import json
import logging
import shutil
import time

import pytest

from nl2sql import lifecycle, registry
from nl2sql.api import Pipeline
from nl2sql.errors import ConfigError, InputError
from nl2sql.generate import ScriptedGenerator
from nl2sql.querylog import QueryLog

FRANCE = "SELECT name FROM singer WHERE country = 'France'"
NETHERLANDS = "SELECT name FROM singer WHERE country = 'Netherlands'"
COUNT = "SELECT count(*) FROM singer"
COUNT_FR = "SELECT count(*) FROM singer WHERE country = 'France'"


class Scripted(ScriptedGenerator):
    def __init__(self, outputs, adapter):
        super().__init__(outputs)
        self.adapter_name = adapter


@pytest.fixture
def lab(settings, tmp_path):
    """Own data dir and log; the registry holds v2 (a copy of the shipped adapter, so it fits the base)."""
    s = settings.replace(data_dir=tmp_path, query_log=str(tmp_path / "log.sqlite"), examples=3)
    registry.register(tmp_path, registry.PACKAGE_ADAPTER, "v2")
    return s


def _sessions(version, share, inside, n=2):
    """n session ids inside (or outside) `version`'s share."""
    out, i = [], 0
    while len(out) < n:
        if lifecycle.in_share(f"s{i}", version, share) == inside:
            out.append(f"s{i}")
        i += 1
    return out


# --- statistics ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962),
                                              (1, 1, 0.2065, 1.0)])
def test_wilson_interval(k, n, low, high):
    lo, hi = lifecycle.wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("bad", ["7", "week", "-1d", ""])
def test_since_must_be_a_duration(bad):
    with pytest.raises(InputError, match="not a duration"):
        lifecycle.parse_since(bad)


@pytest.mark.parametrize("entry, expected", [
    ({"sql": COUNT, "rating": 1}, True),
    ({"sql": COUNT, "rating": -1}, False),
    ({"sql": COUNT, "corrected_sql": COUNT_FR}, False),
    ({"sql": COUNT, "rating": 1, "corrected_sql": COUNT_FR}, False),   # contradictory: the correction wins
    ({"sql": COUNT, "corrected_sql": "select  COUNT(*) from singer"}, True),  # "corrected" to itself
    ({"sql": COUNT}, None),
])
def test_verdict_from_feedback(entry, expected):
    assert lifecycle.verdict(entry) is expected


# --- A/B --------------------------------------------------------------------------------------------------------

def test_share_is_sticky_and_about_the_share():
    assert all(lifecycle.in_share("abc", "v2", 0.3) == lifecycle.in_share("abc", "v2", 0.3) for _ in range(3))
    assert not any(lifecycle.in_share(f"s{i}", "v2", 0.0) for i in range(200))
    assert all(lifecycle.in_share(f"s{i}", "v2", 1.0) for i in range(200))
    assert 0.25 < sum(lifecycle.in_share(f"s{i}", "v2", 0.3) for i in range(2000)) / 2000 < 0.35


def test_ab_share_answers_with_the_candidate_and_the_log_says_which(lab, sqlite_db):
    s = lab.replace(ab_adapter="v2", ab_share=0.5)
    pipe = Pipeline(s, generator=Scripted([COUNT] * 4, "promoted"))
    cand = lifecycle.candidate_pipeline(pipe, "v2", generator=Scripted([COUNT_FR] * 4, "v2"))
    log = QueryLog(s.query_log_path)
    inside, outside = _sessions("v2", 0.5, True), _sessions("v2", 0.5, False)
    for session in inside + outside:
        for _ in range(2):  # sticky: both questions of a session get the same adapter
            a = pipe.ask("How many singers?", str(sqlite_db), session=session)
            log.record(question=a.question, db="x", sql=a.sql, executed=True, model=a.model, adapter=a.adapter,
                       latency=0.5, session=session, attempts=a.attempts)
            assert a.adapter == ("v2" if session in inside else "promoted")
            assert (int(a.df.iloc[0, 0]) == 4) == (session in inside)
    assert len(cand.generator.prompts) == 4
    rows = {r["adapter"]: r for r in lifecycle.compare(log.entries())}
    assert rows["v2"]["answered"] == 4 and rows["promoted"]["answered"] == 4


def test_a_deleted_candidate_falls_back_to_the_promoted_adapter(lab, sqlite_db, caplog):
    s = lab.replace(ab_adapter="v2", ab_share=1.0)
    pipe = Pipeline(s, generator=Scripted([COUNT] * 3, "promoted"))
    lifecycle.candidate_pipeline(pipe, "v2", generator=Scripted([COUNT_FR] * 3, "v2"))
    assert pipe.ask("How many singers?", str(sqlite_db), session="a").adapter == "v2"
    shutil.rmtree(registry.root(s.data_dir) / "v2")
    with caplog.at_level(logging.WARNING, logger="nl2sql.lifecycle"):
        a = pipe.ask("How many singers?", str(sqlite_db), session="a")
    assert a.ok and a.adapter == "promoted" and int(a.df.iloc[0, 0]) == 6
    assert "v2" in caplog.text and "promoted adapter answers" in caplog.text


def test_a_candidate_for_another_base_is_refused(lab, sqlite_db, caplog):
    card = registry.root(lab.data_dir) / "v2" / "card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "base_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="another base model"):
        lifecycle.check_base(registry.root(lab.data_dir) / "v2", lab)
    pipe = Pipeline(lab.replace(ab_adapter="v2", ab_share=1.0), generator=Scripted([COUNT], "promoted"))
    with caplog.at_level(logging.WARNING, logger="nl2sql.lifecycle"):
        a = pipe.ask("How many singers?", str(sqlite_db), session="a")
    assert a.adapter == "promoted" and "another base model" in caplog.text


def test_an_adapter_whose_layers_do_not_fit_is_refused(lab, tmp_path):
    import torch
    from safetensors.torch import save_file
    other = tmp_path / "other"
    shutil.copytree(registry.PACKAGE_ADAPTER, other)
    (other / "card.json").unlink()  # no recorded base: the layer sizes decide
    name = "base_model.model.model.layers.0.mlp.down_proj.lora_"
    save_file({name + "A.weight": torch.zeros(8, 4096), name + "B.weight": torch.zeros(1280, 8)},
              str(other / "adapter_model.safetensors"))
    registry.register(lab.data_dir, other, "wide")
    with pytest.raises(ConfigError, match="do not fit"):
        lifecycle.check_base(registry.root(lab.data_dir) / "wide", lab)
    lifecycle.check_base(registry.root(lab.data_dir) / "v2", lab)  # the shipped layers fit


def test_unknown_candidate_names_the_known_versions(lab):
    with pytest.raises(ConfigError, match="v2"):
        lifecycle.adapter_dir(lab, "v9")


def test_compare_per_adapter_with_intervals(tmp_path):
    log = QueryLog(tmp_path / "log.sqlite")

    def add(adapter, n, **fb):
        for _ in range(n):
            e = log.record(question="q", db="x", sql=COUNT, executed=True, model="m", adapter=adapter, latency=1.0,
                           attempts=fb.pop("attempts", 1) if "attempts" in fb else 1)
            if fb:
                log.feedback(e, **fb)
    add("a1", 6, rating=1)
    add("a1", 2, rating=-1)
    add("a1", 2, corrected_sql=COUNT_FR)
    add("a1", 10)
    add("a2", 3, rating=1)
    add("a2", 1, attempts=2)
    log.add_verified([("q", COUNT)], db="x", dialect="sqlite", comment="import")  # not an answer: left out
    rows = {r["adapter"]: r for r in lifecycle.compare(log.entries())}
    a1, a2 = rows["a1"], rows["a2"]
    assert a1["answered"] == 20 and a1["accuracy_verified"]["k"] == 6 and a1["accuracy_verified"]["n"] == 10
    assert a1["accuracy_verified"]["low"] < 0.6 < a1["accuracy_verified"]["high"]
    assert a1["thumbs_down"]["rate"] == 0.1 and a1["thumbs_up"]["rate"] == 0.3
    assert a2["repaired"]["k"] == 1 and a2["repaired"]["n"] == 4 and a2["accuracy_verified"]["rate"] == 1.0
    assert a1["latency"]["median"] == 1.0
    assert lifecycle.compare(log.entries(), since_s=60, now=time.time() + 3600) == []


# --- shadow ---------------------------------------------------------------------------------------------------

def test_shadow_replays_logged_questions_through_the_candidate(lab, sqlite_db):
    db = str(sqlite_db)
    log = QueryLog(lab.query_log_path)
    up = log.record(question="How many singers are there?", db=db, sql=COUNT, executed=True, model="m",
                    adapter="promoted")
    log.feedback(up, rating=1)
    wrong = log.record(question="How many singers are from France?", db=db, sql=COUNT, executed=True, model="m",
                       adapter="promoted")
    log.feedback(wrong, corrected_sql=COUNT_FR)
    log.record(question="Who is from the Netherlands?", db=db, sql=NETHERLANDS, executed=True, model="m",
               adapter="promoted")
    old = log.record(question="Old question?", db=db, sql=COUNT, executed=True, model="m", adapter="promoted")
    log.add_verified([("Which singers are French?", FRANCE)], db=db, dialect="sqlite", comment="import")
    import sqlite3
    con = sqlite3.connect(lab.query_log_path)
    con.execute("UPDATE entries SET created = created - 30 * 86400 WHERE id = ?", (old,))
    con.commit()
    con.close()

    pipe = Pipeline(lab, generator=Scripted([], "promoted"))
    # newest first: the Netherlands question (same result), France (right where the promoted was corrected),
    # the count (wrong where the promoted got a thumbs-up)
    cand = Scripted([NETHERLANDS, COUNT_FR, FRANCE], "v2")
    report = lifecycle.shadow(pipe, "v2", since="7d", generator=cand)
    rows = {r.entry_id: r for r in report.rows}
    assert set(rows) == {up, wrong, up + 2}  # the old one and the imported pair are not replayed
    assert rows[up + 2].matches_promoted is True and rows[up + 2].verified is False
    assert rows[wrong].matches_promoted is False and rows[wrong].corrected_sql == COUNT_FR
    assert rows[wrong].candidate_correct is True and rows[wrong].promoted_correct is False
    assert rows[up].candidate_correct is False and rows[up].promoted_correct is True
    summary = report.summary()
    assert summary["questions"] == 3 and summary["verified"] == 2
    assert summary["candidate_accuracy"]["k"] == 1 and summary["promoted_accuracy"]["k"] == 1
    # a question's own verified pair is never shown to the candidate as an example
    france_prompt = cand.prompts[1]
    assert "How many singers are from France?" in france_prompt and COUNT_FR not in france_prompt

    path = lifecycle.save_report(report, lab)
    assert json.loads(path.read_text())["summary"] == lifecycle.latest_shadow(lab)["summary"]


def test_a_question_logged_several_times_is_asked_once_and_each_entry_compared_on_its_own(lab, sqlite_db):
    db = str(sqlite_db)
    log = QueryLog(lab.query_log_path)
    q = "How many singers are from France?"
    right = log.record(question=q, db=db, sql=COUNT_FR, executed=True, model="m", adapter="promoted")
    log.feedback(right, rating=1)
    wrong = log.record(question=q, db=db, sql=COUNT, executed=True, model="m", adapter="promoted")
    log.feedback(wrong, corrected_sql=COUNT_FR)
    plain = log.record(question=q, db=db, sql=COUNT, executed=True, model="m", adapter="promoted")
    other = log.record(question="Who is from the Netherlands?", db=db, sql=NETHERLANDS, executed=True, model="m",
                       adapter="promoted")
    other_db = log.record(question=q, db="demo", sql="SELECT COUNT(*) FROM customers", executed=True, model="m",
                          adapter="promoted")
    cand = Scripted(["SELECT COUNT(*) FROM customers", NETHERLANDS, COUNT_FR], "v2")
    report = lifecycle.shadow(Pipeline(lab, generator=Scripted([], "promoted")), "v2", since="7d", generator=cand)
    assert len(cand.prompts) == 3   # the France question once per database, and the Netherlands one
    rows = {r.entry_id: r for r in report.rows}
    assert [r.entry_id for r in report.rows] == [other_db, other, plain, wrong, right]   # the log's order, newest first
    answers = {rows[i].candidate_sql for i in (right, wrong, plain)}
    assert len(answers) == 1 and "'France'" in answers.pop()
    assert rows[right].matches_promoted is True and rows[right].candidate_correct is True
    assert rows[wrong].matches_promoted is False and rows[wrong].candidate_correct is True
    assert rows[wrong].promoted_correct is False
    assert rows[plain].matches_promoted is False and rows[plain].verified is False
    assert rows[other].matches_promoted is True and rows[other_db].matches_promoted is True
    shared = [r for r in report.rows if r.replayed_with is not None]
    assert {r.entry_id for r in shared} == {wrong, right} and {r.replayed_with for r in shared} == {plain}
    assert report.summary()["questions"] == 5 and report.summary()["distinct_questions"] == 3


def test_shadow_of_an_unknown_or_foreign_adapter_is_refused(lab):
    pipe = Pipeline(lab, generator=Scripted([], "promoted"))
    with pytest.raises(ConfigError, match="No adapter version"):
        lifecycle.shadow(pipe, "v9")
    card = registry.root(lab.data_dir) / "v2" / "card.json"
    card.write_text(json.dumps({"base_sha256": "f" * 64}))
    with pytest.raises(ConfigError, match="another base model"):
        lifecycle.shadow(pipe, "v2")


def test_cli_compare_and_shadow_refusals(lab, capsys, monkeypatch):
    from nl2sql.cli import main
    monkeypatch.setenv("NL2SQL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("NL2SQL_QUERY_LOG", str(lab.query_log_path))
    log = QueryLog(lab.query_log_path)
    e = log.record(question="q", db="x", sql=COUNT, executed=True, model="m", adapter="v2", latency=2.0, attempts=1)
    log.feedback(e, rating=1)
    assert main(["adapters", "compare", "--since", "1d"]) == 0
    out = capsys.readouterr().out
    assert "v2" in out and "100.0 %" in out
    assert main(["adapters", "shadow", "v9"]) == 1
    assert "Known versions: v2" in capsys.readouterr().err
    assert main(["adapters", "compare", "--since", "week"]) == 1
    assert "7d, 12h" in capsys.readouterr().err


def test_team_page_lifecycle_tab_compares_and_promotes(lab, sqlite_db):
    from streamlit.testing.v1 import AppTest

    from nl2sql.ui.session import PIPELINE_KEY
    log = QueryLog(lab.query_log_path)
    for adapter, rating in (("v2", 1), ("v2", -1), ("shipped", 1)):
        e = log.record(question="How many singers?", db=str(sqlite_db), sql=COUNT, executed=True, model="m",
                       adapter=adapter, latency=1.0, attempts=1)
        log.feedback(e, rating=rating)
    report = lifecycle.shadow(Pipeline(lab, generator=Scripted([], "shipped")), "v2",
                              generator=Scripted([COUNT, COUNT, COUNT], "v2"))
    lifecycle.save_report(report, lab)

    def page():
        from nl2sql.ui import team
        team.render()
    at = AppTest.from_function(page, default_timeout=60)
    at.session_state[PIPELINE_KEY] = Pipeline(lab.replace(ab_adapter="v9", ab_share=0.1),
                                              generator=ScriptedGenerator([]))
    at.run()
    assert not at.exception, at.exception
    tables = [t.value for t in at.dataframe]
    compared = next(t for t in tables if "thumbs up" in t.columns)
    assert set(compared["adapter"]) == {"v2", "shipped"}
    assert compared.set_index("adapter").loc["v2", "accuracy (verified)"].startswith("50.0 %")
    assert any("No adapter version 'v9'" in w.value for w in at.warning)  # the A/B candidate is not there
    shadowed = next(t for t in tables if "candidate right" in t.columns)
    assert len(shadowed) == 3
    at.button(key="lifecycle_promote").click().run()
    assert registry.promoted_adapter(lab.data_dir).name == "v2"
    at.button(key="lifecycle_rollback").click().run()
    assert registry.promoted_adapter(lab.data_dir) is None and not at.exception
    assert any("Rolled back" in m.value for m in at.success)


@pytest.mark.model
def test_shadow_replays_questions_together_with_the_answers_each_gets_alone(lab):
    """With the bundled model the replay batches questions across threads (nl2sql/batching.py); every candidate
    answer is the one a one-at-a-time replay gives. One (greedy) candidate per question: sampled candidates may
    differ at bf16 near-ties between batch shapes, and threads make the shapes vary (tests/test_batching.py)."""
    from nl2sql.evaluate import demo_cases
    lab = lab.replace(candidates=1)
    log = QueryLog(lab.query_log_path)
    for case in demo_cases(5):
        log.record(question=case.question, db="demo", sql=case.gold, executed=True, model="m", adapter="promoted")
    pipe = Pipeline(lab)
    together = lifecycle.shadow(pipe, "v2", since="7d", workers=5)
    alone = lifecycle.shadow(pipe, "v2", since="7d", workers=1)
    assert [r.question for r in together.rows] == [r.question for r in alone.rows]
    assert len(together.rows) == 5
    assert [(r.candidate_sql, r.candidate_error) for r in together.rows] == \
        [(r.candidate_sql, r.candidate_error) for r in alone.rows]
    assert all(r.candidate_sql for r in together.rows)
