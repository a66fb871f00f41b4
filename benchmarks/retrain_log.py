"""Retraining on a team's own logged pairs, end to end on this machine, timed.

Builds a query log of N (question, SQL) pairs on the demo warehouse, then runs what a data team runs:
`nl2sql train --log pairs.jsonl` (check the pairs, split, LoRA SFT from the adapter in use, score the new and the
current adapter on the held-out pairs, register, promote only if at least as good), in a fresh data dir.

The log: the 153 hand-checked demo pairs (schemas/demo_pairs.jsonl), each asked in several wordings, as a
team's log holds the same needs asked by different people. Held-out pairs are split by row, so a held-out
question may be a rewording of a trained one: the held-out accuracy says the retrained adapter learned this
warehouse's conventions, not that it generalises to new kinds of questions.

    python benchmarks/retrain_log.py [--pairs 1000] [--epochs 2] [--out runs/retrain_log]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDINGS = ["{q}", "Please tell me: {q}", "Quick question: {q}", "I need to know: {q}", "Can you find out: {q}",
            "For the weekly report: {q}", "{q} Thanks!", "Could you check: {q}"]


def build_log(n: int, path: Path) -> int:
    pairs = [json.loads(line) for line in (ROOT / "schemas" / "demo_pairs.jsonl").read_text().splitlines() if line]
    rows = []
    for w in WORDINGS:
        for p in pairs:
            q = p["question"] if w.startswith("{q}") else p["question"][0].lower() + p["question"][1:]
            rows.append({"question": w.format(q=q), "sql": p["sql"], "db": "demo"})
    if n > len(rows):
        sys.exit(f"only {len(rows)} distinct pairs can be built; ask for fewer")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=None, help="default: what `nl2sql train` uses")
    ap.add_argument("--out", default="runs/retrain_log")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pairs.jsonl"
    build_log(args.pairs, log)
    env = dict(os.environ, NL2SQL_DATA_DIR=str(out / "data"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "nl2sql.cli", "train", "--log", str(log), "--out", str(out / "run")]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    t0 = time.time()
    with open(out / "train_output.txt", "w") as log_file:  # follow progress with tail -f
        proc = subprocess.run(cmd, env=dict(env, PYTHONUNBUFFERED="1"), cwd=ROOT, text=True, stdout=log_file,
                              stderr=subprocess.STDOUT)
    wall = time.time() - t0
    output = (out / "train_output.txt").read_text()
    if proc.returncode:
        print(output[-4000:])
        return proc.returncode
    card = json.loads((out / "run" / "adapter" / "card.json").read_text())
    figures = {
        "pairs": args.pairs, "train_examples": card["data"]["train_examples"], "held_out": card["data"]["val_examples"],
        "epochs": card["hyperparameters"]["epochs"], "steps": card["training"]["steps"],
        "tokens": card["training"]["tokens"], "training_seconds": card["training"]["wall_seconds"],
        "end_to_end_seconds": round(wall, 1), "held_out_accuracy_new": card["eval"]["validation_accuracy"],
        "held_out_accuracy_current": card["eval"]["previous_adapter_accuracy"],
        "decision": [line for line in output.splitlines() if line.startswith(("promoted", "kept", "registered"))][-1:],
        "cpu_threads": os.cpu_count(),
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
