"""Confidence routing on dev_visible: accuracy and latency when 0, 10, 25 and 50 % of questions are escalated.

Each question is answered once with escalation forced (NL2SQL_ESCALATE_BELOW above any confidence), and the
answer before escalation is captured on the way (a wrapper around nl2sql.routing._escalate), so one pass gives,
per question: the first answer, its confidence, the escalated answer, and the seconds of each. The router is
deterministic (seeded candidates), so the answer at a threshold t is the first answer where its confidence is at
least t and the escalated one below it: each share's threshold is chosen from the confidences and the curve is
read off the trace. Escalation here is the base model with its adapter decoding NL2SQL_ESCALATE_CANDIDATES
candidates instead of NL2SQL_CANDIDATES (no second local checkpoint exists to serve as the larger backend).

With --remote the escalation goes straight (no more-candidates step) to an OpenAI-compatible server instead
(nl2sql/remote.py), decoding --remote-candidates candidates there: `--remote local` starts an `nl2sql serve` on
this machine with the same base and adapter (NL2SQL_THREADS=1), so against the in-process trace the difference is
what the HTTP hop costs and what the remote path lacks (the binder and repair branches stay in process). Each
question's HTTP overhead is the client's wall seconds minus the seconds the server says it decoded.

    NL2SQL_THREADS=1 python benchmarks/routing.py --spider ../shared/data/spider --sample 60
    NL2SQL_THREADS=1 python benchmarks/routing.py --sample 60 --remote local     # -> results/routing/remote/
    python benchmarks/routing.py --from benchmarks/results/routing/trace.jsonl   # the curve again, no model
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "routing"
SHARES = (0.0, 0.10, 0.25, 0.50)


def score(pipe, case, sql, error) -> bool:
    """Spider execution match, as nl2sql/evaluate.py scores it."""
    import sqlglot

    from nl2sql.errors import Nl2SqlError
    from nl2sql.evaluate import drop_distinct, has_order_by, results_match
    from nl2sql.executor import guard
    if not sql or error:
        return False
    wh = pipe.warehouse(case.db)
    try:
        gold = drop_distinct(case.gold, "sqlite")
        if wh.dialect != "sqlite":
            gold = sqlglot.transpile(gold, read="sqlite", write=wh.dialect)[0]
        _, pred_rows, _ = wh.run(guard(wh, drop_distinct(sql, wh.dialect), pipe.settings), row_limit=100000,
                                 timeout=pipe.settings.statement_timeout)
        _, gold_rows, _ = wh.run(gold, row_limit=100000, timeout=60)
        return results_match(gold_rows, pred_rows, has_order_by(case.gold, "sqlite"))
    except Nl2SqlError:
        return False


def trace(spider: Path, sample: int, out: Path, remote: str | None = None, remote_candidates: int = 12) -> list[dict]:
    from nl2sql import routing
    from nl2sql.api import Pipeline
    from nl2sql.config import Settings
    from nl2sql.evaluate import spider_cases
    overrides: dict = {"escalate_below": 2.0}  # above any confidence: every question escalates
    if remote:  # straight to the server, with more candidates there
        overrides.update(escalate_candidates=0, escalate_model=f"openai:{remote}/v1",
                         escalate_model_candidates=remote_candidates)
    settings = Settings.from_env(**overrides)
    pipe = Pipeline(settings)
    cases = spider_cases(spider)
    if sample and sample < len(cases):  # evenly spaced, as `nl2sql eval --sample` picks them
        cases = [cases[i * len(cases) // sample] for i in range(sample)]
    first: dict = {}
    original = routing._escalate

    def capture(p, q, schema, best, n, how):  # the answer as it stood before escalating
        first.setdefault("state", (routing._snapshot(q.answer), routing.features(q.answer, best.generation)))
        return original(p, q, schema, best, n, how)
    routing._escalate = capture
    pipe.generator  # load the model before the clock starts (cold start is measured by benchmarks/cold_start.py)
    if remote:  # and the server's (it loads its model on the first request)
        routing.larger_pipeline(pipe).generator.candidates("-- SQL:\n", None, 4)
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for i, case in enumerate(cases):
            first.clear()
            wire = _wire(pipe) if remote else None
            t0 = time.perf_counter()
            a = pipe.ask(case.question, case.db)
            total = time.perf_counter() - t0
            before, feats = first["state"]
            esc_s = a.timings.get("escalate", 0.0)
            row = {"db_id": case.db_id, "question": case.question,
                   "confidence": before["confidence"], "features": feats,
                   "first_sql": before["sql"], "first_error": before["error"],
                   "first_correct": score(pipe, case, before["sql"], before["error"]),
                   "first_seconds": round(total - esc_s, 3),
                   "escalated": a.escalated, "escalated_confidence": a.confidence, "escalated_sql": a.sql,
                   "escalated_correct": score(pipe, case, a.sql, a.error), "escalated_seconds": round(total, 3)}
            if remote:
                after = _wire(pipe)
                row.update(answered_by=a.answered_by, route_note=a.route_note,
                           http_wall_seconds=round(after[0] - wire[0], 4), server_seconds=round(after[1] - wire[1], 4))
            rows.append(row)
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            print(f"{i + 1}/{len(cases)} conf {row['confidence']:.3f} first {int(row['first_correct'])} "
                  f"escalated {int(row['escalated_correct'])} {row['first_seconds']:.1f}+{esc_s:.1f} s", flush=True)
    routing._escalate = original
    return rows


def _wire(pipe) -> tuple[float, float]:
    """Seconds the remote backend's requests took here, and the seconds its server says it decoded, so far."""
    from nl2sql import routing
    gen = routing.larger_pipeline(pipe).generator
    return gen.wall_s, gen.server_s


