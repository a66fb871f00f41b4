"""Large-warehouse benchmark: the dev_visible questions asked of one DuckDB file of 200+ tables.

    python benchmarks/large_schema.py                       # build (once) + linking figures
    python benchmarks/large_schema.py --sample 60 --model   # + execution accuracy, big file vs own databases

The file holds every table of the five dev_visible SQLite databases, with their rows, renamed
`<db>__<table>`, plus empty distractor tables from Spider *train* schemas (tables.json, renamed the same way,
databases taken in a seeded shuffle until --tables is reached). Primary and foreign keys become DuckDB
constraints (what nl2sql's DuckDB introspection reads); a foreign key the data or the types do not allow is
left out and counted. Each gold query is rewritten to the new names with sqlglot (a table without an alias gets
its old name as alias, so qualified columns keep working) and transpiled to DuckDB; the rewritten gold is run
on the big file and compared with the original gold on the small SQLite file (nl2sql.evaluate.results_match),
so engine differences are counted apart from linking.

Reported: build and introspection time, index build time (cold and from the disk cache), table and column
recall of the pruned schema at each cut-off, prompt size against the full schema, linking time per question.
`--model` also runs nl2sql's pipeline (nl2sql.evaluate.run_eval) on the big file and on the small databases:
until nl2sql.api.Pipeline.ask prunes with nl2sql.linking, it refuses schemas over NL2SQL_MAX_PROMPT_COLUMNS
columns, so that run is for after the lead's wiring (command in the README section).
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlglot
from sqlglot import exp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from linking_recall import gold_refs, line, load_tokenizer, sample, score  # noqa: E402

SPIDER = ROOT.parent / "shared" / "data" / "spider"
DEFAULT_OUT = Path(tempfile.gettempdir()) / "nl2sql-bench" / "large_schema.duckdb"
FORMAT = 1  # bump when the file's construction changes: an older file is rebuilt


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- reading the small databases ------------------------------------------------------------------------------

def sqlite_tables(path: Path) -> list[dict]:
    """Tables of a SQLite file: name, columns (name, declared type, pk position), foreign keys, rows."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.text_factory = lambda b: b.decode("utf-8", "replace")
    out = []
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        for n in names:
            cols = [(r[1], r[2] or "", r[5]) for r in con.execute(f"PRAGMA table_info({q(n)})")]
            fks = [(r[3], r[2], r[4]) for r in con.execute(f"PRAGMA foreign_key_list({q(n)})")]
            rows = con.execute(f"SELECT * FROM {q(n)}").fetchall()
            out.append({"name": n, "columns": cols, "fks": fks, "rows": rows})
    finally:
        con.close()
    return out


def _family(declared: str) -> str:
    d = declared.lower()
    if "int" in d:
        return "int"
    if any(k in d for k in ("real", "floa", "doub", "dec", "num")):
        return "real"
    if "bool" in d:
        return "bool"
    return "text"


def _is_int(v) -> bool:
    if isinstance(v, bool) or isinstance(v, int):
        return True
    if isinstance(v, str):
        try:
            int(v.strip())
            return v.strip() != ""
        except ValueError:
            return False
    return isinstance(v, float) and v.is_integer()


def _is_num(v) -> bool:
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v).strip())
        return str(v).strip() != ""
    except ValueError:
        return False


def duck_type(declared: str, values: list) -> str:
    """A DuckDB type that holds every value and compares the way the gold SQL expects: numbers stay numbers
    (also in TEXT columns that hold only numbers, which SQLite compares numerically in practice)."""
    vals = [v for v in values if v is not None]
    fam = _family(declared)
    if fam == "bool" and all(v in (0, 1, "0", "1", "T", "F", "true", "false") for v in vals):
        return "VARCHAR" if any(isinstance(v, str) for v in vals) else "INTEGER"
    if vals and all(_is_int(v) for v in vals) and fam in ("int", "real", "text", "bool"):
        return "BIGINT" if fam != "real" else "DOUBLE"
    if vals and all(_is_num(v) for v in vals) and fam != "text":
        return "DOUBLE"
    if not vals:
        return {"int": "BIGINT", "real": "DOUBLE", "bool": "BOOLEAN"}.get(fam, "VARCHAR")
    return "VARCHAR"


def _convert(v, typ):
    if v is None:
        return None
    if typ == "BIGINT" or typ == "INTEGER":
        return int(str(v).strip()) if isinstance(v, str) else int(v)
    if typ == "DOUBLE":
        return float(v)
    if typ == "BOOLEAN":
        return bool(v)
    return v if isinstance(v, str) else str(v)


