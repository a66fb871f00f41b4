"""The data team's page: accuracy on the demo benchmark, latency and feedback over time, the business glossary
(view, check, edit, save), the verified examples retrieved into prompts (and an import), the learning curve, and
the adapters' lifecycle (per-adapter comparison of an A/B rollout, promote and roll back, the latest shadow run).

The glossary and the examples are those of the database picked in the Ask page's sidebar (`conn_db` in the
session; the demo warehouse until one is picked). Saving a glossary runs the check the loader runs
(nl2sql/glossary.py): text that is not a glossary (invalid YAML, unknown sections) is never written; entries
with problems are written with a warning, since the loader leaves them out and keeps the rest. The shipped demo
glossary is never overwritten: edits go to a user copy (`glossary.user_glossary_path`).

Hook: `render(learning_curve=PATH)` reads the learning-curve results from PATH instead of the source
checkout's benchmarks/results/learning_curve/results.json (tests pass a fixture file).
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import streamlit as st

from .. import monitoring
from ..errors import Nl2SqlError
from . import session
from .via_server import is_remote

# Saved `nl2sql eval` results in a source checkout (they are not part of the installed package).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
LEARNING_CURVE = RESULTS_DIR / "learning_curve" / "results.json"
SHOWN_PAIRS = 500  # verified pairs listed at once (each is checked against the schema to say if it is used)


def render(learning_curve: Path | str | None = None) -> None:
    import altair as alt
    st.title("Data team")
    try:
        pipe = session.pipeline()
        settings = pipe.settings
    except Nl2SqlError as e:
        st.error(str(e))
        return
    if is_remote(pipe):  # the query log, glossaries and adapters are the server's
        st.info(f"This app asks the nl2sql server at {pipe.url}: its query log, glossaries and adapters are on the "
                "server. Open this page in an app that runs where the server does (without NL2SQL_SERVER).")
        return
    quality, glossary, examples, curve, lifecycle_tab = st.tabs(["Quality and usage", "Glossary", "Verified examples",
                                                                 "Learning curve", "Lifecycle"])
    with lifecycle_tab:
        _lifecycle(settings)
    with quality:
        _benchmark(alt, RESULTS_DIR / "demo")
        _usage(alt, settings)
    with curve:
        _learning_curve(alt, Path(learning_curve) if learning_curve else LEARNING_CURVE)
    with glossary:
        db, schema = _database(pipe)
        if schema is not None:
            _glossary(pipe, db, schema)
    with examples:
        if schema is not None:
            _examples(pipe, db, schema)
        else:
            st.info("Open a database on the Ask page to see its verified examples.")


def _benchmark(alt, results_dir: Path) -> None:
    st.header("Demo benchmark")
    bench = monitoring.load_benchmark(results_dir)
    if bench is None:
        st.info(f"No benchmark results at {results_dir}. Run `nl2sql eval --out {results_dir}/predictions.jsonl`.")
        return
    s, preds = bench["summary"], bench["predictions"]
    st.caption(f"{s.get('n')} questions on the demo warehouse · model {s.get('model')} · adapter {s.get('adapter')}"
               f" · constrained {s.get('constrained')}")
    cols = st.columns(4)
    cols[0].metric("Execution accuracy", f"{s['execution_accuracy'] * 100:.1f} %")
    cols[1].metric("Rejected by validation", f"{s['invalid_sql_rate'] * 100:.1f} %")
    cols[2].metric("Median latency", f"{s['median_seconds']:.2f} s")
    cols[3].metric("p90 latency", f"{s['p90_seconds']:.2f} s")
    if preds.empty:
        return
    left, right = st.columns(2)
    outcomes = preds.groupby("outcome").size().reset_index(name="questions")
    left.altair_chart(alt.Chart(outcomes, title="Outcome per question").mark_bar().encode(
        x=alt.X("questions:Q"), y=alt.Y("outcome:N", sort="-x", title=None),
        color=alt.Color("outcome:N", legend=None), tooltip=["outcome", "questions"]), width="stretch")
    right.altair_chart(alt.Chart(preds, title="Seconds per question").mark_bar().encode(
        x=alt.X("seconds:Q", bin=alt.Bin(maxbins=30), title="seconds"), y=alt.Y("count():Q", title="questions"),
        color=alt.Color("outcome:N")), width="stretch")


def _usage(alt, settings) -> None:
    st.header("Analysts' questions")
    df = monitoring.log_frame(session.query_log(settings).entries())
    st.caption(f"From the query log at {settings.query_log_path}")
    if df.empty:
        st.info("No questions logged yet. Ask some on the Ask page.")
        return
    tot = monitoring.totals(df)
    cols = st.columns(5)
    cols[0].metric("Answers", tot["answers"])
    cols[1].metric("Rated", tot["rated"])
    cols[2].metric("Thumbs up", "–" if tot["thumbs_up_share"] is None else f"{tot['thumbs_up_share'] * 100:.0f} %")
    cols[3].metric("Corrected", tot["corrected"])
    cols[4].metric("p90 latency", "–" if tot["p90"] is None else f"{tot['p90']:.2f} s")
    left, right = st.columns(2)
    lat = monitoring.latency_by_day(df)
    if not lat.empty:
        left.altair_chart(alt.Chart(lat, title="Latency percentiles per day").mark_line(point=True).encode(
            x=alt.X("day:T", title=None), y=alt.Y("seconds:Q"), color="percentile:N",
            tooltip=["day:T", "percentile", alt.Tooltip("seconds:Q", format=".2f")]), width="stretch")
    fb = monitoring.feedback_by_day(df)
    right.altair_chart(alt.Chart(fb, title="Feedback per day (share of answers)").mark_line(point=True).encode(
        x=alt.X("day:T", title=None), y=alt.Y("rate:Q", axis=alt.Axis(format="%"), title=None), color="measure:N",
        tooltip=["day:T", "measure", alt.Tooltip("rate:Q", format=".0%"), "answers"]), width="stretch")


# --- the database whose knowledge is shown ----------------------------------------------------------------------

def _database(pipe):
    """(db, schema) of the database picked on the Ask page, or (db, None) with a message shown."""
    db = st.session_state.get("conn_db")  # written by the Ask page; absent until it ran: the demo warehouse
    if isinstance(db, str) and db.startswith("\0"):  # the Ask page has no database open
        st.info("Open a database in the Ask page's sidebar: its glossary and verified examples show here.")
        return db, None
    st.caption(f"Database: **{_db_label(db)}** · pick another in the Ask page's sidebar.")
    try:
        return db, pipe.schema(db)
    except Nl2SqlError as e:
        st.error(f"Cannot open that database. {e}")
    except Exception as e:  # a driver error's text may hold credentials: name its kind only
        st.error(f"Cannot open that database ({type(e).__name__}). Check it on the Ask page.")
    return db, None


def _db_label(db) -> str:
    from ..querylog import db_key
    return "demo warehouse" if db is None else db_key(db)


# --- glossary ---------------------------------------------------------------------------------------------------

TEMPLATE = """\
# Business glossary (README "Team knowledge"): what your team's words mean in this warehouse.
# Every sql/filter is checked against the live schema; only the entries a question mentions reach the prompt.
metrics: []
#  - name: revenue
#    synonyms: [sales, turnover]
#    sql: SUM(orders.amount)
#    filter: orders.status = 'completed'
#    description: Money taken on completed orders.
terms: []
#  - name: Texas
#    sql: customers.state = 'TX'
joins: []
notes: []
"""


def _shipped(path: Path) -> bool:
    """A glossary file that ships with nl2sql (inside the installed packages): never written by the page."""
    from nl2sql import schemas

    import nl2sql
    roots = [Path(nl2sql.__file__).resolve().parent, Path(schemas.__file__).resolve().parent]
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(r) for r in roots)


def _in_use(pipe, db, schema) -> tuple[Path | None, str | None]:
    """(the glossary file questions on `db` use, or None; why it cannot be loaded, or None). Asks the pipeline,
    so this follows NL2SQL_GLOSSARY and the default locations exactly as Pipeline.ask does."""
    try:
        g = pipe.glossary(db, schema)
    except Nl2SqlError as e:
        from ..glossary import glossary_path
        return glossary_path(pipe.settings, db), str(e)
    return (Path(g.source) if g is not None else None), None


def _glossary(pipe, db, schema) -> None:
    from ..errors import ConfigError
    from ..glossary import parse_glossary, render, user_glossary_path
    settings = pipe.settings
    st.header("Business glossary")
    in_use, load_error = _in_use(pipe, db, schema)
    target = in_use if in_use is not None and not _shipped(in_use) else user_glossary_path(settings, db)
    if settings.glossary.strip().lower() == "off":
        st.caption("NL2SQL_GLOSSARY=off: questions get no glossary entries. Save writes "
                   f"`{target}`; set NL2SQL_GLOSSARY to that path (and restart) to use it.")
    elif in_use is None:
        st.caption(f"No glossary is used for this database yet. Save writes `{target}`.")
    elif in_use == target:
        st.caption(f"In use: `{in_use}`. Save writes it in place.")
    else:
        st.caption(f"In use: `{in_use}` (shipped with nl2sql, never modified). Save writes your copy to `{target}`.")
    if load_error:
        st.error(f"The glossary in use cannot be loaded: {load_error}")
    used = in_use is not None and in_use.expanduser().resolve() == target.expanduser().resolve()
    if target.exists() and not used and settings.glossary.strip().lower() != "off":
        st.warning(f"Your saved glossary `{target}` is not the one questions use. Set "
                   f"`NL2SQL_GLOSSARY={target}` and restart the app to use it.")

    key = f"glossary_text:{target}"
    if key not in st.session_state:
        st.session_state[key] = _read_text(target) or _read_text(in_use) or TEMPLATE
    text = st.text_area("Glossary (YAML)", key=key, height=420,
                        help="Format: README 'Team knowledge'. Sections metrics, terms, joins, notes.")
    check_col, save_col, reload_col = st.columns([1, 1, 4])
    # callbacks: they run before the page is drawn, so the captions above already show a file just saved
    check_col.button("Check", key="glossary_check", on_click=_check, args=(False, key, target, schema, settings))
    save_col.button("Save", key="glossary_save", type="primary", on_click=_check,
                    args=(True, key, target, schema, settings))
    reload_col.button("Reload from file", key="glossary_reload", on_click=_reload, args=(key, target, in_use),
                      help=f"Discard edits: read {target if target.exists() else in_use} again.")
    result = st.session_state.pop("glossary_result", None)
    if result is not None and "error" in result:
        st.error(result["error"])
    elif result is not None:
        n, problems = result["entries"], result["problems"]
        ok = f"{n} entr{'y checks' if n == 1 else 'ies check'} out against the live schema."
        st.success(f"Saved to `{result['target']}`. {ok}" if result["saved"] else ok)
        if problems:
            st.warning(f"{len(problems)} entr{'y has a problem' if len(problems) == 1 else 'ies have problems'}"
                       + (" (saved anyway: the loader leaves " if result["saved"] else "; the loader leaves ")
                       + "them out and uses the rest):\n\n" + "\n".join(f"- {p}" for p in problems[:50]))

    st.subheader("Try a question")
    question = st.text_input("Question", key="glossary_try", placeholder="What was revenue in Texas last quarter?",
                             help="Shows the entries of the glossary in the editor that this question would get.")
    if question.strip():
        try:
            g = parse_glossary(text, schema, settings=settings, source="the editor")
        except ConfigError as e:
            st.error(str(e))
        else:
            entries = g.relevant(question)
            if entries:
                st.caption("Entries in the prompt: " + ", ".join(e.name for e in entries))
                st.code(render(entries), language="sql")
            else:
                st.caption("No entry matches: this question gets no glossary lines. Add its words as a name or "
                           "synonym.")


def _read_text(path) -> str | None:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8") if path is not None else None
    except (OSError, UnicodeDecodeError):
        return None


def _check(save: bool, key: str, target: Path, schema, settings) -> None:
    """Check (and with `save`, write) the editor's text; the outcome is shown by the run this click causes."""
    from ..errors import ConfigError
    from ..glossary import parse_glossary, save_glossary
    text = st.session_state.get(key, "")
    try:
        g = (save_glossary(target, text, schema, settings=settings) if save
             else parse_glossary(text, schema, settings=settings, source=str(target)))
    except ConfigError as e:
        st.session_state["glossary_result"] = {"error": ("Not saved: " if save else "") + str(e)}
    else:
        st.session_state["glossary_result"] = {"saved": save, "target": str(target), "entries": len(g.entries),
                                               "problems": list(g.problems)}


