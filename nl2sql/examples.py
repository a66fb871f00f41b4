"""Verified question/SQL pairs of a database, retrieved into the prompt as examples.

What counts as verified, read from the query log (nl2sql/querylog.py): an analyst's corrected SQL, an answer
rated thumbs-up, and pairs a team imported (`nl2sql examples import pairs.jsonl`, stored in the log as
corrections). A thumbs-down answer without a correction is never an example. Pairs are kept per database (the
log's `db` key, see `querylog.db_key`): another database's pairs are never retrieved.

The index is BM25 over the questions' words (nl2sql/linking.py), rebuilt when the log changes, which a cheap
query on the log tells before every question; so a correction is used by the very next question, with no
retraining. An example whose SQL no longer fits the schema (a column dropped since) is skipped.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import Nl2SqlError


@dataclass(frozen=True)
class Example:
    question: str
    sql: str          # in the model's dialect (SQLite), as the prompt shows SQL
    source: str       # corrected | positive | imported
    entry_id: int


class PairIndex:
    """BM25 over the questions of a list of pairs (anything with .question): inference's example store and
    training's neighbour prompts (training/data.py) retrieve the same way."""

    def __init__(self, pairs: list):
        from .linking import _BM25, words
        self.examples = pairs
        self.bm25 = _BM25([words(e.question) for e in pairs])

    def ranked(self, question: str) -> list[int]:
        """Positions of the pairs sharing a word with `question`, most similar first (newest first on ties)."""
        from .linking import words
        scores = self.bm25.scores(words(question))
        return sorted(scores, key=lambda i: (-scores[i], -i))

    def nearest(self, question: str, k: int, *, exclude: str | None = None, min_overlap: float = 0.0,
                accept=None) -> list:
        """The k pairs most similar to `question`, most similar first: never the pair whose question is
        `exclude` (compared by `question_key`), none sharing less than `min_overlap` of its content words with
        the question (`overlap`), only those `accept(pair)` takes when given."""
        excluded = question_key(exclude) if exclude is not None else None
        out = []
        for i in self.ranked(question) if k > 0 else ():
            e = self.examples[i]
            if excluded is not None and question_key(e.question) == excluded:
                continue
            if min_overlap > 0 and overlap(question, e.question) < min_overlap:
                continue
            if accept is not None and not accept(e):
                continue
            out.append(e)
            if len(out) == k:
                break
        return out