# --- building the file ----------------------------------------------------------------------------------------

def _spider_type(t: str, col: str) -> str:
    if t == "number":
        return "BIGINT" if col.lower().endswith("id") else "DOUBLE"
    return {"boolean": "BOOLEAN"}.get(t, "VARCHAR")


def plan_tables(spider: Path, dev_dbs: list[str], target_tables: int, seed: int = 0):
    """Every dev table (with rows) plus distractor train schemas until `target_tables` tables."""
    tables = []
    for db in dev_dbs:
        for t in sqlite_tables(spider / "database" / db / f"{db}.sqlite"):
            by_col = list(zip(*t["rows"])) if t["rows"] else [[] for _ in t["columns"]]
            types = [duck_type(decl, list(by_col[i])) for i, (_, decl, _) in enumerate(t["columns"])]
            tables.append({"db": db, "name": t["name"], "columns": [(c, typ, pk) for (c, _, pk), typ
                                                                   in zip(t["columns"], types)],
                           "fks": t["fks"], "rows": t["rows"]})
    entries = {e["db_id"]: e for e in json.loads((spider / "tables.json").read_text())}
    train_dbs = sorted({ex["db_id"] for ex in json.loads((spider / "train_spider.json").read_text())} - set(dev_dbs))
    random.Random(seed).shuffle(train_dbs)
    distractor_dbs = []
    for db in train_dbs:
        if len(tables) >= target_tables:
            break
        e = entries[db]
        names = e["table_names_original"]
        cols = e["column_names_original"]
        pks = set()
        for pk in e["primary_keys"]:
            pks.update(pk if isinstance(pk, list) else [pk])
        for ti, tname in enumerate(names):
            columns, seen = [], set()
            for idx, (tj, cname) in enumerate(cols):
                if tj == ti and cname.lower() not in seen:
                    seen.add(cname.lower())
                    columns.append((cname, _spider_type(e["column_types"][idx], cname), 1 if idx in pks else 0))
            fks = [(cols[src][1], names[cols[dst][0]], cols[dst][1]) for src, dst in e["foreign_keys"]
                   if cols[src][0] == ti]
            tables.append({"db": db, "name": tname, "columns": columns, "fks": fks, "rows": []})
        distractor_dbs.append(db)
    return tables, distractor_dbs