def _reload(key: str, target: Path, in_use) -> None:
    st.session_state[key] = _read_text(target) or _read_text(in_use) or TEMPLATE


# --- verified examples ------------------------------------------------------------------------------------------

def verified_pairs(entries, key: str) -> list[dict]:
    """The verified pairs of database `key` in query-log entries, newest first, one per question (the newest
    verification wins, as in the example store): corrected SQL, thumbs-up answers and imported pairs."""
    from ..examples import IMPORTED
    latest: dict[str, dict] = {}
    for e in entries:
        if e["db"] != key:
            continue
        if e["corrected_sql"]:
            source = "imported" if (e["comment"] or "").startswith(IMPORTED) else "corrected"
        elif e["rating"] == 1 and e["sql"]:
            source = "thumbs-up"
        else:
            continue  # unrated, or thumbs-down without a correction: never an example
        latest[" ".join(e["question"].lower().split())] = {
            "id": e["id"], "question": e["question"], "sql": e["corrected_sql"] or e["sql"], "source": source,
            "dialect": e["dialect"], "when": e["corrected_at"] or e["rated_at"] or e["created"]}
    return sorted(latest.values(), key=lambda r: -r["id"])


def _fits(sql: str, dialect, schema) -> bool:
    """Whether a pair is still retrieved: its SQL validates against the schema (nl2sql/examples.py skips it
    otherwise, e.g. after a column was dropped)."""
    from ..validate import to_model_dialect, validate
    try:
        validate(to_model_dialect(sql, dialect), schema)
        return True
    except Exception:  # noqa: BLE001 - any failure means the example store skips it
        return False


