"""`nl2sql train`: data → LoRA SFT → evaluation gate → registry (promote only if at least as good).

On a query log (JSONL of {question, sql, db}, `db` being what ask() takes): pairs are validated against
the live schema, split by database (or by row when there is one database), an adapter is trained, and
both it and the current adapter are scored by execution accuracy on the held-out pairs. The new adapter is
promoted only if it scores at least as well. Every run leaves a card (JSON + Markdown) that is enough to
reproduce it: base model hash, data files with counts and hashes, hyperparameters, git commit, wall time.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from nl2sql import registry
from nl2sql.errors import TrainingError

from .data import PrepReport, make_examples, read_jsonl, spider_examples, split_by_database, write_jsonl


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except Exception:
        return None


def log_examples(path: Path, settings, report: PrepReport):
    """Examples from an exported query log; schemas come from the live databases the pairs name."""
    rows = [r for r in read_jsonl(path) if r.get("label", "positive") != "negative"]
    schemas, glossaries = log_knowledge(rows, settings)
    return make_examples(rows, schemas, report, neighbours=settings.examples, glossaries=glossaries,
                         min_overlap=settings.examples_min_overlap)


def log_knowledge(rows, settings):
    """(db → Schema, db → Glossary) for the databases logged rows name, read live as inference reads them; each
    row's `db` becomes that key ('demo' for the demo warehouse). A database that no longer opens is left out."""
    from nl2sql.api import Pipeline
    pipe = Pipeline(settings)
    schemas, wh_failed = {}, set()
    for r in rows:
        db = r.get("db")
        key = db if db not in (None, "demo") else None
        r["db"] = key or "demo"
        if r["db"] in schemas or r["db"] in wh_failed:
            continue
        try:
            schemas[r["db"]] = pipe.schema(key)
        except Exception:  # a database that no longer exists: its pairs are dropped and counted
            wh_failed.add(r["db"])
    # the prompts inference will build for these databases: their glossary entries and retrieved neighbours
    glossaries = {}
    for db, schema in schemas.items():
        g = pipe.glossary(None if db == "demo" else db, schema)
        if g:
            glossaries[db] = g
    return schemas, glossaries


def gate_score(adapter: str, cases, settings) -> float:
    from nl2sql.api import Pipeline
    from nl2sql.evaluate import run_eval
    pipe = Pipeline(settings.replace(adapter=adapter, repair_attempts=0))  # the adapters' own answers, compared
    return run_eval(cases, pipe, None, progress=False)["execution_accuracy"]


def gate(candidate: str, current: Path | None, cases, settings, score=gate_score):
    """(candidate accuracy, current accuracy) on the held-out cases; (None, None) when there are none."""
    if not cases:
        return None, None
    return score(candidate, cases, settings), score(str(current) if current else "none", cases, settings)


def train_command(args, settings, score=gate_score) -> int:
    """score(adapter, cases, settings) -> accuracy is the gate's measure (tests pass one with a fake model)."""
    from nl2sql.evaluate import Case

    from .sft import TrainConfig, file_sha256, train
    if getattr(args, "dpo", False):  # preference tuning from the log's feedback (training/dpo.py)
        from .dpo import dpo_command
        return dpo_command(args, settings, score)
    synth = getattr(args, "synth", False)
    if not args.log and not args.spider and not synth:
        raise TrainingError("Nothing to train on.", hint="Pass --log PAIRS.jsonl (from `nl2sql log export`), --synth "
                            "(pairs generated from the connected schema and glossary) or --spider DIR.")
    version = registry.new_version(settings.data_dir)
    run_dir = Path(args.out) if args.out else Path("runs") / "train" / version
    run_dir.mkdir(parents=True, exist_ok=True)
    report = PrepReport()
    if synth:  # a new warehouse's first adapter: pairs from its own schema and glossary (training/synth.py)
        from nl2sql.api import Pipeline
        from .synth import synthesize
        pairs = synthesize(Pipeline(settings), getattr(args, "db", None), limit=getattr(args, "synth_pairs", 400))
        if args.log:  # logged pairs too, when there are some
            pairs += read_jsonl(Path(args.log))
        args.log = str(run_dir / "synth_pairs.jsonl")
        Path(args.log).write_text("".join(json.dumps(p) + "\n" for p in pairs))
        print(f"generated {len(pairs)} pairs from the schema and glossary: {args.log}")
    if args.log:
        examples = log_examples(Path(args.log), settings, report)
        source = Path(args.log)
    else:
        examples = spider_examples(Path(args.spider), report)
        source = Path(args.spider) / "train_spider.json"
    print(report.summary())
    if report.read and report.kept < 0.2 * report.read:
        print(f"warning: only {report.kept} of {report.read} pairs are usable; check the log's SQL and databases")
    if len(examples) < 2:
        raise TrainingError(f"Only {len(examples)} usable pair(s) after checking.", hint="Log more questions with SQL that runs.")
    train_ex, val_ex = split_by_database(examples)
    data_hash = write_jsonl(train_ex, run_dir / "train.jsonl.gz")
    write_jsonl(val_ex, run_dir / "val.jsonl.gz")

    cfg = TrainConfig(data=str(run_dir / "train.jsonl.gz"), out=str(run_dir / "adapter"),
                      base=settings.model, epochs=args.epochs or (1.0 if args.log else 2.0),
                      max_examples=args.max_examples, cache_dir=str(settings.cache_dir), device=settings.device,
                      dtype=settings.dtype, lr=2e-4, save_every=25,
                      # one schema per log: a micro-batch of 8 shares its KV cache (training/sft.py)
                      batch_size=8, grad_accum=1,
                      init_adapter=str(_current_adapter(settings) or ""),
                      prompt_examples=settings.examples)
    t0 = time.time()
    meta = train(cfg, [asdict(e) for e in train_ex])

    # the gate: held-out pairs, new adapter vs the one in use now
    cases = [Case(e.question, e.sql, None if e.db == "demo" else e.db, e.db) for e in val_ex] if args.log else []
    current = _current_adapter(settings)
    new_acc, old_acc = gate(cfg.out, current, cases, settings, score)
    card = {
        "version": version, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "base_model": settings.model,
        "base_sha256": meta["base_sha256"], "git_commit": _git_commit(),
        "data": {"source": str(source), "source_sha256": file_sha256(source) if source.is_file() else None,
                 "train_examples": len(train_ex), "val_examples": len(val_ex), "train_sha256": data_hash,
                 "prep": {"read": report.read, "kept": report.kept, "duplicates": report.duplicates,
                          "dropped": dict(report.dropped)}},
        "hyperparameters": meta["config"], "training": {k: meta[k] for k in ("steps", "tokens", "final_loss", "wall_seconds", "device", "dtype")},
        "eval": {"validation_accuracy": new_acc, "previous_adapter_accuracy": old_acc, "previous_adapter": str(current) if current else None},
        "wall_seconds": round(time.time() - t0, 1), "examples": len(train_ex),
    }
    return register_and_promote(Path(cfg.out), card, settings, args)


