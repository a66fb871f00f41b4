"""How many Spider gold queries the per-schema grammar accepts (target: >= 99 %), and which fail.

    python benchmarks/grammar_coverage.py [SPIDER_DIR] [--limit N]
"""
import argparse
import collections
import json
import sys
import time
from pathlib import Path

from nl2sql.grammar import parses, sql_grammar
from nl2sql.schema import from_spider


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spider", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/spider"))
    p.add_argument("--file", default="train_spider.json")
    p.add_argument("--limit", type=int, default=0)
    a = p.parse_args(argv)
    spider = Path(a.spider)
    schemas = {e["db_id"]: from_spider(e) for e in json.loads((spider / "tables.json").read_text())}
    gold = json.loads((spider / a.file).read_text())
    if a.limit:
        gold = gold[: a.limit]
    t0 = time.time()
    failed = []
    for ex in gold:
        if not parses(sql_grammar(schemas[ex["db_id"]]), ex["query"]):
            failed.append(ex)
    ok = len(gold) - len(failed)
    print(f"{a.file}: {ok}/{len(gold)} gold queries parse under their schema's grammar "
          f"({100 * ok / len(gold):.2f} %), {time.time() - t0:.0f} s")
    for ex in failed:
        print(f"  FAIL [{ex['db_id']}] {ex['query']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
