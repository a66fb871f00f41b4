"""Training examples: (prompt, SQL) pairs built with the same prompt function inference uses.

Sources: Spider's train_spider.json + tables.json, and any JSONL of {question, sql, db} pairs a team
exports from its query log. Pairs are deduplicated; SQL that does not parse or validate against its schema
is dropped with the reason counted. Validation is split by database, never by row.
"""
from __future__ import annotations

import collections
import gzip
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nl2sql.errors import Nl2SqlError, TrainingError
from nl2sql.examples import question_key
from nl2sql.prompt import SQL_DIALECT, build_prompt
from nl2sql.schema import Schema, from_spider
from nl2sql.validate import validate


@dataclass(frozen=True)
class Example:
    db: str
    question: str
    sql: str        # normalised target SQL, in the model's dialect
    prompt: str
    weight: float = 1.0  # negative examples (thumbs-down) are kept elsewhere; SFT uses positives


@dataclass
class PrepReport:
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)

    def summary(self) -> str:
        lines = [f"read {self.read}, kept {self.kept}, duplicates {self.duplicates}, dropped {sum(self.dropped.values())}"]
        lines += [f"  {n:5d}  {why}" for why, n in self.dropped.most_common(10)]
        return "\n".join(lines)


def _reason(err: Exception) -> str:
    msg = getattr(err, "message", str(err))
    return msg.split(":")[0][:80]


def make_examples(pairs, schemas: dict[str, Schema], report: PrepReport | None = None, *, neighbours: int = 0,
                  glossaries: dict | None = None, min_overlap: float = 0.0) -> list[Example]:
    """pairs: iterable of dicts {question, sql, db}; schemas: db → Schema. Returns kept examples.

    Prompts are built as inference builds them (nl2sql/api.py): with `neighbours` k, between 0 and k of the
    most similar other pairs of the same database (never the pair itself; none below `min_overlap`, as
    NL2SQL_EXAMPLES_MIN_OVERLAP at inference) as examples, so the model learns to use retrieved examples and
    to do without; with `glossaries` (db → nl2sql.glossary.Glossary), the entries each question mentions."""
    report = report if report is not None else PrepReport()
    seen = set()
    followups: set[int] = set()
    out = []
    for p in pairs:
        report.read += 1
        q, sql, db = (p.get("question") or "").strip(), (p.get("sql") or p.get("query") or "").strip(), p.get("db") or p.get("db_id")
        if not q or not sql:
            report.dropped["missing question or SQL"] += 1
            continue
        schema = schemas.get(db)
        if schema is None:
            report.dropped[f"unknown database {db!r}"[:80]] += 1
            continue
        try:
            target = validate(sql, schema, dialect=SQL_DIALECT).sql
        except Nl2SqlError as e:
            report.dropped[_reason(e)] += 1
            continue
        key = (db, question_key(q), target)
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        # a follow-up keeps the (question, SQL) pairs it was asked after, so training sees the prompt inference saw
        context = [tuple(c) for c in p.get("context") or () if isinstance(c, (list, tuple)) and len(c) == 2]
        if context:
            followups.add(len(out))
        out.append(Example(db, q, target, build_prompt(schema, q, context)))
    report.kept = len(out)
    if neighbours > 0 or glossaries:
        out = with_knowledge(out, schemas, neighbours, glossaries or {}, skip=followups, min_overlap=min_overlap)
    return out


def with_knowledge(examples: list[Example], schemas: dict[str, Schema], neighbours: int, glossaries: dict,
                   skip=frozenset(), min_overlap: float = 0.0) -> list[Example]:
    """The examples with prompts that carry retrieved neighbours and glossary entries (see make_examples);
    those at positions in `skip` (follow-ups, whose prompt already shows the pairs asked before) keep theirs."""
    from dataclasses import replace

    from nl2sql.examples import PairIndex
    from nl2sql.glossary import render
    by_db: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in enumerate(examples):
        by_db[e.db].append(i)
    out = list(examples)
    for db, members in by_db.items():
        pairs = [examples[i] for i in members]
        index = PairIndex(pairs)
        glossary = glossaries.get(db)
        for j, e in enumerate(pairs):
            if members[j] in skip:
                continue
            # 0..k neighbours, fixed per question: inference meets both an empty log and a full one
            want = random.Random(question_key(e.question)).randint(0, neighbours) if neighbours > 0 else 0
            near = [(n.question, n.sql) for n in index.nearest(e.question, want, exclude=e.question,
                                                                min_overlap=min_overlap)]
            notes = render(glossary.relevant(e.question)) if glossary else ""
            out[members[j]] = replace(e, prompt=build_prompt(schemas[db], e.question, near[::-1], notes=notes))
    return out


def spider_examples(spider_dir: Path, report: PrepReport | None = None, files=("train_spider.json",)) -> list[Example]:
    spider_dir = Path(spider_dir)
    schemas = {e["db_id"]: from_spider(e) for e in json.loads((spider_dir / "tables.json").read_text())}
    pairs = []
    for f in files:
        pairs += json.loads((spider_dir / f).read_text())
    return make_examples(pairs, schemas, report)


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL of pairs; a malformed line is a TrainingError naming the line."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"No such file: {path}.", hint="Export one with `nl2sql log export` or give a JSONL path.")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainingError(f"{path}:{n} is not valid JSON ({e.msg}).",
                                    hint="Each line must be one JSON object with question, sql and db.") from None
            if not isinstance(row, dict):
                raise TrainingError(f"{path}:{n} is not a JSON object.", hint="Each line must be {question, sql, db}.")
            rows.append(row)
    if not rows:
        raise TrainingError(f"{path} holds no pairs.", hint="Log some questions first, or pick another file.")
    return rows


def split_by_database(examples: list[Example], val_fraction: float = 0.1, seed: int = 0):
    """(train, val) with whole databases on one side, so validation measures unseen schemas."""
    dbs = sorted({e.db for e in examples})
    if len(dbs) < 2:  # one database: fall back to a row split, said so in the card
        rnd = random.Random(seed)
        idx = list(range(len(examples)))
        rnd.shuffle(idx)
        n_val = max(1, int(len(examples) * val_fraction)) if len(examples) > 1 else 0
        val_idx = set(idx[:n_val])
        return [e for i, e in enumerate(examples) if i not in val_idx], [examples[i] for i in sorted(val_idx)]
    rnd = random.Random(seed)
    rnd.shuffle(dbs)
    n_val = max(1, round(len(dbs) * val_fraction))
    val_dbs = set(dbs[:n_val])
    return [e for e in examples if e.db not in val_dbs], [e for e in examples if e.db in val_dbs]


def write_jsonl(examples: list[Example], path: Path) -> str:
    """Write examples (gzip if .gz); returns the sha256 of the content for the adapter card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples).encode()
    tmp = path.with_suffix(path.suffix + ".tmp")
    if path.suffix == ".gz":
        tmp.write_bytes(gzip.compress(data, mtime=0))
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load_examples(path: Path) -> list[Example]:
    return [Example(**{k: r[k] for k in ("db", "question", "sql", "prompt") if k in r}) for r in read_jsonl(path)]
