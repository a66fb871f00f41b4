"""Figures for the data team: benchmark accuracy from the saved eval results, latency percentiles and feedback
rates over time from the query log. Plain pandas in, plain pandas out; the app draws them.
"""
from __future__ import annotations

import json
from pathlib import Path

PERCENTILES = (50, 90, 99)


def load_benchmark(results_dir: Path) -> dict | None:
    """The summary and per-question outcomes of one `nl2sql eval` run (summary.json + predictions.jsonl).

    Outcomes: correct, wrong result, rejected (validation refused the SQL), failed (the database refused it).
    """
    import pandas as pd
    results_dir = Path(results_dir)
    summary_file = results_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    preds = results_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in preds.read_text().splitlines() if line.strip()] if preds.is_file() else []
    df = pd.DataFrame(rows, columns=["question", "pred", "error", "correct", "seconds"]) if rows else pd.DataFrame(
        columns=["question", "pred", "error", "correct", "seconds"])
    df["outcome"] = [_outcome(r) for r in rows]
    return {"summary": summary, "predictions": df}


def _outcome(r: dict) -> str:
    if r.get("correct"):
        return "correct"
    if r.get("error") and not r.get("pred"):
        return "rejected"
    if r.get("error"):
        return "failed"
    return "wrong result"


def log_frame(entries: list[dict]):
    """Query-log entries as a DataFrame with a `day` column (UTC date of the question)."""
    import pandas as pd
    df = pd.DataFrame(entries)
    if df.empty:
        return df
    df["day"] = pd.to_datetime(df["created"], unit="s").dt.normalize()
    return df


def latency_by_day(df):
    """Long frame (day, percentile, seconds): p50/p90/p99 of answer latency per day."""
    import pandas as pd
    cols = ["day", "percentile", "seconds"]
    if df.empty or df["latency"].dropna().empty:
        return pd.DataFrame(columns=cols)
    d = df.dropna(subset=["latency"])
    out = [(day, f"p{p}", float(g["latency"].quantile(p / 100))) for day, g in d.groupby("day") for p in PERCENTILES]
    return pd.DataFrame(out, columns=cols)


def feedback_by_day(df):
    """Long frame (day, measure, rate, answers): per day, the share of answers rated up, rated down, corrected,
    and that executed."""
    import pandas as pd
    cols = ["day", "measure", "rate", "answers"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for day, g in df.groupby("day"):
        n = len(g)
        out += [(day, "thumbs up", float((g["rating"] == 1).sum() / n), n),
                (day, "thumbs down", float((g["rating"] == -1).sum() / n), n),
                (day, "corrected", float(g["corrected_sql"].notna().sum() / n), n),
                (day, "executed", float((g["executed"] == 1).sum() / n), n)]
    return pd.DataFrame(out, columns=cols)


def totals(df) -> dict:
    """Headline numbers over the whole log."""
    if df.empty:
        return {"answers": 0, "rated": 0, "thumbs_up_share": None, "corrected": 0, "p50": None, "p90": None}
    rated = df["rating"].isin([1, -1])
    lat = df["latency"].dropna()
    return {"answers": int(len(df)), "rated": int(rated.sum()),
            "thumbs_up_share": float((df["rating"] == 1).sum() / rated.sum()) if rated.any() else None,
            "corrected": int(df["corrected_sql"].notna().sum()),
            "p50": float(lat.quantile(0.5)) if len(lat) else None, "p90": float(lat.quantile(0.9)) if len(lat) else None}
