"""The data team's page: accuracy on the demo benchmark, latency percentiles and feedback rates over time."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .. import monitoring
from ..errors import Nl2SqlError
from . import session

# Saved `nl2sql eval` results in a source checkout (they are not part of the installed package).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def render() -> None:
    import altair as alt
    st.title("Model quality and usage")
    try:
        settings = session.pipeline().settings
    except Nl2SqlError as e:
        st.error(str(e))
        return
    _benchmark(alt, RESULTS_DIR / "demo")
    _usage(alt, settings)


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
