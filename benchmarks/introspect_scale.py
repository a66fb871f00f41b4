"""Introspection at scale: how long nl2sql takes to read a schema of N tables × M columns.

    python benchmarks/introspect_scale.py                    # DuckDB and PostgreSQL, 1,000 × 10
    python benchmarks/introspect_scale.py --engines duckdb --tables 200 --profile
    python benchmarks/introspect_scale.py --engines mariadb   # nl2sql_scale on 127.0.0.1:3306 as root

Builds the schema once (DuckDB: a file under --dir; PostgreSQL: the database nl2sql_scale on
127.0.0.1:5432 as postgres, recreated), each table with a primary key, a foreign key to the previous table,
a comment on every third column and 5 rows, then times, in a fresh warehouse each:
- `describe_tables()`: the catalog reads (batched: a few queries in all on DuckDB and PostgreSQL);
- on SQLAlchemy engines, the per-table catalog reads it replaced (four per table), and whether both agree;
- `schema.introspect()` with the default sample values: over 150 columns it takes no samples up front;
- `schema.with_samples()` for 20 tables (what the pipeline does for the tables schema linking keeps), and again
  (memoised);
- `introspect(..., eager_columns=None)`: samples for every text column up front (one query each; the old default).
`--profile` prints where the time goes (cProfile, top 15 by cumulative time).
The target (issue 10): 1,000 tables × 10 columns in ≤ 10 s.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nl2sql_scale"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/nl2sql_scale"


def ddl(n_tables: int, n_cols: int, dialect: str) -> list[str]:
    out = []
    mysql = dialect == "mysql"  # comments inline, foreign keys as table constraints
    for i in range(n_tables):
        cols, cons = ["id INTEGER PRIMARY KEY"], []
        for j in range(1, n_cols):
            if j == 1 and i > 0:
                if mysql:
                    cols.append(f"t_{i - 1:04d}_id INTEGER")
                    cons.append(f"FOREIGN KEY (t_{i - 1:04d}_id) REFERENCES t_{i - 1:04d} (id)")
                else:
                    cols.append(f"t_{i - 1:04d}_id INTEGER REFERENCES t_{i - 1:04d} (id)")
            else:
                comment = f" COMMENT 'column {j} of table {i}'" if mysql and j % 3 == 2 else ""
                cols.append(f"col{j} {'VARCHAR(40)' if j % 2 else 'INTEGER'}{comment}")
        tail = f" COMMENT='table number {i}'" if mysql else ""
        out.append(f"CREATE TABLE t_{i:04d} ({', '.join(cols + cons)}){tail}")
        if not mysql:
            out.append(f"COMMENT ON TABLE t_{i:04d} IS 'table number {i}'")
            for j in range(2, n_cols, 3):
                out.append(f"COMMENT ON COLUMN t_{i:04d}.col{j} IS 'column {j} of table {i}'")
        values = []
        for r in range(5):
            row = [str(r)]
            for j in range(1, n_cols):
                if j == 1 and i > 0:
                    row.append(str(r))
                else:
                    row.append(f"'v{r}-{j}'" if j % 2 else str(r * j))
            values.append(f"({', '.join(row)})")
        out.append(f"INSERT INTO t_{i:04d} VALUES {', '.join(values)}")
    return out


def make_duckdb(path: Path, n_tables: int, n_cols: int) -> str:
    import duckdb
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    con.execute("BEGIN")
    for s in ddl(n_tables, n_cols, "duckdb"):
        con.execute(s)
    con.execute("COMMIT")
    con.close()
    return str(path)


def make_postgres(n_tables: int, n_cols: int) -> str:
    import sqlalchemy as sa
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_scale WITH (FORCE)")
        c.exec_driver_sql("CREATE DATABASE nl2sql_scale")
    admin.dispose()
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        for s in ddl(n_tables, n_cols, "postgres"):
            c.exec_driver_sql(s)
    eng.dispose()
    return PG_URL


def make_mariadb(n_tables: int, n_cols: int) -> str:
    import sqlalchemy as sa
    admin = sa.create_engine(MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_scale")
        c.exec_driver_sql("CREATE DATABASE nl2sql_scale")
    admin.dispose()
    eng = sa.create_engine(MY_URL)
    with eng.begin() as c:
        for s in ddl(n_tables, n_cols, "mysql"):
            c.exec_driver_sql(s)
    eng.dispose()
    return MY_URL


def timed(label, fn, profile: bool):
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    result = fn()
    if prof:
        prof.disable()
    secs = time.perf_counter() - t0
    print(f"  {label:<44} {secs:7.2f} s")
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(15)
        print("\n".join("    " + ln for ln in buf.getvalue().splitlines()[4:30] if ln.strip()))
    return result, secs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["duckdb", "postgres"], choices=["duckdb", "postgres", "mariadb"])
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--columns", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "nl2sql-bench")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-per-table", action="store_true", help="do not time the per-table catalog reads")
    ap.add_argument("--skip-eager", action="store_true", help="do not time sampling every text column up front")
    ap.add_argument("--keep", action="store_true", help="leave the server databases nl2sql_scale in place")
    args = ap.parse_args(argv)

    from nl2sql.config import Settings
    from nl2sql.linking import SchemaIndex, clear_memory_cache
    from nl2sql.schema import introspect, with_samples
    from nl2sql.warehouse import open_warehouse
    settings = Settings.from_env()
    args.dir.mkdir(parents=True, exist_ok=True)
    for engine in args.engines:
        t0 = time.perf_counter()
        if engine == "duckdb":
            db = make_duckdb(args.dir / f"scale-{args.tables}x{args.columns}.duckdb", args.tables, args.columns)
        elif engine == "postgres":
            db = make_postgres(args.tables, args.columns)
        else:
            db = make_mariadb(args.tables, args.columns)
        print(f"{engine}: {args.tables} tables × {args.columns} columns built in {time.perf_counter() - t0:.1f} s")
        wh = open_warehouse(db, settings)
        tables, _ = timed("describe_tables()", wh.describe_tables, args.profile)
        wh.close()
        if hasattr(wh, "_describe_tables_per_table") and not args.skip_per_table:
            wh = open_warehouse(db, settings)
            per_table, _ = timed("  the per-table catalog reads (before)", wh._describe_tables_per_table, args.profile)
            wh.close()
            print(f"  {'  same result as describe_tables()':<44} {per_table == tables}")
        n = settings.sample_values
        wh = open_warehouse(db, settings)
        schema, _ = timed(f"introspect(sample_values={n}) (lazy samples)",
                          lambda: introspect(wh, sample_values=n), args.profile)
        keep = [t.name for t in schema.tables[:: max(1, len(schema.tables) // 20)][:20]]
        timed(f"with_samples() for {len(keep)} tables", lambda: with_samples(wh, schema, keep, n), args.profile)
        timed(f"  again (memoised per warehouse)", lambda: with_samples(wh, schema, keep, n), False)
        wh.close()
        if not args.skip_eager:
            wh = open_warehouse(db, settings)
            timed(f"introspect(sample_values={n}, eager_columns=None)", lambda: introspect(
                wh, sample_values=n, eager_columns=None), args.profile)
            wh.close()
        fks = sum(len(t.foreign_keys) for t in schema.tables)
        print(f"  read {len(schema.tables)} tables, {schema.column_count} columns, {fks} foreign keys, "
              f"{sum(1 for t in schema.tables for c in t.columns if c.comment)} column comments")
        clear_memory_cache()
        timed("linking index build (no disk cache)", lambda: SchemaIndex.build(schema), False)
        if engine != "duckdb" and not args.keep:
            drop_server_database(engine)


def drop_server_database(engine: str) -> None:
    import sqlalchemy as sa
    admin = sa.create_engine(PG_ADMIN if engine == "postgres" else MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_scale" + (" WITH (FORCE)" if engine == "postgres" else ""))
    admin.dispose()


if __name__ == "__main__":
    main()
