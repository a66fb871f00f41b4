"""Time per llguidance token mask for the per-schema SQL grammar, and per Binder check, on every Spider schema
and a synthetic 300-table schema (what tests/test_grammar_masks.py and tests/test_binding.py assert, timed).

    python benchmarks/grammar_masks.py [--spider DIR] [--repeat N]

Three sets of figures, each as median / p90 / p99 / max milliseconds:
  - masks at the decision points of tests/test_grammar_masks.py (after SELECT, after COUNT(*), after FROM,
    inside WHERE, after `T1.`, in a nested query, after NOT / IS, after JOIN, ...), each computed on a fresh
    copy of the schema's matcher: the first mask at a state, what a question pays;
  - masks at every token of a whole query per schema, one matcher decoding it as nl2sql/generate.py does;
  - grammar compilation (llguidance.grammar_from + LLMatcher) per schema, once per schema per process;
  - nl2sql.binding.Binder.check on every character prefix of a spread of Spider train gold queries (the
    decoder asks it about each candidate token).
Uses the bundled model's tokenizer (nl2sql.model.bundled_checkpoint); no model weights are loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # the cases live with the tests, so both measure the same thing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)

    def q(p):
        return ms[min(len(ms) - 1, int(p * len(ms)))]
    return (f"{name:<44} n={len(ms):>6}  median {statistics.median(ms):7.2f}  p90 {q(0.90):7.2f}  "
            f"p99 {q(0.99):7.2f}  max {ms[-1]:7.2f} ms")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spider", default=os.environ.get("NL2SQL_SPIDER_DIR", str(ROOT.parent / "shared/data/spider")))
    p.add_argument("--repeat", type=int, default=1, help="measure each case this many times")
    p.add_argument("--gold-every", type=int, default=25, help="Binder: every Nth train gold query")
    a = p.parse_args(argv)
    os.environ["NL2SQL_SPIDER_DIR"] = a.spider

    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from nl2sql.binding import Binder
    from nl2sql.config import Settings
    from nl2sql.grammar import sql_grammar
    from nl2sql.model import bundled_checkpoint
    from test_grammar_masks import SPIDER_SCHEMAS, SYNTHETIC, check_cases, mask_cases, synthetic_cases

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(bundled_checkpoint(Settings.from_env().cache_dir)))
    llg_tok = llguidance.hf.from_tokenizer(tok)
    print(f"tokenizer + llguidance view of it: {time.perf_counter() - t0:.1f} s (once per process)")
    print(f"llguidance {llguidance.__version__ if hasattr(llguidance, '__version__') else '?'}, "
          f"{len(SPIDER_SCHEMAS)} Spider schemas + synthetic ({len(SYNTHETIC.tables)} tables, "
          f"{SYNTHETIC.column_count} columns)")

    schemas = [(s, mask_cases(s)) for s in SPIDER_SCHEMAS.values()] + [(SYNTHETIC, synthetic_cases())]
    case_times, walk_times, compile_times, problems, wide_times = [], [], [], [], []
    worst = (0.0, "")
    for schema, cases in schemas:
        t0 = time.perf_counter()
        spec = llguidance.grammar_from("lark", sql_grammar(schema))
        root = llguidance.LLMatcher(llg_tok, spec)
        compile_times.append(time.perf_counter() - t0)
        for _ in range(a.repeat):
            times: list[float] = []
            problems += check_cases(llg_tok, tok, schema, cases, timings=times)
            case_times += times
            if schema is SYNTHETIC:
                wide_times += times
            if times and max(times) > worst[0]:
                worst = (max(times), schema.name)
        # one whole query, a mask before every token, as generation does
        prefix, completion = cases[-2]
        ids = tok(prefix + completion, add_special_tokens=False)["input_ids"]
        m = root.deep_copy()
        for t in ids:
            t1 = time.perf_counter()
            m.compute_bitmask()
            walk_times.append(time.perf_counter() - t1)
            if not m.consume_token(t):
                problems.append(f"{schema.name}: walk refused at {tok.decode(ids[:ids.index(t)])!r}")
                break

    gold = json.loads((Path(a.spider) / "train_spider.json").read_text())[:: a.gold_every]
    binders = {db: Binder(s) for db, s in SPIDER_SCHEMAS.items()}
    check_times = []
    for g in gold:
        b, q = binders[g["db_id"]], g["query"]
        for cut in range(1, len(q) + 1):
            t1 = time.perf_counter()
            b.check(q[:cut], final=cut == len(q))
            check_times.append(time.perf_counter() - t1)

    print(summary("mask at a decision point (fresh matcher copy)", case_times))
    print(summary("  of which the synthetic 300-table schema", wide_times))
    print(summary("mask per token, decoding a whole query", walk_times))
    print(summary("grammar compile + matcher, per schema", compile_times))
    print(summary(f"Binder.check per prefix ({len(gold)} gold queries)", check_times))
    print(f"slowest schema for a decision-point mask: {worst[1]} ({worst[0] * 1000:.2f} ms)")
    print(f"problems: {len(problems)}")
    for line in problems[:20]:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