def start_local_server(port: int, token: str, log_path: Path):
    """`nl2sql serve` on this machine (same settings as this process, one thread), for --remote local."""
    env = {**os.environ, "NL2SQL_API_TOKEN": token, "NL2SQL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "nl2sql.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"nl2sql serve exited; see {log.name}")
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("nl2sql serve did not start in 2 minutes")


def http_overhead(rows: list[dict]) -> dict:
    """Per escalated question: the client's seconds on the wire minus the server's decoding seconds."""
    calls = [r for r in rows if r.get("http_wall_seconds")]
    if not calls:
        return {}
    over = sorted(r["http_wall_seconds"] - r["server_seconds"] for r in calls)
    return {"questions": len(calls), "mean_wall_s": round(statistics.mean(r["http_wall_seconds"] for r in calls), 3),
            "mean_server_decode_s": round(statistics.mean(r["server_seconds"] for r in calls), 3),
            "mean_overhead_s": round(statistics.mean(over), 4), "median_overhead_s": round(statistics.median(over), 4),
            "p90_overhead_s": round(over[int(0.9 * (len(over) - 1))], 4),
            "failed": sum(1 for r in rows if r.get("route_note"))}


def compare(rows: list[dict], other: list[dict]) -> dict:
    """The remote trace against the in-process one (same questions, same first answers expected)."""
    by_q = {(r["db_id"], r["question"]): r for r in other}
    pairs = [(r, by_q[(r["db_id"], r["question"])]) for r in rows if (r["db_id"], r["question"]) in by_q]
    if not pairs:
        return {}
    n = len(pairs)
    return {"questions": n, "same_first_sql": sum(a["first_sql"] == b["first_sql"] for a, b in pairs),
            "same_escalated_sql": sum(a["escalated_sql"] == b["escalated_sql"] for a, b in pairs),
            "escalated_correct_remote": sum(a["escalated_correct"] for a, _ in pairs),
            "escalated_correct_in_process": sum(b["escalated_correct"] for _, b in pairs)}


