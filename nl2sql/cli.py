"""`nl2sql` command line: the only module that prints. Every Nl2SqlError becomes one line, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _settings(args):
    from .config import Settings
    overrides = {}
    for name in ("model", "adapter", "device", "dtype"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    if getattr(args, "no_constrained", False):
        overrides["constrained"] = False
    return Settings.from_env(**overrides)


def cmd_ask(args) -> int:
    from .api import Pipeline
    pipe = Pipeline(_settings(args))
    a = pipe.ask(args.question, args.db, execute=not args.no_execute)
    if args.json:
        out = {"question": a.question, "sql": a.sql, "error": a.error, "truncated": a.truncated, "timings": a.timings,
               "model": a.model, "adapter": a.adapter, "candidates": a.candidates, "agreement": a.agreement,
               "rows": None if a.df is None else json.loads(a.df.head(100).to_json(orient="records", date_format="iso"))}
        print(json.dumps(out, default=str))
        return 0 if a.ok else 1
    print(a.sql or f"-- the model wrote: {a.raw_sql}")
    if a.error:
        print(f"error: {a.error}", file=sys.stderr)
        return 1
    if a.df is not None:
        import pandas as pd
        with pd.option_context("display.max_columns", 20, "display.width", 160):
            print()
            print(a.df.to_string(index=False, max_rows=40) if len(a.df) else "(no rows)")
        note = f"{len(a.df)} row(s)" + (" — truncated at the row or size limit (NL2SQL_ROW_LIMIT, NL2SQL_MAX_RESULT_BYTES)"
                                        if a.truncated else "")
        agree = f"; {a.agreement} of {a.candidates} candidates agree" if a.candidates > 1 else ""
        print(f"\n{note}; {a.timings.get('total', 0):.2f} s{agree}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from .api import Pipeline
    from .evaluate import demo_cases, run_eval, spider_cases
    pipe = Pipeline(_settings(args))
    if args.spider:
        if not Path(args.spider).is_dir():
            from .errors import ConfigError
            raise ConfigError(f"No Spider directory at {args.spider}.", hint="Pass the folder holding tables.json and database/.")
        cases = spider_cases(Path(args.spider), Path(args.questions) if args.questions else None)
    else:
        cases = demo_cases()
    if args.limit:
        cases = cases[: args.limit]
    if args.sample and args.sample < len(cases):  # evenly spaced, so every database keeps its share
        cases = [cases[i * len(cases) // args.sample] for i in range(args.sample)]
    out = Path(args.out) if args.out else Path("runs") / "eval" / ("spider" if args.spider else "demo") / "predictions.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = run_eval(cases, pipe, out, gold_dialect="sqlite")  # Spider gold and the demo pairs are both SQLite SQL
    summary.update(model=pipe.settings.model, adapter=pipe.generator.adapter_name,
                   constrained=pipe.settings.constrained, bind_columns=pipe.settings.bind_columns,
                   candidates=pipe.settings.candidates, temperature=pipe.settings.temperature,
                   repair_attempts=pipe.settings.repair_attempts, predictions=str(out))
    out.with_name("summary.json").write_text(json.dumps(summary, indent=2))
    print(f"execution accuracy {summary['execution_accuracy'] * 100:.1f} % on {summary['n']} questions; "
          f"invalid SQL {summary['invalid_sql_rate'] * 100:.1f} %; median {summary['median_seconds']} s, "
          f"p90 {summary['p90_seconds']} s per question")
    for db, d in summary["per_database"].items():
        print(f"  {db:24s} {d['accuracy'] * 100:5.1f} %  ({d['n']})")
    print(f"predictions: {out}")
    return 0


def cmd_train(args) -> int:
    from .training.pipeline import train_command
    return train_command(args, _settings(args))


def cmd_adapters(args) -> int:
    from . import registry
    s = _settings(args)
    if args.action == "list":
        for a in registry.list_adapters(s.data_dir):
            mark = "*" if a["promoted"] else " "
            ev = a.get("eval") or {}
            # trained adapters carry held-out accuracy; the shipped one carries dev_visible accuracy
            acc, what = ((ev["validation_accuracy"], "held-out") if ev.get("validation_accuracy") is not None else
                         (ev.get("dev_visible_execution_accuracy"), "dev_visible"))
            shown = f"{what} {acc * 100:.1f} %" if acc is not None else "not measured"
            print(f"{mark} {a['version']:28s} {a.get('created') or '':20s} {shown:22s} {a['path']}")
    elif args.action == "promote":
        registry.promote(s.data_dir, args.version)
        print(f"promoted {args.version}")
    elif args.action == "rollback":
        v = registry.rollback(s.data_dir)
        print(f"now using {v or 'the shipped adapter'}")
    elif args.action == "shadow":
        return _shadow(args, s)
    elif args.action == "compare":
        _compare(args, s)
    return 0


def _shadow(args, s) -> int:
    """`nl2sql adapters shadow V`: logged questions replayed through candidate V (nl2sql/lifecycle.py)."""
    from .api import Pipeline
    from .errors import InputError
    from .lifecycle import save_report, shadow
    if not args.version:
        raise InputError("Which candidate?", hint="nl2sql adapters shadow VERSION --since 7d (see `nl2sql adapters list`).")

    def progress(i, n, row):
        same = {True: "same result", False: "different result", None: "not comparable"}[row.matches_promoted]
        right = {True: "; right", False: "; wrong", None: ""}[row.candidate_correct]
        print(f"{i}/{n} #{row.entry_id} {same}{right} ({row.seconds:.1f} s)", file=sys.stderr)
    report = shadow(Pipeline(s.replace(escalate_below=0.0, ab_share=0.0)), args.version, since=args.since,
                    limit=args.limit, progress=progress, workers=args.workers)
    path = save_report(report, s, Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps(report.to_json(), default=str))
        return 0
    m = report.summary()
    if not report.rows:
        print(f"no logged questions in the last {args.since} to replay")
        return 0
    agree = m["matches_promoted"]
    print(f"{args.version} vs {report.promoted}: {m['questions']} logged question(s) of the last {args.since}, "
          f"replayed in {m['seconds']} s")
    print(f"  same result as the promoted adapter: {agree['k']}/{agree['n']}"
          + (f" ({agree['rate'] * 100:.1f} %, 95 % CI {agree['low'] * 100:.0f}-{agree['high'] * 100:.0f} %)" if agree['n'] else ""))
    for who, key in ((args.version, "candidate_accuracy"), (report.promoted, "promoted_accuracy")):
        r = m[key]
        shown = (f"{r['k']}/{r['n']} = {r['rate'] * 100:.1f} % (95 % CI {r['low'] * 100:.0f}-{r['high'] * 100:.0f} %)"
                 if r["n"] else "no verified answers (corrections or thumbs-up) in the window")
        print(f"  accuracy on verified answers, {who}: {shown}")
    for row in report.rows:
        if row.matches_promoted is False or row.corrected_sql:
            print(f"  #{row.entry_id} {row.question}\n    {args.version}: {row.candidate_sql or row.candidate_error}"
                  + (f"\n    corrected: {row.corrected_sql}" if row.corrected_sql else ""))
    print(f"report: {path}")
    return 0


def _compare(args, s) -> None:
    """`nl2sql adapters compare`: the adapters that answered logged questions side by side (A/B rollout)."""
    from .lifecycle import compare, parse_since
    from .querylog import QueryLog
    rows = compare(QueryLog(s.query_log_path).entries(), parse_since(args.since))
    if args.json:
        print(json.dumps(rows))
        return
    if not rows:
        print(f"no answered questions in the last {args.since}")
        return

    def pct(r):
        return f"{r['rate'] * 100:5.1f} % [{r['low'] * 100:.0f}-{r['high'] * 100:.0f}]" if r["n"] else "   n/a"
    print(f"{'adapter':24s} {'answered':>8s}  {'accuracy (verified)':26s} {'thumbs up':20s} {'thumbs down':20s} "
          f"{'repaired':20s} median s")
    for r in rows:
        acc = r["accuracy_verified"]
        acc_shown = f"{pct(acc)} of {acc['n']}"
        print(f"{r['adapter']:24s} {r['answered']:8d}  {acc_shown:26s} {pct(r['thumbs_up']):20s} "
              f"{pct(r['thumbs_down']):20s} {pct(r['repaired']):20s} {r['latency']['median']}")


def cmd_settings(args) -> int:
    from .config import describe
    for env, default, help in describe():
        print(f"{env:28s} {default:28s} {help}")
    return 0


def cmd_log(args) -> int:
    from .querylog import QueryLog
    log = QueryLog(_settings(args).query_log_path)
    n = log.export_training(Path(args.out))
    print(f"wrote {n} pairs to {args.out}")
    return 0


def cmd_role_sql(args) -> int:
    from .roles import readonly_role_sql
    print("\n".join(readonly_role_sql(args.dialect, args.role, database=args.database, schema=args.schema,
                                      host=args.host)))
    return 0


def cmd_examples(args) -> int:
    from .api import Pipeline
    from .querylog import QueryLog, db_key
    pipe = Pipeline(_settings(args))
    schema = pipe.schema(args.db)
    if args.action == "import":
        from .examples import import_pairs
        if not args.file:
            from .errors import InputError
            raise InputError("Which pairs file?", hint="nl2sql examples import pairs.jsonl [--db URL]")
        n, problems = import_pairs(args.file, schema=schema, log=QueryLog(pipe.settings.query_log_path),
                                   db_key=db_key(args.db), settings=pipe.settings)
        for p in problems:
            print(f"skipped {p}", file=sys.stderr)
        print(f"imported {n} verified pair(s) for {db_key(args.db)}; the next question can use them")
        return 1 if problems else 0
    found = pipe.examples_for(args.db, schema, args.question or "", k=args.k)  # what ask() would show
    for e in found:
        print(f"-- [{e.source} #{e.entry_id}] {e.question}\n{e.sql}")
    if not found:
        print("(no verified pairs match)", file=sys.stderr)
    return 0


def cmd_glossary(args) -> int:
    from .api import Pipeline
    from .glossary import glossary_path, load_glossary, render
    pipe = Pipeline(_settings(args))
    schema = pipe.schema(args.db)
    path = args.file or glossary_path(pipe.settings, args.db)  # the file questions on this database use
    if path is None:
        print("no glossary for this database (set NL2SQL_GLOSSARY or pass --file)", file=sys.stderr)
        return 1
    g = load_glossary(path, schema, pipe.settings)
    print(f"{path}: {len(g.entries)} entries checked against {schema.name}")
    for p in g.problems:
        print(f"refused {p}", file=sys.stderr)
    if pipe.settings.glossary_columns:  # what the model sees as columns (nl2sql/measures.py)
        from .measures import measures_of
        for m in measures_of(g, schema):
            print(f"column {m.table}.{m.column} = {m.sql}" + (f" (where {m.filter})" if m.filter else ""))
    if args.question:
        print(render(g.relevant(args.question)) or "(no entry mentioned)")
    return 1 if g.problems else 0


def cmd_serve(args) -> int:
    from .server import serve
    s = _settings(args)
    print(f"nl2sql serve: http://{args.host}:{args.port} (API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    serve(args.host, args.port, s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nl2sql", description="Ask your warehouse questions in words.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_flags(sp):
        sp.add_argument("--model", help="base model: bundled, a HF id or a checkpoint dir (NL2SQL_MODEL)")
        sp.add_argument("--adapter", help="LoRA adapter: default, none, or a directory (NL2SQL_ADAPTER)")
        sp.add_argument("--device", help="auto, cpu or cuda")
        sp.add_argument("--dtype", help="auto, bfloat16 or float32")
        sp.add_argument("--no-constrained", action="store_true", help="decode without the SQL grammar")

    a = sub.add_parser("ask", help="answer one question")
    a.add_argument("question")
    a.add_argument("--db", help="SQLAlchemy URL or .duckdb/.sqlite path (default: the demo warehouse)")
    a.add_argument("--no-execute", action="store_true", help="print the SQL only")
    a.add_argument("--json", action="store_true", help="print a JSON object")
    model_flags(a)
    a.set_defaults(func=cmd_ask)

    e = sub.add_parser("eval", help="execution accuracy on Spider (--spider DIR) or on the demo benchmark")
    e.add_argument("--spider", help="Spider folder (tables.json, database/, dev_visible.json)")
    e.add_argument("--questions", help="JSON file of {db_id, question, query} (default: dev_visible.json)")
    e.add_argument("--limit", type=int, default=0, help="only the first N questions")
    e.add_argument("--sample", type=int, default=0, help="N evenly spaced questions (all databases keep their share)")
    e.add_argument("--out", help="predictions JSONL (summary.json is written beside it)")
    model_flags(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train a LoRA adapter on a query log or Spider, gate it, and promote it")
    t.add_argument("--log", help="JSONL of {question, sql, db} pairs (e.g. from `nl2sql log export`)")
    t.add_argument("--spider", help="Spider folder: train on train_spider.json")
    t.add_argument("--synth", action="store_true", help="train on question/SQL pairs generated from the connected "
                   "schema and its glossary (a new warehouse's first adapter; with --log, on both)")
    t.add_argument("--db", help="--synth: the database to generate pairs from (default: the demo warehouse)")
    t.add_argument("--synth-pairs", type=int, default=400, help="--synth: how many pairs at most")
    t.add_argument("--out", help="run directory (default: runs/train/<version>)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the pairs (default: 1 for --log, 2 for --spider)")
    t.add_argument("--max-examples", type=int, default=0)
    t.add_argument("--no-promote", action="store_true", help="register the adapter but never promote it")
    t.add_argument("--force", action="store_true", help="promote even if it scores worse than the current adapter")
    t.add_argument("--dpo", action="store_true", help="preference tuning on --log's feedback: corrected or thumbs-up SQL "
                   "preferred over the model's corrected or thumbs-down SQL (a LoRA on top of the adapter in use)")
    t.add_argument("--beta", type=float, default=0.1, help="--dpo: how far from the adapter in use it may move (default 0.1)")
    t.add_argument("--rpo-alpha", type=float, default=0.0, help="--dpo: weight of an SFT term on the chosen SQL (default 0)")
    model_flags(t)
    t.set_defaults(func=cmd_train)

    ad = sub.add_parser("adapters", help="list, promote or roll back adapters; shadow-test a candidate on logged "
                                         "questions; compare the adapters that answered (A/B rollout)")
    ad.add_argument("action", choices=["list", "promote", "rollback", "shadow", "compare"])
    ad.add_argument("version", nargs="?")
    ad.add_argument("--since", default="7d", help="shadow/compare: logged questions of this last period (7d, 12h)")
    ad.add_argument("--limit", type=int, default=0, help="shadow: at most the N newest questions")
    ad.add_argument("--workers", type=int, default=8, help="shadow: questions replayed at a time (their decoding "
                    "shares batches)")
    ad.add_argument("--out", help="shadow: report JSON path (default: <data_dir>/shadow/<version>-<time>.json)")
    ad.add_argument("--json", action="store_true", help="shadow/compare: print JSON")
    ad.set_defaults(func=cmd_adapters)

    s = sub.add_parser("settings", help="list every setting with its environment variable and default")
    s.set_defaults(func=cmd_settings)

    lg = sub.add_parser("log", help="query log tools")
    lg.add_argument("action", choices=["export"])
    lg.add_argument("--out", default="querylog-pairs.jsonl")
    lg.set_defaults(func=cmd_log)

    r = sub.add_parser("role-sql", help="print the SQL that creates a SELECT-only login for nl2sql (run it as an admin)")
    r.add_argument("--dialect", required=True, choices=["postgres", "mariadb", "mysql"])
    r.add_argument("--database", required=True, help="the database nl2sql will read")
    r.add_argument("--role", default="nl2sql_ro", help="name of the login to create (default: nl2sql_ro)")
    r.add_argument("--schema", default="public", help="PostgreSQL schema to grant SELECT on (default: public)")
    r.add_argument("--host", default="%", help="MariaDB/MySQL host pattern of the login (default: %%)")
    r.set_defaults(func=cmd_role_sql)
    ex = sub.add_parser("examples", help="verified question/SQL pairs retrieved into prompts: import a file, or search")
    ex.add_argument("action", choices=["import", "search"])
    ex.add_argument("file", nargs="?", help="import: JSON lines of {question, sql} in the warehouse's SQL")
    ex.add_argument("--db", help="the database the pairs belong to (default: the demo warehouse)")
    ex.add_argument("--question", help="search: the question to find neighbours of")
    ex.add_argument("-k", type=int, default=3, help="search: how many")
    ex.set_defaults(func=cmd_examples)

    gl = sub.add_parser("glossary", help="check a business glossary against the live schema (and show what a "
                                         "question would get)")
    gl.add_argument("action", choices=["check"])
    gl.add_argument("--db", help="the database it describes (default: the demo warehouse)")
    gl.add_argument("--file", help="glossary YAML (default: NL2SQL_GLOSSARY, or the one found for --db)")
    gl.add_argument("--question", help="also print the entries this question would get")
    gl.set_defaults(func=cmd_glossary)

    sv = sub.add_parser("serve", help="answer questions over HTTP for many analysts (one warm model, batched)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond localhost needs NL2SQL_API_TOKEN)")
    sv.add_argument("--port", type=int, default=8765)
    model_flags(sv)
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar is noise here
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not the user's concern
    args = build_parser().parse_args(argv)
    from .errors import Nl2SqlError
    try:
        return args.func(args)
    except Nl2SqlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
