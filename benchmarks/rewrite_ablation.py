"""Each SQL rewrite of nl2sql/rewrite.py on stored predictions, without the model: what it fixes and breaks.

Reads an `nl2sql eval --out` predictions file, applies the rewrites (each alone, then all) to every predicted
query, runs it on the database and scores it like the eval does. A quick check of a rewrite before a full run;
the full run (`nl2sql eval`) is the figure to report, since there the rewrite also changes which candidate wins.

    python benchmarks/rewrite_ablation.py benchmarks/results/demo/v5_literals/predictions.jsonl [--show]
"""
from __future__ import annotations

import argparse
import json
import sys

from nl2sql.api import Pipeline
from nl2sql.evaluate import drop_distinct, has_order_by, results_match
from nl2sql.executor import guard
from nl2sql.measures import term_columns
from nl2sql.rewrite import REWRITES, rewrite
from nl2sql.values import link_values


def score(pipe, wh, sql, gold, cache):
    key = sql
    if key not in cache:
        try:
            _, pred_rows, _ = wh.run(guard(wh, drop_distinct(sql, wh.dialect), pipe.settings), row_limit=100000,
                                     timeout=30)
            cache[key] = pred_rows
        except Exception:
            cache[key] = None
    if gold not in cache:
        _, cache[gold], _ = wh.run(drop_distinct(gold, wh.dialect), row_limit=100000, timeout=60)
    return cache[key] is not None and results_match(cache[gold], cache[key], has_order_by(gold, wh.dialect))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions")
    ap.add_argument("--show", action="store_true", help="print every query a rewrite changed")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(args.predictions)]
    pipe = Pipeline()
    wh = pipe.warehouse(None)
    schema = pipe.schema(None)
    glossary = pipe.glossary(None, schema)
    cache: dict = {}
    variants = [(name, (name,)) for name in REWRITES] + [("all", REWRITES)]
    totals = {name: [0, 0, 0] for name, _ in variants}   # fixed, broken, changed
    base = 0
    for r in rows:
        if not r.get("pred"):
            continue
        was = score(pipe, wh, r["pred"], r["gold"], cache)
        base += was
        hints = tuple(h.table for h in link_values(r["question"], pipe.values(None, schema)))
        entries = glossary.relevant(r["question"])
        named = set(hints) | {m.table for m in glossary.mentions(entries)}
        for name, only in variants:
            new = rewrite(r["pred"], wh.dialect, schema, r["question"], named_tables=named,
                          term_columns=term_columns(entries), only=only)
            if new == r["pred"]:
                continue
            now = score(pipe, wh, new, r["gold"], cache)
            t = totals[name]
            t[0] += now and not was
            t[1] += was and not now
            t[2] += 1
            if args.show and name != "all":
                print(f"[{name}] {'FIXED' if now and not was else 'BROKE' if was and not now else 'same'}: "
                      f"{r['question']}\n   {r['pred']}\n-> {new}")
    n = len(rows)
    print(f"{n} predictions, {base} right before ({base / n:.1%})")
    for name, (fixed, broken, changed) in totals.items():
        print(f"{name:6s} changed {changed:3d}  fixed {fixed:3d}  broke {broken:3d}  -> {(base + fixed - broken) / n:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
