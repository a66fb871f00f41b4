"""Throughput and latency of `nl2sql serve` with 1, 4, 8 and 16 concurrent clients (real model, demo warehouse).

Starts a local `nl2sql serve` (its own query log in a temporary directory), answers the first 16 demo questions one
at a time (the reference answers and the one-question latency), then sends the first C questions at once for each
C and reports wall time, throughput, p50/p90 latency, errors, how many answers equal the one-at-a-time answers,
and the server's CPU seconds (on a shared machine, wall time also counts waiting for a core; with
NL2SQL_THREADS=1 the CPU seconds are the work itself). NL2SQL_SHARED_PREFIX=0 runs the server with a full KV
cache per batch row (the layout before shared-prefix attention), for a before/after on the same machine.

    NL2SQL_THREADS=2 .venv/bin/python benchmarks/serve_concurrency.py [--clients 1,4,8,16] [--port 8799] [--exclude 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: on a machine shared with other jobs, the server's CPU
    time per round says what the work cost where wall time also counts waiting for a core."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--exclude", default="", help="demo question numbers (1-based) left out before taking the first C")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    from nl2sql.client import Client
    from nl2sql.errors import Nl2SqlError
    from nl2sql.evaluate import demo_cases
    drop = {int(x) for x in args.exclude.split(",") if x.strip()}
    questions = [c.question if hasattr(c, "question") else c["question"] for c in demo_cases()]
    questions = [q for i, q in enumerate(questions, 1) if i not in drop][: max(levels)]

    tmp = tempfile.mkdtemp(prefix="nl2sql-serve-bench-")
    env = {**os.environ, "NL2SQL_QUERY_LOG": f"{tmp}/log.sqlite", "NL2SQL_API_TOKEN": "bench",
           "NL2SQL_SERVE_REQUESTS_PER_MINUTE": "100000", "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen([sys.executable, "-m", "nl2sql.cli", "serve", "--port", str(args.port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/serve.log", "w"))
    try:
        client = Client(url, token="bench", name="benchmark", timeout=900)
        t0 = time.perf_counter()
        while True:
            try:
                client.health()
                break
            except Nl2SqlError:
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    print(open(f"{tmp}/serve.log").read()[-2000:], file=sys.stderr)
                    return 1
                time.sleep(0.5)
        t = time.perf_counter()
        client.ask(questions[0])     # loads the model, the schema's caches and the grammar
        print(f"server up and warm in {time.perf_counter() - t0:.1f} s (first answer {time.perf_counter() - t:.1f} s)")

        def ask(q):
            t = time.perf_counter()
            try:
                a = client.ask(q)
                return a.sql or a.raw_sql, a.error, time.perf_counter() - t
            except Nl2SqlError as e:
                return None, f"{type(e).__name__}: {e}", time.perf_counter() - t
        reference, alone, alone_cpu = {}, [], []
        for q in questions:          # one at a time: the reference answers
            c0 = cpu_s(proc.pid)
            sql, err, s = ask(q)
            alone_cpu.append(cpu_s(proc.pid) - c0)
            reference[q] = sql
            alone.append(s)
        one, one_cpu = statistics.median(alone), statistics.median(alone_cpu)
        print(f"one at a time over {len(questions)} questions: median {one:.2f} s, p90 {pct(alone, 90):.2f} s, "
              f"longest {max(alone):.2f} s; server CPU median {one_cpu:.2f} s, longest {max(alone_cpu):.2f} s")
        for s, cs, q in sorted(zip(alone, alone_cpu, questions), reverse=True)[:3]:
            print(f"    {s:.2f} s ({cs:.2f} s CPU): {q!r} (question {questions.index(q) + 1} here)")
        print("\n| clients | wall s | questions/min | p50 s | p90 s | errors | same as alone | wall / one (median) "
              "| server CPU s | CPU / one (median) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in levels:
            qs = questions[:c]
            t, c0 = time.perf_counter(), cpu_s(proc.pid)
            with ThreadPoolExecutor(c) as pool:
                out = list(pool.map(ask, qs))
            wall, cpu = time.perf_counter() - t, cpu_s(proc.pid) - c0
            lat = [s for _, _, s in out]
            errors = sum(1 for sql, err, _ in out if sql is None)
            same = sum(1 for q, (sql, _, _) in zip(qs, out) if sql == reference[q])
            print(f"| {c} | {wall:.1f} | {60 * c / wall:.1f} | {pct(lat, 50):.2f} | {pct(lat, 90):.2f} | {errors} | "
                  f"{same}/{c} | {wall / one:.1f}x | {cpu:.1f} | {cpu / one_cpu:.1f}x |")
            for q, (sql, _, _) in zip(qs, out):
                if sql != reference[q]:
                    print(f"    differs: {q!r}: alone {reference[q]!r} / together {sql!r}")
        print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (NL2SQL_THREADS={os.environ.get('NL2SQL_THREADS', '')}, "
              f"NL2SQL_SHARED_PREFIX={os.environ.get('NL2SQL_SHARED_PREFIX', '1 (default)')})")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
