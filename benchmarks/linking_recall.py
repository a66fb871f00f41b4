"""Schema linking measured on its own: does the pruned schema keep the tables and columns the gold SQL uses,
and how much smaller is the prompt?

    python benchmarks/linking_recall.py                      # train by database, train union, dev_visible
    python benchmarks/linking_recall.py --sweep              # recall / prompt size for several cut-offs
    python benchmarks/linking_recall.py --only union --sample 1000

Modes:
- `bydb`: every question scored against its own database's schema (Spider tables.json; dev_visible also
  introspected from its SQLite file, sample values included). Reported twice: as the pipeline would prune
  (small schemas pass through whole) and with pruning forced on every schema.
- `union`: the 140 Spider *train* databases shuffled (seed 0) into 4 warehouses of 35 databases each (tables
  renamed `<db>__<table>`, 160-205 tables per warehouse), every train question asked of its warehouse: the
  analogue, on data we may tune on, of benchmarks/large_schema.py (a few hundred tables, many look-alikes).

Gold tables and columns come from the gold SQL (sqlglot). "table recall" is the share of gold tables kept;
"all tables" the share of questions with every gold table kept; columns likewise. Prompt size is the
characters of nl2sql.prompt.render_schema(pruned) over render_schema(full) (tokens ≈ chars / 4; `--tokens`
counts with the model's tokenizer when it is already in the cache). Tune only on train: dev_visible is
measured, never tuned on.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import sqlglot
from sqlglot import exp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nl2sql import linking  # noqa: E402
from nl2sql.prompt import render_schema  # noqa: E402
from nl2sql.schema import ForeignKey, Schema, Table, from_spider  # noqa: E402

SPIDER = ROOT.parent / "shared" / "data" / "spider"


def gold_refs(sql: str, schema: Schema, dialect: str = "sqlite") -> tuple[set[str], set[tuple[str, str]]]:
    """Lower-case gold tables and (table, column) pairs of one query; unqualified columns are given to the
    first gold table (in schema order) that has them."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return set(), set()
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    alias = {}
    tables = set()
    for t in tree.find_all(exp.Table):
        name = t.name.lower()
        if name in ctes or schema.table(name) is None:
            continue
        tables.add(name)
        alias[t.alias_or_name.lower()] = name
        alias[name] = name
    cols = set()
    ordered = [t for t in schema.tables if t.name.lower() in tables]
    for c in tree.find_all(exp.Column):
        col = c.name.lower()
        if not col or col == "*":
            continue
        if c.table:
            owner = alias.get(c.table.lower())
            if owner and schema.table(owner).column(col):
                cols.add((owner, col))
        else:
            owner = next((t.name.lower() for t in ordered if t.column(col)), None)
            if owner:
                cols.add((owner, col))
    return tables, cols


def score(index, questions, *, max_tables, passthrough=True, full_chars=None, tokenizer=None):
    """questions: [(question, gold_tables, gold_cols)] all on index.schema. Returns the summed counts."""
    full_chars = full_chars or len(render_schema(index.schema))
    full_tokens = len(tokenizer(render_schema(index.schema))["input_ids"]) if tokenizer else None
    out = dict(n=0, tables=0, tables_hit=0, all_tables=0, cols=0, cols_hit=0, all_cols=0, frac=[], kept=[],
               tok_frac=[], secs=[])
    cache = {}
    for q, gold_t, gold_c in questions:
        t0 = time.perf_counter()
        linked = index.prune(q, max_tables=max_tables, passthrough=passthrough)
        out["secs"].append(time.perf_counter() - t0)
        kept = {t.name.lower(): {c.name.lower() for c in t.columns} for t in linked.schema.tables}
        hit_t = sum(1 for t in gold_t if t in kept)
        hit_c = sum(1 for t, c in gold_c if c in kept.get(t, ()))
        out["n"] += 1
        out["tables"] += len(gold_t)
        out["tables_hit"] += hit_t
        out["all_tables"] += hit_t == len(gold_t)
        out["cols"] += len(gold_c)
        out["cols_hit"] += hit_c
        out["all_cols"] += hit_c == len(gold_c)
        key = tuple(sorted(kept))
        if key not in cache:
            text = render_schema(linked.schema)
            cache[key] = (len(text) / full_chars,
                          len(tokenizer(text)["input_ids"]) / full_tokens if tokenizer else None)
        out["frac"].append(cache[key][0])
        if tokenizer:
            out["tok_frac"].append(cache[key][1])
        out["kept"].append(len(kept))
    return out