class ExampleStore:
    """The verified pairs of every database in one query log, indexed per database."""

    def __init__(self, log_path):
        self.log_path = Path(log_path)
        self._indexes: dict[str, tuple[tuple, PairIndex]] = {}
        self._lock = threading.Lock()

    def search(self, db_key: str, question: str, k: int, schema=None, exclude_question: str | None = None,
               min_overlap: float = 0.0) -> list[Example]:
        """The k verified pairs of `db_key` most similar to `question`, most similar first. With `schema`, pairs
        whose SQL no longer validates against it are skipped; pairs sharing less than `min_overlap` of their
        content words with the question (`overlap`) too."""
        if k <= 0:
            return []
        index = self._index(db_key)  # one pair per question: the newest verification
        if index is None:
            return []
        return index.nearest(question, k, exclude=exclude_question, min_overlap=min_overlap,
                             accept=None if schema is None else (lambda e: _fits(e.sql, schema)))

    def _index(self, db_key: str) -> PairIndex | None:
        if not self.log_path.exists():
            return None
        try:
            con = sqlite3.connect(f"file:{self.log_path}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error:
            return None
        try:
            # what changes when a pair is added, corrected or rated: checked before every question (~1 ms)
            stamp = con.execute("SELECT COUNT(*), MAX(id), MAX(rated_at), MAX(corrected_at) FROM entries "
                                "WHERE db = ?", (db_key,)).fetchone()
            with self._lock:
                hit = self._indexes.get(db_key)
                if hit is not None and hit[0] == stamp:
                    return hit[1]
            rows = con.execute(
                "SELECT id, question, sql, corrected_sql, rating, dialect, comment FROM entries WHERE db = ? AND "
                "(corrected_sql IS NOT NULL OR (rating = 1 AND sql IS NOT NULL)) ORDER BY id", (db_key,)).fetchall()
        except sqlite3.Error:
            return None  # a log from before these columns, or one being created: no examples this time
        finally:
            con.close()
        latest: dict[str, Example] = {}  # the same question verified twice: the newest verification wins
        for entry_id, question, sql, corrected, rating, dialect, comment in rows:
            source = ("imported" if (comment or "").startswith(IMPORTED) else "corrected") if corrected else "positive"
            text = _model_dialect(corrected or sql, dialect)
            if text:
                latest[question_key(question)] = Example(question, text, source, entry_id)
        index = PairIndex(list(latest.values()))
        with self._lock:
            self._indexes[db_key] = (stamp, index)
        return index


IMPORTED = "imported from "   # the comment an imported pair carries in the log


def question_key(question: str) -> str:
    """A question as pairs are told apart: case and spacing ignored."""
    return " ".join(question.lower().split())
MIN_OVERLAP = 0.5             # see overlap()


def overlap(a: str, b: str) -> float:
    """Share of content words two questions have in common (Jaccard over singular, stop-word-free words).

    An example helps when it is the same kind of question (a rewording, other values); one of another kind makes a
    small model copy the wrong parts of it (README, learning curve): below NL2SQL_EXAMPLES_MIN_OVERLAP it is left out.
    >>> overlap("How many customers live in TX?", "How many customers live in WA?")
    0.5
    """
    from .linking import words
    x, y = set(words(a, stop=True)), set(words(b, stop=True))
    return len(x & y) / len(x | y) if x | y else 0.0


def _model_dialect(sql: str, dialect: str | None) -> str | None:
    from .validate import to_model_dialect
    try:
        return to_model_dialect(sql, dialect)
    except Exception:  # noqa: BLE001 - an unreadable logged SQL is simply not an example
        return None


def _fits(sql: str, schema) -> bool:
    from .validate import validate
    try:
        validate(sql, schema)
        return True
    except Nl2SqlError:
        return False
    except Exception:  # noqa: BLE001 - sqlglot internals on odd SQL: not an example
        return False


def read_pairs(path) -> list[dict]:
    """A pairs file: JSON lines of {question, sql} (other keys ignored). Raises InputError naming the line."""
    import json

    from .errors import InputError
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read the pairs file {path}: {e}.",
                         hint="Give a UTF-8 JSON-lines file of {\"question\": ..., \"sql\": ...}.") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"Line {n} of {path} is not JSON: {e.msg}.",
                             hint="Each line must be one JSON object with question and sql.") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("sql"), str) \
                or not row["question"].strip() or not row["sql"].strip():
            raise InputError(f"Line {n} of {path} needs a non-empty \"question\" and \"sql\".",
                             hint="Each line must be one JSON object with question and sql.")
        pairs.append({"question": " ".join(row["question"].split()), "sql": row["sql"].strip(), "line": n})
    return pairs


def import_pairs(path, *, schema, log, db_key: str, dialect: str | None = None, settings=None
                 ) -> tuple[int, list[str]]:
    """Check every pair of a pairs file against `schema` (the validator that checks model SQL), then write the
    good ones to the query log in one transaction, as corrections of `db_key`. Returns (imported, problems);
    a pair that fails is named by its line and left out, the rest go in together or not at all."""
    from .validate import validate
    pairs = read_pairs(path)
    good, problems = [], []
    for p in pairs:
        try:
            checked = validate(p["sql"], schema, settings=settings)
        except Nl2SqlError as e:
            problems.append(f"line {p['line']}: {getattr(e, 'message', e)}")
            continue
        good.append((p["question"], checked.sql))
    n = log.add_verified(good, db=db_key, dialect=dialect or schema.dialect,
                         comment=IMPORTED + Path(path).name)
    return n, problems