def _examples(pipe, db, schema) -> None:
    import pandas as pd

    from ..examples import import_pairs
    from ..querylog import db_key
    settings = pipe.settings
    key = db_key(db)
    st.header("Verified examples")
    st.caption(f"Pairs of this database in the query log `{settings.query_log_path}`: the "
               f"{settings.examples} most similar to a question go into its prompt (NL2SQL_EXAMPLES). A correction "
               "is used by the very next question; a thumbs-down answer is never an example.")
    table = st.container()
    with st.expander("Import verified pairs"):
        st.caption('A JSON-lines file, one `{"question": ..., "sql": ...}` per line. Each SQL is checked against '
                   "this database's schema; a pair that fails is skipped and named by its line.")
        up = st.file_uploader("Pairs file", type=["jsonl", "json", "txt"], key="pairs_file")
        if up is not None and st.button("Import", key="pairs_import"):
            try:
                log = session.query_log(settings)
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / Path(up.name).name  # the log records the file's name with each pair
                    path.write_bytes(up.getvalue())
                    try:
                        n, problems = import_pairs(path, schema=schema, log=log, db_key=key, settings=settings)
                    except Nl2SqlError as e:
                        raise Nl2SqlError(str(e).replace(str(path), up.name)) from None
            except Nl2SqlError as e:
                st.error(f"Nothing imported. {e}")
            except OSError as e:
                st.error(f"Nothing imported: cannot write the query log at {settings.query_log_path} ({e}). "
                         "Check the disk, or point NL2SQL_QUERY_LOG at a writable file.")
            else:
                (st.success if n else st.warning)(f"Imported {n} pair{'' if n == 1 else 's'} from {up.name}.")
                if problems:
                    st.warning(f"Skipped {len(problems)} line{'' if len(problems) == 1 else 's'}:\n\n"
                               + "\n".join(f"- {p}" for p in problems[:50]))
    with table:
        try:
            rows = verified_pairs(session.query_log(settings).entries(), key)
        except (OSError, sqlite3.Error) as e:  # an unreadable log is a note, not a crash
            st.error(f"Cannot read the query log at {settings.query_log_path}: {e}.")
            return
        if not rows:
            st.info("No verified pairs for this database yet: correct an answer's SQL or rate it thumbs-up on the "
                    "Ask page, or import a pairs file below.")
            return
        shown = rows[:SHOWN_PAIRS]
        counts = pd.Series([r["source"] for r in rows]).value_counts()
        st.caption(f"{len(rows)} verified pairs · " + " · ".join(f"{n} {s}" for s, n in counts.items())
                   + (f" · showing the newest {SHOWN_PAIRS}" if len(rows) > SHOWN_PAIRS else ""))
        df = pd.DataFrame([{"question": r["question"], "SQL": r["sql"], "source": r["source"],
                            "verified": pd.to_datetime(r["when"], unit="s"),
                            "used": _fits(r["sql"], r["dialect"], schema)} for r in shown])
        st.dataframe(df, hide_index=True, column_config={
            "used": st.column_config.CheckboxColumn(help="Still valid against the schema; pairs that no longer "
                                                         "fit (a column dropped since) are skipped."),
            "verified": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})