def merge(parts):
    total = dict(n=0, tables=0, tables_hit=0, all_tables=0, cols=0, cols_hit=0, all_cols=0, frac=[], kept=[],
                 tok_frac=[], secs=[])
    for p in parts:
        for k, v in p.items():
            total[k] = total[k] + v
    return total


def line(label, s):
    pct = lambda a, b: f"{100 * a / max(1, b):5.1f} %"  # noqa: E731
    tok = f"  tokens {statistics.mean(s['tok_frac']):.3f}" if s["tok_frac"] else ""
    return (f"{label:<34} n={s['n']:<5} table recall {pct(s['tables_hit'], s['tables'])}  all tables "
            f"{pct(s['all_tables'], s['n'])}  column recall {pct(s['cols_hit'], s['cols'])}  all columns "
            f"{pct(s['all_cols'], s['n'])}  prompt {statistics.mean(s['frac']):.3f} of full "
            f"(max {max(s['frac']):.3f}){tok}  tables kept {statistics.mean(s['kept']):.1f}  "
            f"{1000 * statistics.median(s['secs']):.1f} ms/question")


def sample(rows, n):
    if not n or n >= len(rows):
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def spider_schemas(spider: Path) -> dict[str, Schema]:
    return {e["db_id"]: from_spider(e) for e in json.loads((spider / "tables.json").read_text())}


def by_database(schemas, examples, *, max_tables, passthrough, tokenizer=None):
    by_db = {}
    for ex in examples:
        by_db.setdefault(ex["db_id"], []).append(ex)
    parts = {}
    for db, rows in sorted(by_db.items()):
        schema = schemas[db]
        index = linking.SchemaIndex.build(schema)
        qs = []
        for ex in rows:
            t, c = gold_refs(ex["query"], schema)
            qs.append((ex["question"], t, c))
        parts[db] = score(index, qs, max_tables=max_tables, passthrough=passthrough, tokenizer=tokenizer)
    return parts


def union_schema(schemas: dict[str, Schema], dbs, name="union") -> Schema:
    """Every table of `dbs` in one schema, renamed <db>__<table>, foreign keys renamed with them."""
    tables = []
    for db in dbs:
        for t in schemas[db].tables:
            tables.append(Table(f"{db}__{t.name}", t.columns, t.comment,
                                tuple(ForeignKey(fk.column, f"{db}__{fk.ref_table}", fk.ref_column)
                                      for fk in t.foreign_keys)))
    return Schema(name, "duckdb", tuple(tables))


def union_questions(schemas, examples):
    qs = []
    for ex in examples:
        t, c = gold_refs(ex["query"], schemas[ex["db_id"]])
        p = ex["db_id"].lower() + "__"
        qs.append((ex["question"], {p + x for x in t}, {(p + a, b) for a, b in c}))
    return qs


