"""Execution accuracy, scored the way Spider's test-suite evaluation does (default flags):
gold and predicted SQL run on the database; DISTINCT is dropped from both; column order is ignored; row
order counts only when the gold query has ORDER BY; an error or timeout scores 0.
"""
from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlglot
from sqlglot import exp


@dataclass
class Case:
    question: str
    gold: str
    db: str        # what ask() takes: a path or URL (None = demo)
    db_id: str     # name for per-database figures


def drop_distinct(sql: str, dialect: str) -> str:
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return sql
    for sel in tree.find_all(exp.Select):
        sel.set("distinct", None)
    for fn in tree.find_all(exp.Distinct):  # COUNT(DISTINCT x) -> COUNT(x)
        if fn.expressions and isinstance(fn.parent, exp.AggFunc):
            fn.replace(fn.expressions[0])
    return tree.sql(dialect=dialect)


def has_order_by(sql: str, dialect: str) -> bool:
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return "order by" in sql.lower()
    return tree.args.get("order") is not None


def _norm(v):
    if isinstance(v, float):
        return round(v, 6)
    if hasattr(v, "is_finite"):  # Decimal
        return round(float(v), 6)
    return v


def results_match(gold_rows, pred_rows, ordered: bool) -> bool:
    """Spider's rule: equal as bags of rows (as lists when ordered), up to a permutation of the columns."""
    if len(gold_rows) != len(pred_rows):
        return False
    if not gold_rows:
        return True
    g = [tuple(_norm(v) for v in r) for r in gold_rows]
    p = [tuple(_norm(v) for v in r) for r in pred_rows]
    width = len(g[0])
    if width != len(p[0]):
        return False
    g_cols = [Counter(r[i] for r in g) for i in range(width)]
    p_cols = [Counter(r[i] for r in p) for i in range(width)]
    candidates = [[j for j in range(width) if p_cols[j] == g_cols[i]] for i in range(width)]
    if any(not c for c in candidates):
        return False
    for perm in itertools.islice(itertools.product(*candidates), 2000):
        if len(set(perm)) != width:
            continue
        q = [tuple(r[j] for j in perm) for r in p]
        if (q == g) if ordered else (Counter(q) == Counter(g)):
            return True
    return False


def run_eval(cases: list[Case], pipeline, out_jsonl: Path | None = None, progress: bool = True,
             gold_dialect: str = "sqlite") -> dict:
    """Score every case; write one JSON line per prediction; return the summary figures."""
    from tqdm import tqdm

    from .errors import Nl2SqlError
    from .executor import guard
    rows_out = []
    fh = open(out_jsonl, "w") if out_jsonl else None
    try:
        for case in tqdm(cases, desc="eval", disable=not progress, dynamic_ncols=True):
            t0 = time.perf_counter()
            rec = {"db_id": case.db_id, "question": case.question, "gold": case.gold}
            try:
                # executed as a user's question is (so repair sees database errors too), then re-run uncapped to score
                answer = pipeline.ask(case.question, case.db)
                rec.update(pred=answer.sql, raw=answer.raw_sql, error=answer.error, tokens=answer.tokens,
                           attempts=answer.attempts, agreement=answer.agreement, candidates=answer.candidates)
                wh = pipeline.warehouse(case.db)
                correct = False
                if answer.sql and not answer.error:
                    pred_sql = drop_distinct(answer.sql, wh.dialect)
                    gold_sql = drop_distinct(case.gold, gold_dialect)
                    if gold_dialect != wh.dialect:
                        gold_sql = sqlglot.transpile(gold_sql, read=gold_dialect, write=wh.dialect)[0]
                    try:
                        _, pred_rows, _ = wh.run(guard(wh, pred_sql, pipeline.settings),
                                                 row_limit=100000, timeout=pipeline.settings.statement_timeout)
                        _, gold_rows, _ = wh.run(gold_sql, row_limit=100000, timeout=60)
                        correct = results_match(gold_rows, pred_rows, has_order_by(case.gold, gold_dialect))
                    except Nl2SqlError as e:
                        rec["error"] = str(e)
                rec["correct"] = correct
            except Nl2SqlError as e:
                rec.update(pred=None, error=str(e), correct=False)
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            rows_out.append(rec)
            if fh:
                fh.write(json.dumps(rec, default=str) + "\n")
                fh.flush()
    finally:
        if fh:
            fh.close()
    return summarize(rows_out)


def summarize(rows: list[dict]) -> dict:
    secs = sorted(r["seconds"] for r in rows)
    per_db = {}
    for r in rows:
        d = per_db.setdefault(r["db_id"], [0, 0])
        d[0] += r["correct"]
        d[1] += 1
    invalid = sum(1 for r in rows if r.get("pred") is None)
    return {
        "n": len(rows),
        "execution_accuracy": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 4),
        "invalid_sql_rate": round(invalid / max(1, len(rows)), 4),
        "median_seconds": round(statistics.median(secs), 3) if secs else None,
        "p90_seconds": round(secs[int(0.9 * (len(secs) - 1))], 3) if secs else None,
        "per_database": {k: {"accuracy": round(v[0] / v[1], 4), "n": v[1]} for k, v in sorted(per_db.items())},
    }


def spider_cases(spider_dir: Path, questions: Path | None = None) -> list[Case]:
    spider_dir = Path(spider_dir)
    qfile = Path(questions) if questions else spider_dir / "dev_visible.json"
    data = json.loads(qfile.read_text())
    cases = []
    for ex in data:
        db = spider_dir / "database" / ex["db_id"] / f"{ex['db_id']}.sqlite"
        cases.append(Case(ex["question"], ex["query"], str(db), ex["db_id"]))
    return cases


def demo_cases(limit: int = 0) -> list[Case]:
    from .schemas.demo import PAIRS
    rows = [json.loads(l) for l in PAIRS.read_text().splitlines() if l.strip()]
    rows = rows[:limit] if limit else rows
    return [Case(r["question"], r["sql"], None, "demo") for r in rows]