def auroc(scores, labels) -> float | None:
    """Probability that a correct answer scores above a wrong one (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 3)


def curve(rows: list[dict]) -> dict:
    confs = sorted(r["confidence"] for r in rows)
    n = len(rows)
    points = []
    for share in SHARES:
        k = round(share * n)
        # escalate the k least confident: a threshold between the k-th and (k+1)-th confidence
        threshold = 0.0 if k == 0 else (confs[k - 1] + confs[k]) / 2 if k < n else 1.01
        esc = [r["confidence"] < threshold for r in rows]
        correct = [r["escalated_correct"] if e else r["first_correct"] for r, e in zip(rows, esc)]
        secs = sorted(r["escalated_seconds"] if e else r["first_seconds"] for r, e in zip(rows, esc))
        points.append({"target_share": share, "threshold": round(threshold, 4),
                       "escalated_share": round(sum(esc) / n, 4), "accuracy": round(sum(correct) / n, 4),
                       "mean_seconds": round(sum(secs) / n, 3), "median_seconds": round(statistics.median(secs), 3),
                       "p90_seconds": round(secs[int(0.9 * (n - 1))], 3)})
    labels = [r["first_correct"] for r in rows]
    separation = {"confidence": auroc([r["confidence"] for r in rows], labels)}
    for k in ("agreement", "token_prob", "margins"):
        separation[k] = auroc([r["features"][k] for r in rows], labels)
    return {"n": n, "points": points, "all_escalated_accuracy": round(sum(r["escalated_correct"] for r in rows) / n, 4),
            "auroc_first_answer_correct": separation}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spider", default=str(ROOT.parent / "shared" / "data" / "spider"))
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--from", dest="trace_file", help="read a saved trace instead of running the model")
    ap.add_argument("--out", help="results folder (default: results/routing, or results/routing/remote)")
    ap.add_argument("--remote", help="escalate to an OpenAI-compatible server at this URL (token: "
                                     "NL2SQL_ESCALATE_API_KEY), or 'local' to start nl2sql serve here")
    ap.add_argument("--remote-candidates", type=int, default=12, help="candidates the server decodes per question")
    ap.add_argument("--compare", default=str(OUT / "trace.jsonl"), help="--remote: the in-process trace to compare")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out or (OUT / "remote" if args.remote else OUT))
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.remote == "local":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ["NL2SQL_ESCALATE_API_KEY"] = token = secrets.token_hex(16)
        server = start_local_server(port, token, out / "serve.log")
        args.remote = f"http://127.0.0.1:{port}"
    try:
        if args.trace_file:
            rows = [json.loads(line) for line in Path(args.trace_file).read_text().splitlines() if line.strip()]
        else:
            rows = trace(Path(args.spider), args.sample, out / "trace.jsonl", args.remote, args.remote_candidates)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    result = curve(rows)
    from nl2sql.config import Settings
    s = Settings.from_env()
    result.update(candidates=s.candidates, escalate_candidates=s.escalate_candidates, sample=len(rows),
                  escalation="the same base model and adapter with more candidates")
    if args.remote or any("http_wall_seconds" in r for r in rows):
        result.update(escalate_candidates=0, escalate_model_candidates=args.remote_candidates,
                      escalation="nl2sql serve (same base and adapter) over HTTP, more candidates there",
                      http=http_overhead(rows))
        if Path(args.compare).exists():
            other = [json.loads(line) for line in Path(args.compare).read_text().splitlines() if line.strip()]
            result["versus_in_process"] = compare(rows, other)
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'share':>6} {'threshold':>9} {'accuracy':>9} {'mean s':>7} {'median s':>9} {'p90 s':>6}")
    for p in result["points"]:
        print(f"{p['escalated_share'] * 100:5.1f}% {p['threshold']:9.3f} {p['accuracy'] * 100:8.1f}% "
              f"{p['mean_seconds']:7.2f} {p['median_seconds']:9.2f} {p['p90_seconds']:6.2f}")
    print(f"every question escalated: {result['all_escalated_accuracy'] * 100:.1f} %; AUROC of confidence parts "
          f"for 'first answer correct': {result['auroc_first_answer_correct']}")
    if result.get("http"):
        print(f"HTTP: {result['http']}\nversus in process: {result.get('versus_in_process')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