def load_tokenizer():
    """The model's tokenizer from the cache (the converted checkpoint, else the bundled GGUF: about a minute to
    read); None when neither is there (prompt sizes are then in characters; tokens ≈ characters / 4)."""
    from nl2sql.config import Settings
    from transformers import AutoTokenizer
    cache = Path(Settings.from_env().cache_dir)
    for d in sorted((cache / "models").glob("*")) if (cache / "models").exists() else ():
        if (d / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(str(d))
    for g in sorted((cache / "gguf").glob("*.gguf")) if (cache / "gguf").exists() else ():
        return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    print("(no cached tokenizer: prompt sizes in characters only; tokens ≈ characters / 4)")
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spider", type=Path, default=SPIDER)
    ap.add_argument("--only", choices=["bydb", "union", "dev"], action="append")
    ap.add_argument("--max-tables", type=int, default=linking.DEFAULT_MAX_TABLES)
    ap.add_argument("--sweep", action="store_true", help="several cut-offs (tuning: train only)")
    ap.add_argument("--sample", type=int, default=0, help="evenly spaced train questions (0 = all 7,000)")
    ap.add_argument("--tokens", action="store_true", help="also count prompt tokens with the model's tokenizer")
    ap.add_argument("--per-db", action="store_true", help="print every database's line")
    args = ap.parse_args(argv)
    only = set(args.only or ["bydb", "union", "dev"])
    tokenizer = load_tokenizer() if args.tokens else None
    schemas = spider_schemas(args.spider)
    train = sample(json.loads((args.spider / "train_spider.json").read_text()), args.sample)
    ks = [3, 4, 6, 8, 10, 15, 20, 30] if args.sweep else [args.max_tables]
    big = sorted(db for db, s in schemas.items() if len(s.tables) > linking.PASSTHROUGH_TABLES
                 or s.column_count > linking.PASSTHROUGH_COLUMNS)

    if "bydb" in only:
        print(f"== Spider train by database ({len(train)} questions; {len(big)} of {len(schemas)} schemas are over "
              f"{linking.PASSTHROUGH_TABLES} tables or {linking.PASSTHROUGH_COLUMNS} columns)")
        for k in ks:
            parts = by_database(schemas, train, max_tables=k, passthrough=True, tokenizer=tokenizer)
            print(line(f"as the pipeline prunes, k={k}", merge(parts.values())))
            big_parts = [p for db, p in parts.items() if db in big]
            if big_parts:
                print(line(f"  the large schemas only, k={k}", merge(big_parts)))
            forced = by_database(schemas, train, max_tables=k, passthrough=False, tokenizer=tokenizer)
            print(line(f"pruning forced on all, k={k}", merge(forced.values())))
            if args.per_db:
                for db in big:
                    if db in parts:
                        print(line(f"    {db}", parts[db]))

    if "union" in only:
        train_dbs = sorted({ex["db_id"] for ex in json.loads((args.spider / "train_spider.json").read_text())})
        random.Random(0).shuffle(train_dbs)
        groups = [sorted(train_dbs[i::4]) for i in range(4)]
        print(f"== Spider train as 4 warehouses of {len(groups[0])} databases each (tables renamed <db>__<table>); "
              f"each train question asked of its warehouse")
        parts = {k: [] for k in ks}
        for g in groups:
            t0 = time.perf_counter()
            schema = union_schema(schemas, g, f"train-union-{g[0]}")
            linking.clear_memory_cache()
            index = linking.SchemaIndex.build(schema)
            built = time.perf_counter() - t0
            print(f"   warehouse {len(schema.tables)} tables, {schema.column_count} columns, "
                  f"{len(render_schema(schema)):,} prompt characters; index built in {built:.2f} s")
            members = set(g)
            qs = union_questions(schemas, [ex for ex in train if ex["db_id"] in members])
            full = len(render_schema(schema))
            for k in ks:
                parts[k].append(score(index, qs, max_tables=k, full_chars=full, tokenizer=tokenizer))
        for k in ks:
            print(line(f"train warehouses, k={k}", merge(parts[k])))

    if "dev" in only:
        from nl2sql.config import Settings
        from nl2sql.schema import introspect
        from nl2sql.warehouse import open_warehouse
        dev = json.loads((args.spider / "dev_visible.json").read_text())
        settings = Settings.from_env()
        live = {}
        for db in sorted({ex["db_id"] for ex in dev}):
            wh = open_warehouse(str(args.spider / "database" / db / f"{db}.sqlite"), settings)
            live[db] = introspect(wh, sample_values=settings.sample_values)
            wh.close()
        print(f"== dev_visible ({len(dev)} questions, 5 databases introspected with sample values; measured, "
              f"not tuned on)")
        for k in ks:
            parts = by_database(live, dev, max_tables=k, passthrough=True, tokenizer=tokenizer)
            print(line(f"as the pipeline prunes, k={k}", merge(parts.values())))
            forced = by_database(live, dev, max_tables=k, passthrough=False, tokenizer=tokenizer)
            print(line(f"pruning forced, k={k}", merge(forced.values())))
            if args.per_db:
                for db, p in forced.items():
                    print(line(f"    forced {db}", p))


if __name__ == "__main__":
    main()