def build(out: Path, spider: Path, dev_dbs: list[str], target_tables: int) -> dict:
    """Write the DuckDB file; returns what was built (tables, foreign keys kept and left out)."""
    import duckdb
    tables, distractor_dbs = plan_tables(spider, dev_dbs, target_tables)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    by_key = {(t["db"], t["name"].lower()): t for t in tables}
    for t in tables:
        t["new"] = f"{t['db']}__{t['name']}"
        t["unique"] = []  # extra UNIQUE constraints a foreign key needs on this table

    # Resolve each FK to existing table/columns, check it holds on the data, and settle the creation order.
    fk_ok, fk_dropped = {}, []
    for t in tables:
        ok = []
        for col, ref_table, ref_col in t["fks"]:
            ref = by_key.get((t["db"], str(ref_table).lower()))
            cmap = {c.lower(): (c, typ) for c, typ, _ in t["columns"]}
            if ref is None or col.lower() not in cmap:
                fk_dropped.append((t["new"], col, "unknown table or column"))
                continue
            rmap = {c.lower(): (c, typ) for c, typ, _ in ref["columns"]}
            if ref_col is None:  # references the primary key
                pk = [c for c, _, p in ref["columns"] if p]
                ref_col = pk[0] if len(pk) == 1 else None
            if ref_col is None or ref_col.lower() not in rmap:
                fk_dropped.append((t["new"], col, "unknown referenced column"))
                continue
            c_name, c_typ = cmap[col.lower()]
            r_name, r_typ = rmap[ref_col.lower()]
            if c_typ != r_typ and not t["rows"]:  # an empty distractor: take the referenced column's type
                t["columns"] = [(c, r_typ if c == c_name else typ, p) for c, typ, p in t["columns"]]
                c_typ = r_typ
            if c_typ != r_typ:
                fk_dropped.append((t["new"], col, f"types differ ({c_typ} vs {r_typ})"))
                continue
            ci = [c.lower() for c, _, _ in t["columns"]].index(c_name.lower())
            ri = [c.lower() for c, _, _ in ref["columns"]].index(r_name.lower())
            parent = [_convert(r[ri], r_typ) for r in ref["rows"]]
            child = {_convert(r[ci], c_typ) for r in t["rows"] if r[ci] is not None}
            if len(set(parent)) != len(parent) or not child <= set(parent):
                fk_dropped.append((t["new"], col, "the data breaks it"))
                continue
            pk_cols = [c for c, _, p in ref["columns"] if p]
            if [c.lower() for c in pk_cols] != [r_name.lower()] and r_name not in ref["unique"]:
                ref["unique"].append(r_name)
            ok.append((c_name, ref, r_name))
        fk_ok[id(t)] = ok
    order, placed, visiting = [], set(), set()

    def place(t):
        if id(t) in placed:
            return
        visiting.add(id(t))
        for fk in list(fk_ok[id(t)]):
            ref = fk[1]
            if ref is t or id(ref) in placed:
                continue
            if id(ref) in visiting:  # a cycle: this edge cannot be declared in creation order
                fk_ok[id(t)].remove(fk)
                fk_dropped.append((t["new"], fk[0], "cycle"))
                continue
            place(ref)
        visiting.discard(id(t))
        placed.add(id(t))
        order.append(t)
    for t in tables:
        place(t)

    con = duckdb.connect(str(tmp))
    try:
        for t in order:
            parts = [f"{q(c)} {typ}" for c, typ, _ in t["columns"]]
            pk = [c for c, _, p in sorted(t["columns"], key=lambda x: x[2]) if p]
            pk_ok = bool(pk) and (not t["rows"] or len({tuple(r[i] for i, (c, _, p) in enumerate(t["columns"]) if p)
                                                          for r in t["rows"]}) == len(t["rows"]))
            if pk_ok:
                parts.append(f"PRIMARY KEY ({', '.join(q(c) for c in pk)})")
            for u in t["unique"]:
                if not (pk_ok and [c.lower() for c in pk] == [u.lower()]):
                    parts.append(f"UNIQUE ({q(u)})")
            for c, ref, rc in fk_ok[id(t)]:
                parts.append(f"FOREIGN KEY ({q(c)}) REFERENCES {q(ref['new'])} ({q(rc)})")
            con.execute(f"CREATE TABLE {q(t['new'])} ({', '.join(parts)})")
            if t["rows"]:
                types = [typ for _, typ, _ in t["columns"]]
                rows = [tuple(_convert(v, typ) for v, typ in zip(r, types)) for r in t["rows"]]
                con.executemany(f"INSERT INTO {q(t['new'])} VALUES ({', '.join('?' * len(types))})", rows)
        con.execute(f"COMMENT ON TABLE {q(order[0]['new'])} IS 'nl2sql large-schema benchmark format {FORMAT}'")
    finally:
        con.close()
    tmp.replace(out)
    return {"tables": len(tables), "dev_tables": sum(1 for t in tables if t["rows"] or t["db"] in dev_dbs),
            "distractor_databases": distractor_dbs,
            "foreign_keys": sum(len(v) for v in fk_ok.values()), "foreign_keys_left_out": fk_dropped}


# --- gold SQL on the new names --------------------------------------------------------------------------------

def rewrite_gold(sql: str, db: str, table_names: list[str], columns: set[str]) -> str:
    """The gold query on the big file: tables renamed <db>__<table>, written for DuckDB. Spider's
    double-quoted strings ("Bob"), which sqlglot reads as identifiers, become string literals."""
    tree = sqlglot.parse_one(sql, read="sqlite")
    names = {n.lower(): n for n in table_names}
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    for t in list(tree.find_all(exp.Table)):
        low = t.name.lower()
        if low in ctes or low not in names:
            continue
        if not t.alias:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(t.name)))
        t.set("this", exp.to_identifier(f"{db}__{names[low]}", quoted=True))
    for c in list(tree.find_all(exp.Column)):
        ident = c.this
        if (isinstance(ident, exp.Identifier) and ident.args.get("quoted") and not c.table
                and ident.name.lower() not in columns):
            c.replace(exp.Literal.string(ident.name))
    for sel in tree.find_all(exp.Select):
        _any_value_for_bare_columns(sel)
    return tree.sql(dialect="duckdb")


def _any_value_for_bare_columns(sel: exp.Select) -> None:
    """SQLite lets a grouped query select a column it does not group by (any row's value); DuckDB wants
    ANY_VALUE(column) for that, which is what SQLite does."""
    group = sel.args.get("group")
    if not group:
        return
    keys = {g.sql().lower() for g in group.expressions}
    keys |= {g.name.lower() for g in group.expressions if isinstance(g, exp.Column)}
    order = sel.args.get("order")
    items = list(sel.expressions) + ([o.this for o in order.expressions] if order else [])
    for item in items:
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Column) and node.sql().lower() not in keys and node.name.lower() not in keys:
            node.replace(exp.func("ANY_VALUE", node.copy()))