# --- learning curve ---------------------------------------------------------------------------------------------

def _learning_curve(alt, path: Path) -> None:
    import pandas as pd
    st.header("How fast nl2sql learns this warehouse")
    how = ("Run `python benchmarks/learning_curve.py` in a source checkout (hours on 2 cores; "
           "`--configs retrieval+glossary,retrieval --points 0,10,25,50` for a quicker curve).")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        points = pd.DataFrame(results["points"])
        points = points[["config", "corrections", "accuracy"]].dropna()
    except FileNotFoundError:
        st.info(f"No learning-curve results at `{path}`. {how}")
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        st.warning(f"Cannot read the learning-curve results at `{path}` ({type(e).__name__}: {e}). {how}")
        return
    if points.empty:
        st.info(f"The learning-curve results at `{path}` hold no points yet. {how}")
        return
    setup = []
    if "test_questions" in results and "held_out_kinds" in results:
        setup.append(f"accuracy on {results['test_questions']} demo questions of {results['held_out_kinds']} "
                     "held-out kinds of question (never among the corrections)")
    if "pool" in results:
        setup.append(f"corrections logged from the other kinds ({results['pool']} available)")
    if "seed" in results:
        setup.append(f"seed {results['seed']}")
    st.caption("Execution accuracy on the demo warehouse against the corrections analysts logged: "
               + ("; ".join(setup) if setup else "kinds of question held out from the corrections")
               + ". retrieval: corrections retrieved into prompts; train: `nl2sql train --log`; both: the two; "
               "+glossary: the shipped glossary on.")
    points = points.sort_values(["config", "corrections"])
    st.altair_chart(alt.Chart(points, title="Accuracy on held-out kinds of question").mark_line(point=True).encode(
        x=alt.X("corrections:Q", title="corrections logged"),
        y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]), title="accuracy"),
        color=alt.Color("config:N", title="configuration"),
        tooltip=["config", "corrections", alt.Tooltip("accuracy:Q", format=".1%")]), width="stretch")


