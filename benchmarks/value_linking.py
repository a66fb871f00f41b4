"""Value linking (nl2sql/values.py): index build time, link time per question, and recall of the gold SQL's
string literals among the hints.

    .venv/bin/python benchmarks/value_linking.py            # train proxy + dev_visible + 100k-value timing
    .venv/bin/python benchmarks/value_linking.py --tune     # threshold sweep on Spider TRAIN questions only

Spider ships no database files for its training questions, so the train figures use a proxy index per
training database: the string literals of all its training queries, each in the column it is compared with,
plus every other training database's literals as distractors (about 3,000 real-world strings). Recall there
is an upper bound (the value is always present), precision a lower bound on noise. Thresholds are tuned on
that proxy only; dev_visible (the five real SQLite databases) is measured, never tuned on.

A gold literal counts as recalled when a hint has exactly its spelling (for LIKE '%x%', a value containing x);
'verbatim' counts literals whose exact spelling already appears in the question (the no-linking baseline).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import sqlglot
from sqlglot import exp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPIDER = ROOT.parent / "shared" / "data" / "spider"

from nl2sql.values import MIN_SCORE, ValueIndex, link_values, normalize  # noqa: E402


def gold_literals(sql: str, tables: dict[str, list[str]] | None = None) -> list[tuple[str, str, str, bool]]:
    """(table, column, literal, is_like) for each string literal compared with a column in `sql`.

    Spider writes strings in double quotes, which MySQL's reading of the text keeps as strings.
    """
    try:
        tree = sqlglot.parse_one(sql, read="mysql")
    except sqlglot.errors.SqlglotError:
        return []
    aliases = {}
    for t in tree.find_all(exp.Table):
        aliases[(t.alias or t.name).lower()] = t.name
    in_query = [t.name for t in tree.find_all(exp.Table)]
    out = []
    for node in tree.find_all(exp.EQ, exp.NEQ, exp.Like, exp.ILike, exp.In):
        if isinstance(node, exp.In):
            col, vals = node.this, list(node.expressions)
        else:
            a, b = node.this, node.expression
            if isinstance(b, exp.Column) and isinstance(a, exp.Literal):
                a, b = b, a
            col, vals = a, [b]
        if not isinstance(col, exp.Column):
            continue
        table = aliases.get(col.table.lower(), col.table) if col.table else ""
        if not table and tables:
            table = next((t for t in in_query if col.name.lower() in tables.get(t.lower(), ())), "")
        is_like = isinstance(node, (exp.Like, exp.ILike))
        for v in vals:
            if isinstance(v, exp.Literal) and v.is_string:
                text = v.this.strip("%") if is_like else v.this
                if text.strip():
                    out.append((table or "?", col.name, text, is_like))
    return out


def recalled(literal: str, is_like: bool, hints, *, exact: bool = True) -> bool:
    """Whether a hint names the literal: exactly its spelling, or (exact=False) the same words up to case,
    accents, spacing and punctuation (Spider's flight_2 stores 'Aberdeen ' where the gold SQL says 'Aberdeen')."""
    n = normalize(literal)
    if is_like:
        return any(n and n in normalize(h.value) for h in hints)
    return any(h.value == literal if exact else normalize(h.value) == n for h in hints)


def spider_tables() -> dict[str, dict[str, list[str]]]:
    out = {}
    for entry in json.loads((SPIDER / "tables.json").read_text()):
        cols = defaultdict(list)
        for ti, c in entry["column_names_original"]:
            if ti >= 0:
                cols[entry["table_names_original"][ti].lower()].append(c.lower())
        out[entry["db_id"]] = dict(cols)
    return out


def evaluate(examples, index_for, *, min_score=MIN_SCORE, label=""):
    n_lit = rec = verb = verb_ci = n_hints = good_hints = n_eq = rec_eq = rec_norm = 0
    times = []
    for e in examples:
        index = index_for(e["db_id"])
        lits = e["_lits"]
        t0 = time.perf_counter()
        hints = link_values(e["question"], index, min_score=min_score)
        times.append(time.perf_counter() - t0)
        n_hints += len(hints)
        gold_norm = {normalize(l) for _, _, l, _ in lits}
        good_hints += sum(1 for h in hints if normalize(h.value) in gold_norm)
        for _, _, lit, is_like in lits:
            n_lit += 1
            ok = recalled(lit, is_like, hints)
            rec += ok
            rec_norm += recalled(lit, is_like, hints, exact=False)
            if not is_like:
                n_eq += 1
                rec_eq += ok
            verb += lit in e["question"]
            verb_ci += lit.strip().casefold() in e["question"].casefold()
    q = len(examples)
    times.sort()
    return {"label": label, "questions": q, "literals": n_lit,
            "recall": rec / max(1, n_lit), "recall_norm": rec_norm / max(1, n_lit), "recall_eq": rec_eq / max(1, n_eq), "literals_eq": n_eq, "verbatim": verb / max(1, n_lit), "verbatim_ci": verb_ci / max(1, n_lit),
            "hints_per_q": n_hints / max(1, q), "hint_precision": good_hints / max(1, n_hints),
            "link_ms_median": 1000 * statistics.median(times) if times else 0.0,
            "link_ms_p90": 1000 * times[int(0.9 * (len(times) - 1))] if times else 0.0}


def train_proxy(tables):
    """Training questions with literals, and a proxy index per training database (see the module docstring)."""
    train = json.loads((SPIDER / "train_spider.json").read_text())
    pooled: dict[str, dict[tuple[str, str], set]] = defaultdict(lambda: defaultdict(set))
    examples = []
    for e in train:
        lits = gold_literals(e["query"], tables.get(e["db_id"]))
        for t, c, lit, is_like in lits:
            if not is_like:
                pooled[e["db_id"]][(t, c)].add(lit)
        if lits:
            examples.append({**e, "_lits": lits})
    indexes = {}
    for db in pooled:
        values = {k: sorted(v) for k, v in pooled[db].items()}
        for other, cols in pooled.items():
            if other != db:
                for (t, c), v in cols.items():
                    values.setdefault((f"{other}.{t}", c), []).extend(sorted(v))
        indexes[db] = values
    cache = {}

    def index_for(db):
        if db not in cache:
            cache.clear()
            cache[db] = ValueIndex.from_values(db, indexes.get(db, {}), schema=schemas.get(db))
        return cache[db]
    from nl2sql.schema import from_spider
    schemas = {e["db_id"]: from_spider(e) for e in json.loads((SPIDER / "tables.json").read_text())}
    examples.sort(key=lambda e: e["db_id"])
    return examples, index_for


def dev_visible(tables, settings):
    from nl2sql.schema import introspect
    from nl2sql.warehouse import open_warehouse
    dev = json.loads((SPIDER / "dev_visible.json").read_text())
    builds, indexes = {}, {}
    for db in sorted({e["db_id"] for e in dev}):
        wh = open_warehouse(str(SPIDER / "database" / db / f"{db}.sqlite"), settings)
        schema = introspect(wh, sample_values=0)
        t0 = time.perf_counter()
        idx = ValueIndex.build(wh, schema, settings, use_cache=False)
        cold = time.perf_counter() - t0
        ValueIndex.build(wh, schema, settings)  # writes the cache
        from nl2sql.values import clear_memory_cache
        clear_memory_cache()
        t0 = time.perf_counter()
        ValueIndex.build(wh, schema, settings)
        disk = time.perf_counter() - t0
        builds[db] = (cold, disk, idx.value_count, len(idx.values), idx.partial)
        indexes[db] = idx
    examples = []
    for e in dev:
        lits = gold_literals(e["query"], tables.get(e["db_id"]))
        examples.append({**e, "_lits": lits})
    return examples, indexes, builds


def big_index_timing(questions, n_values=100_000, seed=0):
    """Link time on a 100k-value index whose words all come from the questions' own vocabulary: a worst case,
    where every question word touches hundreds of values."""
    import random
    rng = random.Random(seed)
    vocab = sorted({w for q in questions for w in normalize(q).split() if len(w) > 2})
    cols = defaultdict(list)
    for i in range(n_values):
        words = rng.sample(vocab, rng.randint(1, 3))
        cols[(f"t{i % 7}", f"c{i % 20}")].append(" ".join(w.capitalize() for w in words) + ("" if i % 3 else f" {i}"))
    t0 = time.perf_counter()
    idx = ValueIndex.from_values("synthetic", cols)
    prep = time.perf_counter() - t0
    times = []
    for q in questions:
        t0 = time.perf_counter()
        link_values(q, idx)
        times.append(time.perf_counter() - t0)
    times.sort()
    return idx.value_count, prep, 1000 * statistics.median(times), 1000 * times[int(0.9 * (len(times) - 1))]


def fmt(r):
    return (f"{r['label']:<28} questions {r['questions']:>5}  literals {r['literals']:>5}  recall {100*r['recall']:5.1f} % (same words {100*r['recall_norm']:5.1f} %) "
            f"(=/IN: {100*r['recall_eq']:5.1f} % of {r['literals_eq']})  "
            f"verbatim {100*r['verbatim']:5.1f} % (case-insens. {100*r['verbatim_ci']:5.1f} %)  "
            f"hints/q {r['hints_per_q']:.2f}  hint precision {100*r['hint_precision']:5.1f} %  "
            f"link ms median {r['link_ms_median']:.2f} p90 {r['link_ms_p90']:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", action="store_true", help="sweep min_score on the TRAIN proxy only")
    ap.add_argument("--skip-big", action="store_true", help="skip the 100k-value timing")
    args = ap.parse_args(argv)
    tables = spider_tables()
    examples, index_for = train_proxy(tables)
    if args.tune:
        for s in (70, 75, 80, 82, 85, 88, 90, 95):
            print(fmt(evaluate(examples, index_for, min_score=s, label=f"train proxy min_score={s}")), flush=True)
        return
    print(fmt(evaluate(examples, index_for, label="train proxy (tuned on)")), flush=True)

    import tempfile

    from nl2sql.config import Settings
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(cache_dir=Path(tmp) / "cache", data_dir=Path(tmp) / "data")
        dev, indexes, builds = dev_visible(tables, settings)
    for db, (cold, disk, nvals, ncols, partial) in builds.items():
        print(f"build {db:<15} {nvals:>6} values in {ncols:>3} columns: {1000*cold:7.1f} ms from the database, "
              f"{1000*disk:6.1f} ms from the disk cache{' (partial)' if partial else ''}")
    with_lits = [e for e in dev if e["_lits"]]
    print(fmt(evaluate(with_lits, indexes.__getitem__, label="dev_visible (measured)")))
    r = evaluate(dev, indexes.__getitem__, label="dev_visible all questions")
    print(fmt(r))
    no_lit = [e for e in dev if not e["_lits"]]
    r = evaluate(no_lit, indexes.__getitem__, label="dev_visible, no literal")
    print(f"dev_visible questions without a string literal: {r['questions']}, hints/q {r['hints_per_q']:.2f}")
    if not args.skip_big:
        n, prep, med, p90 = big_index_timing([e["question"] for e in dev])
        print(f"synthetic index of {n:,} values (question vocabulary): prepared in {prep:.2f} s; "
              f"link ms median {med:.1f} p90 {p90:.1f} over the {len(dev)} dev_visible questions")


if __name__ == "__main__":
    main()