def questions(spider: Path, out: Path, db_ids: list[str]):
    from nl2sql.schema import Schema, Table, Column
    dev = json.loads((spider / "dev_visible.json").read_text())
    small = {db: sqlite_tables(spider / "database" / db / f"{db}.sqlite") for db in db_ids}
    rows = []
    for ex in dev:
        tabs = small[ex["db_id"]]
        cols = {c.lower() for t in tabs for c, _, _ in t["columns"]}
        try:
            big_sql = rewrite_gold(ex["query"], ex["db_id"], [t["name"] for t in tabs], cols)
        except Exception as e:  # counted, never silently dropped
            big_sql = None
            print(f"could not rewrite: {ex['query']} ({e})")
        schema = Schema(ex["db_id"], "sqlite", tuple(Table(t["name"], tuple(Column(c) for c, _, _ in t["columns"]))
                                                    for t in tabs))
        gold_t, gold_c = gold_refs(ex["query"], schema)
        p = ex["db_id"].lower() + "__"
        rows.append({"db_id": ex["db_id"], "question": ex["question"], "query": ex["query"], "big_query": big_sql,
                     "small_db": str(spider / "database" / ex["db_id"] / f"{ex['db_id']}.sqlite"),
                     "gold_tables": sorted(p + t for t in gold_t),
                     "gold_columns": sorted([p + a, b] for a, b in gold_c)})
    return rows


