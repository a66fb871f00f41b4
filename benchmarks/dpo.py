"""Preference tuning (issue 14): accuracy on held-out kinds of question after SFT only vs SFT + DPO, same feedback.

The learning curve's split (benchmarks/learning_curve.py: a seeded third of the demo pairs' kinds held out, 35
questions). The feedback is N questions of the other kinds, asked of the shipped adapter and logged in a real
query log: a right answer gets a thumbs-up, a wrong one a thumbs-down and the gold SQL as its correction. The log is
exported as `nl2sql log export` does; from it:

    shipped     the shipped adapter, no training
    sft         `nl2sql train --log`'s training on the exported pairs (LoRA on top of the shipped adapter, 1 epoch;
                micro-batches of 4 x 2 accumulated instead of 8, for memory)
    sft+dpo     DPO (training/dpo.py) on the log's preference pairs, on top of the sft adapter (its reference)
    dpo         DPO on top of the shipped adapter

Every configuration answers the held-out questions with the glossary on and no retrieved examples, so only the
weights differ. Training runs in a child process (its peak memory is measured apart from the scoring's).

    NL2SQL_THREADS=1 python benchmarks/dpo.py [--feedback 50] [--configs shipped,sft,sft+dpo,dpo] [--work DIR]
    ... --configs sft+dpo --rpo-alpha 1 --label " (rpo 1)" --work DIR2   # a variant (copy DIR's log and sft/)
Writes benchmarks/results/dpo/results.json (one entry per configuration, kept across runs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_curve import score, split  # noqa: E402


def collect_feedback(pool, settings, log_path: Path) -> dict:
    """The shipped adapter answers the feedback questions; the answers and the analyst's verdicts go in a real log."""
    import sqlglot

    from nl2sql.api import Pipeline
    from nl2sql.evaluate import Case, run_eval
    from nl2sql.querylog import QueryLog
    pipe = Pipeline(settings)
    dialect = pipe.warehouse(None).dialect
    preds = log_path.with_suffix(".predictions.jsonl")
    run_eval([Case(r["question"], r["sql"], None, "demo") for r in pool], pipe, preds, progress=False,
             gold_dialect="sqlite")
    log = QueryLog(log_path)
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    for rec in records:
        entry = log.record(question=rec["question"], db="demo", sql=rec.get("pred"), raw_sql=rec.get("raw"),
                           executed=rec.get("pred") is not None and not rec.get("error"), error=rec.get("error"),
                           dialect=dialect)
        if rec["correct"]:
            log.feedback(entry, rating=1)
        else:
            gold = sqlglot.transpile(rec["gold"], read="sqlite", write=dialect)[0]
            log.feedback(entry, rating=-1, corrected_sql=gold)
    return feedback_summary(preds)


def feedback_summary(preds: Path) -> dict:
    """How the shipped adapter did on the feedback questions (from collect_feedback's predictions file)."""
    records = [json.loads(line) for line in Path(preds).read_text().splitlines()]
    return {"questions": len(records), "right": sum(r["correct"] for r in records),
            "invalid": sum(r.get("pred") is None for r in records),
            "seconds": round(sum(r["seconds"] for r in records))}