# --- model lifecycle: A/B comparison, promotion and rollback, the latest shadow run (nl2sql/lifecycle.py) ---------

def _lifecycle(settings) -> None:
    import pandas as pd

    from .. import lifecycle, registry
    st.header("Adapters in use")
    ab, share = settings.ab_adapter.strip(), settings.ab_share
    if ab and share > 0:
        try:
            lifecycle.adapter_dir(settings, ab)
            st.caption(f"A/B rollout: {ab} answers {share * 100:.0f} % of sessions (NL2SQL_AB_ADAPTER, NL2SQL_AB_SHARE).")
        except Nl2SqlError as e:
            st.warning(f"A/B rollout set for {ab}, but it cannot answer: {e} The promoted adapter answers everyone.")
    else:
        st.caption("No A/B rollout: set NL2SQL_AB_ADAPTER=<version> and NL2SQL_AB_SHARE=0.1 to give a candidate "
                   "a share of sessions.")
    since = st.selectbox("Questions of the last", ["1d", "7d", "30d", "365d"], index=1, key="lifecycle_since")
    rows = lifecycle.compare(session.query_log(settings).entries(), lifecycle.parse_since(since))

    def pct(r):
        return "–" if not r["n"] else f"{r['rate'] * 100:.1f} % [{r['low'] * 100:.0f}–{r['high'] * 100:.0f}] of {r['n']}"
    if rows:
        st.dataframe(pd.DataFrame([{
            "adapter": r["adapter"], "answered": r["answered"], "accuracy (verified)": pct(r["accuracy_verified"]),
            "thumbs up": pct(r["thumbs_up"]), "thumbs down": pct(r["thumbs_down"]), "repaired": pct(r["repaired"]),
            "errors": pct(r["errors"]), "median s": r["latency"]["median"], "p90 s": r["latency"]["p90"]}
            for r in rows]), hide_index=True, width="stretch")
        st.caption("Rates with 95 % Wilson intervals. Accuracy counts answers with feedback: a thumbs-up is right, "
                   "a thumbs-down or a correction to other SQL is wrong.")
    else:
        st.info(f"No answered questions in the last {since}.")

    versions = [a for a in registry.list_adapters(settings.data_dir)
                if Path(a["path"]).parent == registry.root(settings.data_dir)]
    promoted = next((a["version"] for a in versions if a["promoted"]), None)  # (a button's action ran before this)
    st.write(f"Promoted: **{promoted or 'the shipped adapter'}**")
    left, right = st.columns(2)
    if versions:
        left.selectbox("Adapter", [a["version"] for a in versions], key="lifecycle_version")
        left.button("Promote", key="lifecycle_promote", on_click=_registry_action, args=("promote", settings.data_dir))
    right.button("Roll back", key="lifecycle_rollback", disabled=promoted is None, on_click=_registry_action,
                 args=("rollback", settings.data_dir))
    kind, message = st.session_state.pop("lifecycle_message", (None, None))
    if kind:
        getattr(st, kind)(message)

    st.header("Latest shadow run")
    report = lifecycle.latest_shadow(settings)
    if report is None:
        st.info("No shadow run yet: `nl2sql adapters shadow <version> --since 7d` replays logged questions through "
                "a candidate.")
        return
    m = report["summary"]
    st.caption(f"{report['candidate']} vs {report['promoted']} on the questions of the last {report['since']} · "
               f"{m['questions']} logged questions ({m.get('distinct_questions', m['questions'])} different) "
               f"replayed in {m['seconds']} s")
    cols = st.columns(3)
    cols[0].metric("Same result as promoted", pct(m["matches_promoted"]))
    cols[1].metric(f"Accuracy, {report['candidate']}", pct(m["candidate_accuracy"]))
    cols[2].metric(f"Accuracy, {report['promoted']}", pct(m["promoted_accuracy"]))
    st.dataframe(pd.DataFrame([{
        "entry": r["entry_id"], "question": r["question"], "same result": r["matches_promoted"],
        "candidate right": r["candidate_correct"], "promoted right": r["promoted_correct"],
        "candidate SQL": r["candidate_sql"] or r["candidate_error"], "logged SQL": r["logged_sql"],
        "corrected SQL": r["corrected_sql"]} for r in report["rows"]]), hide_index=True, width="stretch")


def _registry_action(action: str, data_dir) -> None:
    """Promote the picked adapter or roll back (a button callback: it runs before the page, which then shows the
    new state)."""
    from .. import registry
    restart = "New processes answer with it: restart the app or `nl2sql serve`."
    try:
        if action == "promote":
            version = st.session_state["lifecycle_version"]
            registry.promote(data_dir, version)
            text = f"Promoted {version}. {restart}"
        else:
            now = registry.rollback(data_dir)
            text = f"Rolled back: {now or 'the shipped adapter'} is in use. {restart}"
        st.session_state["lifecycle_message"] = ("success", text)
    except Nl2SqlError as e:
        st.session_state["lifecycle_message"] = ("error", str(e))