def register_and_promote(adapter_dir: Path, card: dict, settings, args) -> int:
    """Write the card beside the adapter, register it, and promote it if the gate says it is at least as good."""
    version = card["version"]
    new_acc, old_acc = card["eval"]["validation_accuracy"], card["eval"]["previous_adapter_accuracy"]
    (adapter_dir / "card.json").write_text(json.dumps(card, indent=2))
    (adapter_dir / "card.md").write_text(card_markdown(card))
    registry.register(settings.data_dir, adapter_dir, version)
    better = new_acc is not None and (old_acc is None or new_acc >= old_acc)
    if args.no_promote:
        print(f"registered {version} (not promoted: --no-promote)")
    elif new_acc is None and not args.force:
        # nothing held out (Spider training): never promote an unmeasured adapter
        print(f"registered {version}; not promoted: there were no held-out pairs to measure it on. "
              f"Evaluate it (`nl2sql eval --adapter {adapter_dir}`), then `nl2sql adapters promote {version}`.")
    elif better or args.force:
        registry.promote(settings.data_dir, version)
        print(f"promoted {version}: held-out accuracy {new_acc} vs {old_acc} before")
    else:
        print(f"kept the current adapter: {version} scored {new_acc} on held-out pairs, below {old_acc}. "
              f"Promote it anyway with `nl2sql adapters promote {version}`.")
    return 0


def _current_adapter(settings):
    from nl2sql.model import resolve_adapter
    return resolve_adapter(settings.adapter, settings.data_dir)


def card_markdown(card: dict) -> str:
    hp = card["hyperparameters"]
    return "\n".join([
        f"# Adapter {card['version']}", "",
        f"- base model: {card['base_model']} (sha256 {card['base_sha256']})",
        f"- git commit: {card['git_commit']}", f"- created: {card['created']}",
        f"- data: {card['data']['source']} — {card['data']['train_examples']} train / {card['data']['val_examples']} held-out "
        f"pairs (train sha256 {card['data']['train_sha256'][:16]}…)",
        f"- LoRA r={hp['lora_r']} alpha={hp['lora_alpha']} lr={hp['lr']} epochs={hp['epochs']} seed={hp['seed']}",
        *([f"- DPO: {card['dpo']['pairs']} preference pairs (beta={card['dpo']['beta']}, rpo_alpha={card['dpo']['rpo_alpha']}) "
           f"on top of {card['dpo']['reference_adapter']} (the reference)"] if card.get("dpo") else []),
        f"- held-out execution accuracy: {card['eval']['validation_accuracy']} (previous adapter: {card['eval']['previous_adapter_accuracy']})",
        f"- wall time: {card['wall_seconds']} s", "",
        "Reproduce: `nl2sql train {}--log <source> --epochs {}` at the commit above.".format(
            f"--dpo --beta {card['dpo']['beta']} " if card.get("dpo") else "", hp["epochs"]),
    ]) + "\n"