def child(module: str, args: list[str]) -> tuple[dict, float, float]:
    """Run a training module in a child process: (its train_meta.json, wall seconds, peak RSS in GB so far)."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", module, *args, "--log-every", "5",
                    "--threads", os.environ.get("NL2SQL_THREADS", "0")], check=True, env=env, cwd=ROOT)
    out = Path(args[args.index("--out") + 1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return json.loads((out / "train_meta.json").read_text()), round(time.perf_counter() - t0, 1), round(peak, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--feedback", type=int, default=50, help="questions of other kinds given feedback (N)")
    ap.add_argument("--configs", default="shipped,sft,sft+dpo,dpo")
    ap.add_argument("--sft-epochs", type=float, default=1.0, help="as `nl2sql train --log` (default 1)")
    ap.add_argument("--dpo-epochs", type=float, default=2.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--rpo-alpha", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0, help="the learning curve's split")
    ap.add_argument("--train-seed", type=int, default=0, help="training's seed (data order, LoRA init)")
    ap.add_argument("--work", help="keep the log, pairs and adapters here (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dpo"))
    ap.add_argument("--label", default="", help="appended to the configurations' names in results.json (a variant)")
    args = ap.parse_args(argv)

    from nl2sql.api import Pipeline
    from nl2sql.config import Settings
    from nl2sql.model import resolve_adapter
    from nl2sql.querylog import QueryLog
    from nl2sql.training.data import make_examples, write_jsonl
    from nl2sql.training.dpo import preference_pairs
    test, pool, held = split(args.seed, 1 / 3, 2)
    feedback = pool[: args.feedback]
    configs = args.configs.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"configs": {}}
    results.update(held_out_kinds=len(held), test_questions=len(test), feedback_questions=len(feedback),
                   seed=args.seed, sft_epochs=args.sft_epochs, dpo_epochs=args.dpo_epochs,
                   threads=os.environ.get("NL2SQL_THREADS"))
    if not args.label:  # a variant's beta and rpo alpha are recorded with its rows
        results.update(beta=args.beta, rpo_alpha=args.rpo_alpha)

    def save(name, row):
        name += args.label
        if results_path.exists():  # rows another run wrote meanwhile are kept
            results["configs"] = {**json.loads(results_path.read_text())["configs"], **results["configs"]}
        results["configs"][name] = {**row, "beta": args.beta, "rpo_alpha": args.rpo_alpha} if "dpo" in name else row
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: row}), flush=True)

    base = Settings.from_env().replace(examples=0)  # glossary on (the default), no retrieved examples
    shipped = str(resolve_adapter(base.adapter, base.data_dir))
    work = Path(args.work or tempfile.mkdtemp(prefix="dpo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(held)} held-out kinds, {len(test)} test questions, {len(feedback)} feedback questions; work in {work}",
          flush=True)

    log_path = work / "log.sqlite"
    if not log_path.exists():
        collect_feedback(feedback, base.replace(adapter=shipped), log_path)
    results["feedback"] = feedback_summary(log_path.with_suffix(".predictions.jsonl"))
    print(json.dumps({"feedback": results["feedback"]}), flush=True)
    exported = work / "pairs.jsonl"
    QueryLog(log_path).export_training(exported)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    pipe = Pipeline(base)
    schema = pipe.schema(None)
    glossary = pipe.glossary(None, schema)
    glossaries = {"demo": glossary} if glossary else {}
    pairs, report = preference_pairs(rows, {"demo": schema}, glossaries)
    print(report.summary(), flush=True)
    results["pairs"] = report.as_dict()
    sft_examples = make_examples([r for r in rows if r["label"] != "negative"], {"demo": schema}, glossaries=glossaries)
    write_jsonl(sft_examples, work / "sft.jsonl.gz")
    write_jsonl(pairs, work / "dpo.jsonl.gz")
    common = ["--seed", str(args.train_seed), "--base", base.model, "--cache-dir", str(base.cache_dir), "--device", base.device, "--dtype", base.dtype]

    adapters = {"shipped": shipped}

    def adapter_for(name: str) -> str:
        """The configuration's adapter, trained (in a child process) the first time it is needed."""
        if name in adapters:
            return adapters[name]
        run = work / name.replace("+", "_")
        if name == "sft" and not (run / "train_meta.json").exists():
            meta, secs, peak = child("nl2sql.training.sft", ["--data", str(work / "sft.jsonl.gz"), "--out", str(run),
                                     "--init-adapter", shipped, "--epochs", str(args.sft_epochs), "--lr", "2e-4",
                                     "--batch-size", "4", "--grad-accum", "2", "--save-every", "10000", *common])
            results["sft_training"] = {"examples": meta["examples"], "steps": meta["steps"], "seconds": secs,
                                       "peak_rss_gb": peak}
        elif name != "sft" and not (run / "train_meta.json").exists():
            reference = adapter_for("sft" if name == "sft+dpo" else "shipped")
            meta, secs, _ = child("nl2sql.training.dpo", ["--data", str(work / "dpo.jsonl.gz"), "--out", str(run),
                                  "--init-adapter", reference, "--beta", str(args.beta),
                                  "--rpo-alpha", str(args.rpo_alpha), "--epochs", str(args.dpo_epochs), *common])
            results[f"{name}_training"] = {"pairs": meta["pairs"], "steps": meta["steps"], "seconds": secs,
                                           "peak_rss_gb": meta["peak_rss_gb"], "final_loss": meta["final_loss"],
                                           "final_margin": meta["final_margin"], "loss_curve": meta["loss_curve"],
                                           "margin_curve": meta["margin_curve"]}
        adapters[name] = str(run)
        return adapters[name]

    for name in configs:
        adapter = adapter_for(name)
        t0 = time.perf_counter()
        summary, _ = score(test, base.replace(adapter=adapter))
        save(name, {"accuracy": summary["execution_accuracy"], "invalid": summary["invalid_sql_rate"],
                    "median_seconds": summary["median_seconds"], "score_seconds": round(time.perf_counter() - t0),
                    "training": results.get(f"{name}_training")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
