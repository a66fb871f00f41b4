"""How fast nl2sql learns a warehouse from its analysts' corrections (issue 11), on the demo warehouse.

The demo pairs (schemas/demo_pairs.jsonl) are grouped by *kind* of question (the template they were written
from, so rewordings of one question share a kind). A seeded third of the kinds is held out: the score is
execution accuracy on questions of those kinds only. The corrections an analyst logs come, in a seeded random
order, from the other kinds; after 0, 10, 25, 50 and 100 of them (as many as there are) each configuration is
scored:

    retrieval   the corrections sit in the query log; the k most similar go into each prompt (nl2sql/examples.py)
    train       `nl2sql train --log`'s training on the corrections (LoRA on top of the shipped adapter), no retrieval
    both        trained with retrieved neighbours in its prompts, and retrieval at inference
    synth       retrieval, starting from the adapter `nl2sql train --synth` made (--synth-adapter DIR) instead
                of the shipped one: the first-day adapter from the warehouse's own schema and glossary
    +glossary   the shipped glossary (schemas/retail.glossary.yml) on; without it, NL2SQL_GLOSSARY=off

    python benchmarks/learning_curve.py                       # all configurations (hours on 2 cores)
    python benchmarks/learning_curve.py --configs retrieval+glossary,retrieval --points 0,25,50
    python benchmarks/learning_curve.py --rewordings [--synth-adapter DIR]
Writes <out>/results.json and <out>/learning_curve.svg; prints one line per point.

--rewordings measures the other case, a question of a kind someone has corrected before: for every kind with two
or more pairs, the first is logged as a correction and the second asked, with and without retrieval.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("retrieval+glossary", "retrieval", "train+glossary", "both+glossary")


def split(seed: int, held_out: float, per_kind: int):
    """(test pairs: up to per_kind of each held-out kind, pool of corrections from the other kinds, in the
    order an analyst would log them)."""
    from nl2sql.schemas.demo import PAIRS
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    kinds = sorted({r["kind"] for r in rows})
    random.Random(seed).shuffle(kinds)
    held = set(kinds[: round(len(kinds) * held_out)])
    test, taken = [], {}
    for r in rows:
        if r["kind"] in held and taken.get(r["kind"], 0) < per_kind:
            taken[r["kind"]] = taken.get(r["kind"], 0) + 1
            test.append(r)
    pool = [r for r in rows if r["kind"] not in held]
    random.Random(seed + 1).shuffle(pool)
    return test, pool, held


def log_with(pairs, path: Path) -> None:
    from nl2sql.querylog import QueryLog
    QueryLog(path).add_verified([(p["question"], p["sql"]) for p in pairs], db="demo", dialect="sqlite",
                                comment="learning curve")


def train_adapter(pairs, settings, out: Path, epochs: float, neighbours: int, glossary: bool) -> str:
    """LoRA on top of the adapter in use, on the corrections, with the prompts inference will build: what
    `nl2sql train --log` does (training/pipeline.py), without its gate and registry."""
    from dataclasses import asdict

    from nl2sql.api import Pipeline
    from nl2sql.model import resolve_adapter
    from nl2sql.training.data import make_examples
    from nl2sql.training.sft import TrainConfig, train
    pipe = Pipeline(settings)
    schema = pipe.schema(None)
    glossaries = {"demo": pipe.glossary(None, schema)} if glossary else {}
    examples = make_examples([{**p, "db": "demo"} for p in pairs], {"demo": schema}, neighbours=neighbours,
                             glossaries={k: v for k, v in glossaries.items() if v})
    cfg = TrainConfig(data="", out=str(out), base=settings.model, epochs=epochs, cache_dir=str(settings.cache_dir),
                      device=settings.device, dtype=settings.dtype, lr=2e-4, batch_size=8, grad_accum=1,
                      save_every=10_000, init_adapter=str(resolve_adapter(settings.adapter, settings.data_dir) or ""),
                      prompt_examples=neighbours)
    train(cfg, [asdict(e) for e in examples], progress=False)
    return str(out)


def score(test, settings, generator=None) -> dict:
    from nl2sql.api import Pipeline
    from nl2sql.evaluate import Case, run_eval
    pipe = Pipeline(settings, generator=generator)
    cases = [Case(r["question"], r["sql"], None, "demo") for r in test]
    knowledge = []
    ask = pipe.ask

    def timed(question, db=None, **kw):
        a = ask(question, db, **kw)
        knowledge.append(a.timings.get("knowledge", 0.0))
        return a
    pipe.ask = timed
    summary = run_eval(cases, pipe, None, progress=False, gold_dialect="sqlite")  # the demo pairs are SQLite SQL
    summary["knowledge_ms_median"] = round(1000 * statistics.median(knowledge), 1) if knowledge else None
    summary["knowledge_ms_max"] = round(1000 * max(knowledge), 1) if knowledge else None
    return summary, pipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--points", default="0,10,25,50,100")
    ap.add_argument("--held-out", type=float, default=1 / 3, help="share of kinds held out (default a third)")
    ap.add_argument("--per-kind", type=int, default=2, help="test questions per held-out kind")
    ap.add_argument("--epochs", type=float, default=3.0, help="training passes over the corrections")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth-adapter", help="adapter directory for the synth configurations")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning_curve"))
    ap.add_argument("--rewordings", action="store_true", help="score questions of already-corrected kinds instead")
    ap.add_argument("--no-baseline", dest="with_baseline", action="store_false",
                    help="--rewordings: skip the runs without retrieval")
    ap.add_argument("--min-overlap", type=float, default=0.5,
                    help="NL2SQL_EXAMPLES_MIN_OVERLAP for retrieval (0: the k nearest always; labelled so)")
    args = ap.parse_args(argv)
    if args.rewordings:
        return rewordings(args)
    from nl2sql.config import Settings
    test, pool, held = split(args.seed, args.held_out, args.per_kind)
    points = [n for n in (int(x) for x in args.points.split(",")) if n <= len(pool)]
    if any(int(x) > len(pool) for x in args.points.split(",")):
        points.append(len(pool))  # "100" becomes every correction there is
    points = sorted(set(points))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"points": []}
    results.update(held_out_kinds=len(held), test_questions=len(test), pool=len(pool), seed=args.seed,
                   per_kind=args.per_kind, epochs=args.epochs)
    print(f"{len(held)} held-out kinds, {len(test)} test questions, {len(pool)} corrections available", flush=True)
    base = Settings.from_env()
    shared_generator = synth_generator = None
    for config in args.configs.split(","):
        mode, glossary = config.split("+")[0], config.endswith("+glossary")
        for n in points:
            if n == 0 and mode in ("train", "both"):
                continue  # nothing to train on: the same as retrieval with an empty log
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                log = tmp / "log.sqlite"
                if mode in ("retrieval", "both", "synth"):
                    log_with(pool[:n], log)
                settings = base.replace(query_log=str(log), glossary="" if glossary else "off",
                                        examples=3 if mode in ("retrieval", "both", "synth") else 0,
                                        examples_min_overlap=args.min_overlap)
                generator = shared_generator if mode == "retrieval" else None
                if mode == "synth":
                    if not args.synth_adapter:
                        raise SystemExit("synth configurations need --synth-adapter DIR (from nl2sql train --synth)")
                    settings = settings.replace(adapter=args.synth_adapter)
                    generator = synth_generator
                if mode in ("train", "both"):
                    settings = settings.replace(adapter=train_adapter(
                        pool[:n], base.replace(glossary="" if glossary else "off"), tmp / "adapter", args.epochs,
                        neighbours=3 if mode == "both" else 0, glossary=glossary))
                    generator = None
                summary, pipe = score(test, settings, generator)
                if mode == "retrieval" and shared_generator is None:
                    shared_generator = pipe.generator  # the shipped adapter: load it once for every retrieval point
                if mode == "synth" and synth_generator is None:
                    synth_generator = pipe.generator
            label = config + (" (k nearest)" if args.min_overlap <= 0 and mode != "train" else "")
            row = {"config": label, "corrections": n, "accuracy": summary["execution_accuracy"],
                   "invalid": summary["invalid_sql_rate"], "median_seconds": summary["median_seconds"],
                   "knowledge_ms_median": summary["knowledge_ms_median"],
                   "knowledge_ms_max": summary["knowledge_ms_max"], "wall_seconds": round(time.perf_counter() - t0)}
            results["points"] = [p for p in results["points"] if (p["config"], p["corrections"]) != (label, n)]
            results["points"].append(row)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(row), flush=True)
    (out / "learning_curve.svg").write_text(svg(results))
    return 0


def rewordings(args) -> int:
    from nl2sql.config import Settings
    from nl2sql.schemas.demo import PAIRS
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    by_kind: dict[str, list] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    logged = [v[0] for v in by_kind.values() if len(v) > 1]
    asked = [v[1] for v in by_kind.values() if len(v) > 1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rewordings.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    base = Settings.from_env()
    adapters = [("shipped", base.adapter)] + ([("synth", args.synth_adapter)] if args.synth_adapter else [])
    for name, adapter in adapters:
        generator = None
        for k in ((0, 3) if args.with_baseline else (3,)):
            with tempfile.TemporaryDirectory() as tmp:
                log = Path(tmp) / "log.sqlite"
                log_with(logged, log)
                settings = base.replace(query_log=str(log), examples=k, adapter=adapter,
                                        examples_min_overlap=args.min_overlap)
                summary, pipe = score(asked, settings, generator)
                generator = pipe.generator
            key = f"{name}, " + ("no retrieval" if not k else "retrieval" + (" (k nearest)" if args.min_overlap <= 0
                                                                             else f" (overlap >= {args.min_overlap})"))
            results[key] = {"accuracy": summary["execution_accuracy"], "questions": len(asked),
                            "invalid": summary["invalid_sql_rate"], "knowledge_ms_median": summary["knowledge_ms_median"]}
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps({key: results[key]}), flush=True)
    return 0


def svg(results: dict, width: int = 700, height: int = 320) -> str:
    """A line per configuration: accuracy on held-out kinds against corrections logged. Plain SVG, no deps."""
    pts = results["points"]
    xmax = max([p["corrections"] for p in pts] + [10])
    left, right, top, bottom = 50, 260, 20, 40
    w, h = width - left - right, height - top - bottom
    x = lambda n: left + w * n / xmax  # noqa: E731
    y = lambda a: top + h * (1 - a)  # noqa: E731
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for a in (0, .2, .4, .6, .8, 1):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(a):.1f}" y2="{y(a):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{int(a * 100)} %</text>')
    for n in sorted({p["corrections"] for p in pts}):
        out.append(f'<text x="{x(n):.1f}" y="{top + h + 16}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">corrections logged '
               f'(from other kinds of question)</text>')
    configs = list(dict.fromkeys(p["config"] for p in pts))
    for i, c in enumerate(configs):
        line = sorted((p["corrections"], p["accuracy"]) for p in pts if p["config"] == c)
        if c.startswith(("train", "both")):  # they start from the shipped adapter: retrieval's point at 0
            zero = [p["accuracy"] for p in pts if p["corrections"] == 0 and
                    p["config"] == ("retrieval+glossary" if c.endswith("+glossary") else "retrieval")]
            line = [(0, zero[0])] + line if zero else line
        colour = colours[i % len(colours)]
        path = " ".join(f"{'M' if k == 0 else 'L'}{x(n):.1f},{y(a):.1f}" for k, (n, a) in enumerate(line))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{x(n):.1f}" cy="{y(a):.1f}" r="3" fill="{colour}"/>' for n, a in line]
        out.append(f'<rect x="{left + w + 12}" y="{top + 14 * i}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{left + w + 26}" y="{top + 14 * i + 9}">{c}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