def gold_agreement(rows, big_path: Path):
    """How many rewritten gold queries give on the big DuckDB file what the original gives on SQLite."""
    import duckdb
    from nl2sql.evaluate import has_order_by, results_match
    con = duckdb.connect(str(big_path), read_only=True)
    agree, failures = 0, []
    try:
        for r in rows:
            try:
                g = sqlite3.connect(f"file:{r['small_db']}?mode=ro", uri=True)
                g.text_factory = lambda b: b.decode("utf-8", "replace")
                small = g.execute(r["query"]).fetchall()
                g.close()
                big = con.execute(r["big_query"]).fetchall()
                ok = results_match(small, big, has_order_by(r["query"], "sqlite"))
            except Exception as e:
                ok, big = False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            agree += ok
            if not ok:
                failures.append({"query": r["query"], "big_query": r["big_query"], "got": str(big)[:200]})
    finally:
        con.close()
    return agree, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spider", type=Path, default=SPIDER)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the DuckDB file (default {DEFAULT_OUT})")
    ap.add_argument("--tables", type=int, default=200, help="at least this many tables in all")
    ap.add_argument("--rebuild", action="store_true", help="build the file again even if it exists")
    ap.add_argument("--sample", type=int, default=0, help="evenly spaced questions (0 = all 299)")
    ap.add_argument("--max-tables", type=int, nargs="*", default=None, help="cut-offs to report (default: the "
                    "linking default and a few around it)")
    ap.add_argument("--tokens", action="store_true", help="count prompt tokens with the model's tokenizer")
    ap.add_argument("--model", action="store_true", help="also run the pipeline on the big and the small files")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "large_schema" / "linking.json")
    args = ap.parse_args(argv)

    from nl2sql import linking
    from nl2sql.config import Settings
    from nl2sql.prompt import render_schema
    from nl2sql.schema import introspect
    from nl2sql.warehouse import open_warehouse

    dev_dbs = sorted({ex["db_id"] for ex in json.loads((args.spider / "dev_visible.json").read_text())})
    meta_path = args.out.with_suffix(".json")
    report = {}
    if args.rebuild or not args.out.exists() or not meta_path.exists() or \
            json.loads(meta_path.read_text()).get("format") != FORMAT:
        t0 = time.perf_counter()
        built = build(args.out, args.spider, dev_dbs, args.tables)
        rows = questions(args.spider, args.out, dev_dbs)
        built["seconds"] = round(time.perf_counter() - t0, 2)
        meta_path.write_text(json.dumps({"format": FORMAT, "built": built, "questions": rows}, indent=1))
        print(f"built {args.out}: {built['tables']} tables in {built['seconds']} s; foreign keys declared "
              f"{built['foreign_keys']}, left out {len(built['foreign_keys_left_out'])}: "
              f"{built['foreign_keys_left_out']}")
    meta = json.loads(meta_path.read_text())
    rows = sample(meta["questions"], args.sample)
    report["built"] = {k: v for k, v in meta["built"].items() if k != "distractor_databases"}

    agree, failures = gold_agreement(rows, args.out)
    print(f"rewritten gold on the big file agrees with the original on its SQLite file: {agree}/{len(rows)}")
    report["gold_agreement"] = [agree, len(rows)]
    report["gold_disagreements"] = failures

    with tempfile.TemporaryDirectory() as cache:
        settings = Settings.from_env(cache_dir=Path(cache))
        t0 = time.perf_counter()
        wh = open_warehouse(str(args.out), settings)
        schema = introspect(wh, sample_values=settings.sample_values)
        t_intro = time.perf_counter() - t0
        wh.close()
        linking.clear_memory_cache()
        t0 = time.perf_counter()
        index = linking.SchemaIndex.build(schema, settings)
        t_cold = time.perf_counter() - t0
        linking.clear_memory_cache()
        t0 = time.perf_counter()
        linking.SchemaIndex.build(schema, settings)
        t_disk = time.perf_counter() - t0
    full = render_schema(schema)
    print(f"{schema.name}: {len(schema.tables)} tables, {schema.column_count} columns, "
          f"{sum(len(t.foreign_keys) for t in schema.tables)} foreign keys, full prompt {len(full):,} characters "
          f"(≈{len(full) // 4:,} tokens); introspection with sample values {t_intro:.2f} s; "
          f"index built in {t_cold:.2f} s, loaded from the disk cache in {t_disk:.2f} s")
    report.update(tables=len(schema.tables), columns=schema.column_count, full_prompt_chars=len(full),
                  introspect_seconds=round(t_intro, 2), index_build_seconds=round(t_cold, 3),
                  index_load_seconds=round(t_disk, 3), cutoffs={})
    tokenizer = load_tokenizer() if args.tokens else None
    if tokenizer:
        report["full_prompt_tokens"] = len(tokenizer(full)["input_ids"])
        print(f"full prompt: {report['full_prompt_tokens']:,} tokens")
    qs = [(r["question"], set(r["gold_tables"]), {tuple(c) for c in r["gold_columns"]}) for r in rows]
    ks = args.max_tables or sorted({linking.DEFAULT_MAX_TABLES, 6, 10, 15, 30})
    for k in ks:
        s = score(index, qs, max_tables=k, full_chars=len(full), tokenizer=tokenizer)
        print(line(f"large schema, k={k}", s))
        report["cutoffs"][str(k)] = {
            "table_recall": round(s["tables_hit"] / max(1, s["tables"]), 4),
            "questions_all_tables": round(s["all_tables"] / max(1, s["n"]), 4),
            "column_recall": round(s["cols_hit"] / max(1, s["cols"]), 4),
            "prompt_fraction_mean": round(statistics.mean(s["frac"]), 4),
            "prompt_fraction_max": round(max(s["frac"]), 4),
            "tables_kept_mean": round(statistics.mean(s["kept"]), 2),
            "link_ms_median": round(1000 * statistics.median(s["secs"]), 2)}
        if tokenizer:
            report["cutoffs"][str(k)]["prompt_tokens_mean"] = round(statistics.mean(s["tok_frac"])
                                                                    * report["full_prompt_tokens"])
        by_db = {}
        for (qq, gt, gc), r in zip(qs, rows):
            by_db.setdefault(r["db_id"], []).append((qq, gt, gc))
        for db, sub in sorted(by_db.items()):
            print(line(f"    {db}", score(index, sub, max_tables=k, full_chars=len(full))))

    if args.model:
        from nl2sql.api import Pipeline
        from nl2sql.evaluate import Case, run_eval
        pipe = Pipeline(Settings.from_env())
        big_cases = [Case(r["question"], r["big_query"], str(args.out), r["db_id"]) for r in rows if r["big_query"]]
        small_cases = [Case(r["question"], r["query"], r["small_db"], r["db_id"]) for r in rows]
        out_dir = args.report.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        big = run_eval(big_cases, pipe, out_dir / "big.jsonl", gold_dialect="duckdb")
        small = run_eval(small_cases, pipe, out_dir / "small.jsonl")
        for label, s in (("big file", big), ("own databases", small)):
            print(f"{label}: execution accuracy {100 * s['execution_accuracy']:.1f} % on {s['n']}, invalid SQL "
                  f"{100 * s['invalid_sql_rate']:.1f} %, median {s['median_seconds']} s, p90 {s['p90_seconds']} s")
        report["model"] = {"big": big, "small": small}

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
