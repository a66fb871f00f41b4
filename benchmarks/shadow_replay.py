"""Shadow replay speed: how long `nl2sql adapters shadow V` takes for N logged questions (issue target: 500 in
at most 15 minutes on 2 cores).

A fresh data directory and query log hold N logged answers on the demo warehouse: the demo questions in order,
repeated until there are N (a team's log repeats its needs), each logged with the demo's SQL as the promoted
adapter's answer, every third one with a thumbs-up, every fifth one corrected (logged with the first demo SQL, the
right one as its correction). The candidate is a copy of the shipped adapter registered as "bench", so the replay
does all the work a real one does: the candidate's model answers every distinct question (batched across
`--workers` questions at a time; a question logged again shares its replay), the logged and the verified SQL are
executed again (each distinct SQL once), results are compared. `per_distinct_question_s` is the figure for a log
whose questions are all different: 500 of them would take 500 times that.

    NL2SQL_THREADS=2 python benchmarks/shadow_replay.py [--n 500] [--workers 8] [--out benchmarks/results/shadow]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_log(settings, n: int) -> None:
    from nl2sql.evaluate import demo_cases
    from nl2sql.querylog import QueryLog
    cases = demo_cases()
    log = QueryLog(settings.query_log_path)
    for i in range(n):
        case = cases[i % len(cases)]
        corrected = i % 5 == 4
        entry = log.record(question=case.question, db="demo", sql=cases[0].gold if corrected else case.gold,
                           executed=True, model="bench", adapter="shipped", session=f"s{i % 40}")
        if corrected:
            log.feedback(entry, corrected_sql=case.gold)
        elif i % 3 == 0:
            log.feedback(entry, rating=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default="", help="folder for summary.json and the report")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from nl2sql import lifecycle, registry
    from nl2sql.api import Pipeline
    from nl2sql.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="nl2sql-shadow-bench-"))
    settings = Settings.from_env().replace(data_dir=tmp, query_log=str(tmp / "log.sqlite"), escalate_below=0.0,
                                           ab_share=0.0)
    load = os.getloadavg()[0]
    make_log(settings, args.n)
    registry.register(tmp, registry.PACKAGE_ADAPTER, "bench")
    t0 = time.perf_counter()
    last = [t0]

    def progress(done, total, row):
        if done % 50 == 0 or done == total:
            now = time.perf_counter()
            print(f"{done}/{total}  {now - t0:.0f} s  ({(now - last[0]) / 50:.2f} s a question lately)", flush=True)
            last[0] = now
    report = lifecycle.shadow(Pipeline(settings), "bench", since="7d", progress=progress, workers=args.workers)
    wall = time.perf_counter() - t0
    s = report.summary()
    distinct = sum(r.replayed_with is None for r in report.rows)   # questions the candidate actually answered
    out = {"questions": len(report.rows), "distinct_questions": distinct,
           "per_distinct_question_s": round(report.seconds / max(1, distinct), 3),
           "workers": args.workers, "wall_s": round(wall, 1),
           "replay_s": round(report.seconds, 1), "per_question_s": round(wall / max(1, len(report.rows)), 3),
           "median_row_s": round(statistics.median(r.seconds for r in report.rows), 3) if report.rows else None,
           "threads": os.environ.get("NL2SQL_THREADS"), "load_before": load,
           "summary": s}
    print(json.dumps(out, indent=2, default=str))
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
