"""Value linking: find the database's own spelling of the values a question mentions.

A question says 'french singers' or 'cafe'; the database stores 'France' and 'Café'. `ValueIndex` holds the
distinct values of the text columns (read through the guarded executor, capped per column, within a time
budget, cached on disk per schema fingerprint); `link_values` matches the question's words, n-grams and
quoted phrases against them, case- and accent-insensitively and fuzzily; `format_hints` renders the matches
as one prompt line.

>>> index = ValueIndex.from_values("shop", {("singer", "country"): ["France", "United States"],
...                                        ("shop", "name"): ["Café Bleu", "O'Hara's"]})
>>> hints = link_values("How many French singers went to the cafe bleu or o'hara's?", index)
>>> print(format_hints(hints))
-- Values: shop.name = 'Café Bleu'; shop.name = 'O''Hara''s'; singer.country = 'France'
>>> link_values("How many singers are there?", index)
[]
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz, process

# What a build reads. Defaults chosen so that the index of a large warehouse is ready within the budget and
# stays small in memory (about 100k values for 20 text columns).
PER_COLUMN = 5000          # most distinct values read per column
MAX_VALUE_CHARS = 60       # longer values (descriptions, addresses) are skipped: rarely compared with '='
MAX_VALUES = 200_000       # most values in one index (about 3 s to prepare on one core); later columns are skipped
BUILD_BUDGET_S = 5.0       # wall-clock budget of one build; columns not reached by then are left for later
# Matching thresholds, tuned on Spider *train* questions (benchmarks/value_linking.py --tune).
MIN_SCORE = 85.0           # a hint needs at least this score (0-100)
MAX_HINTS = 6
PER_COLUMN_HINTS = 2
SCHEMA_WORD_PENALTY = 10.0  # a one-word value that is also a word of a table or column name
MAX_CANDIDATES = 200       # values scored in full per question (the best covered by the question's words)

CACHE_VERSION = 1
# Column types whose values are words (the idea of schema._TEXT_TYPES; SQLite columns may have no type).
_TEXT_TYPES = ("CHAR", "TEXT", "STRING", "CLOB", "ENUM", "NAME")
# The same class of characters prompt.py strips from database text: values are untrusted data.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                      r"\ufff9-\ufffb\U000e0000-\U000e007f]+")
_WORD = re.compile(r"[^\W_]+")  # words: letters and digits (underscores separate)
# A quoted phrase: quotes at word boundaries, so the apostrophes of "O'Hara" or "singers' names" do not open one.
_QUOTED = re.compile(r"""(?:^|(?<=[\s(\[,:;]))(?:"([^"]+)"|'([^']+)'|“([^”]+)”|‘([^’]+)’|`([^`]+)`)(?=$|[\s)\].,:;?!])""")

# English function words and the verbs and nouns of questions about data: never a match on their own.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not of off on once only or other our ours
out over own same she should so some such than that the their theirs them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you your
yours also ever every per via whose
show shows list lists give find return returns display tell count number numbers name names many much total
average avg maximum minimum max min sum least greatest highest lowest largest smallest first last top bottom
order ordered sort sorted descending ascending each different distinct unique
""".split())


@dataclass(frozen=True)
class ValueHint:
    """A database value the question seems to mention: table.column = value, with the words that matched."""
    table: str
    column: str
    value: str
    score: float          # 0-100; 100 = the same words up to case and accents
    matched_text: str     # the question's words that matched


def normalize(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded, punctuation as spaces.

    >>> normalize("  Café  ,  Ph.D. ")
    'cafe ph d'
    """
    text = str(text)
    if text.isascii():  # most values: nothing to decompose
        return " ".join(_WORD.findall(text.lower()))
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return " ".join(_WORD.findall(text))


def _skeleton(token: str) -> str:
    """The first letter and the consonants after it ('french' -> 'frnch', 'france' -> 'frnc'): inflected forms
    and demonyms keep their stem's consonants where the vowels change."""
    return token[:1] + "".join(ch for ch in token[1:] if ch not in "aeiouy")


# Endings that turn one form of a word into another ('herb'/'herbs', 'canada'/'canadian', 'italy'/'italian'):
# two words that share a stem of 4+ letters and differ only by these are the same word for linking.
_WORD_ENDINGS = frozenset(("", "s", "es", "e", "a", "o", "y", "i", "ies", "ian", "ians", "an", "ans", "n", "ese",
                           "ish", "ic", "ed", "ing", "er", "ers", "ern"))
# The same on consonant skeletons, for stems whose vowels change ('frnch'/'frnc', 'spnsh'/'spn', 'chns'/'chn').
_SKELETON_ENDINGS = frozenset(("", "s", "n", "ns", "sh", "h", "ch", "c", "r", "rn", "ng"))
INFLECTION_SCORE = 92.0    # same stem, different ending
ABBREVIATION_SCORE = 90.0  # a value word that starts a question word ('comp' for 'computer'), in multi-word values
TRANSPOSITION_SCORE = 90.0
INITIALS_SCORE = 88.0      # 'LA' for 'Los Angeles': an all-capitals question word spelling a value's initials
TYPO_PENALTY = 4.0         # fuzz.ratio minus this, for words alike by edit distance only


def _token_similarity(q: str, v: str) -> float:
    """How alike one question word and one value word are, 0-100.

    Exact > inflection ('herb'/'herbs', 'canadian'/'canada', 'french'/'france') > typo (fuzz.ratio less a
    penalty). Short words and numbers must match exactly, and the first letter must agree.

    >>> [round(_token_similarity(q, v)) for q, v in [("french", "france"), ("italian", "italy"), ("cafe", "cafes")]]
    [92, 92, 92]
    >>> round(max(_token_similarity(q, v) for q, v in [("student", "studio"), ("state", "statistics"), ("category", "cat")]))
    58
    """
    if q == v:
        return 100.0
    if len(q) < 3 or len(v) < 3 or q.isdigit() or v.isdigit() or q[0] != v[0]:
        return 0.0
    common = len(os.path.commonprefix([q, v]))
    if common >= 3 and q[common:] in _WORD_ENDINGS and v[common:] in _WORD_ENDINGS and min(len(q), len(v)) >= 4:
        return INFLECTION_SCORE
    sq, sv = _skeleton(q), _skeleton(v)
    c = len(os.path.commonprefix([sq, sv]))
    if (c >= 3 and min(len(q), len(v)) >= 5 and sq != sv and common >= 2 and fuzz.ratio(q, v) >= 65
            and sq[c:] in _SKELETON_ENDINGS and sv[c:] in _SKELETON_ENDINGS):
        return INFLECTION_SCORE
    if len(q) == len(v) >= 5 and sorted(q) == sorted(v):  # letters swapped: 'goergia'
        return TRANSPOSITION_SCORE
    score = fuzz.ratio(q, v) - TYPO_PENALTY
    return score if min(len(q), len(v)) >= 5 else score - TYPO_PENALTY  # a typo in a short word is a new word


# --- the index -----------------------------------------------------------------------------------------

@dataclass
class ValueIndex:
    """Distinct values of a database's text columns, with the lookup structures `link_values` needs."""
    database: str
    fingerprint: str
    values: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (table, column) -> values
    capped: frozenset = frozenset()      # columns with more distinct values than were read
    unvisited: tuple = ()                # columns the time budget did not reach (the index is partial)
    failed: tuple = ()                   # (table, column, reason): queries that errored or timed out
    build_seconds: float = 0.0
    from_cache: str = ""                 # "", "memory" or "disk"
    schema_words: frozenset = frozenset()  # words of the table and column names (see SCHEMA_WORD_PENALTY)

    def __post_init__(self):
        self._prepare()

    @property
    def partial(self) -> bool:
        """True while some columns were not read because the build ran out of time."""
        return bool(self.unvisited)

    @property
    def value_count(self) -> int:
        return sum(len(v) for v in self.values.values())

    @classmethod
    def from_values(cls, database: str, values: dict, *, fingerprint: str = "", schema=None) -> "ValueIndex":
        """An index over given values ({(table, column): [values]}): for tests, benchmarks and custom sources."""
        return cls(database, fingerprint, {k: [str(x) for x in v] for k, v in values.items()},
                   schema_words=_schema_words(schema) if schema is not None else frozenset())

    # lookup structures, rebuilt after loading (never stored)
    def _prepare(self) -> None:
        by_norm: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for (table, column), vals in self.values.items():
            for v in vals:
                n = normalize(v)
                if n:
                    by_norm[n].append((table, column, v))
        self._norms = list(by_norm)
        self._entries = [by_norm[n] for n in self._norms]
        self._norm_ids = {n: i for i, n in enumerate(self._norms)}
        self._tokens = [n.split() for n in self._norms]
        # words of a value that a question word can anchor (lone letters cannot, see link_values)
        self._anchors = np.array([sum(1 for t in toks if len(t) > 1) or 1 for toks in self._tokens], dtype=np.float32)
        self._posting_arrays: dict[str, np.ndarray] = {}
        self._name_words = {key: (set(normalize(key[1]).split()), set(normalize(key[0]).split()))
                            for key in self.values}
        postings: dict[str, list[int]] = defaultdict(list)
        for i, toks in enumerate(self._tokens):
            for t in set(toks):
                postings[t].append(i)
        self._postings = dict(postings)
        self._vocab = sorted(self._postings)
        by_first: dict[str, list[str]] = defaultdict(list)
        for t in self._vocab:
            if len(t) >= 3 and not t.isdigit():
                by_first[t[0]].append(t)
        self._by_first = dict(by_first)
        skel: dict[str, list[str]] = defaultdict(list)
        for t in self._vocab:
            if len(t) >= 4 and not t.isdigit():
                skel[_skeleton(t)].append(t)
        self._skel = dict(skel)
        self._skel_sorted = sorted(self._skel)
        initials: dict[str, list[int]] = defaultdict(list)
        for i, toks in enumerate(self._tokens):
            if 2 <= len(toks) <= 4 and all(t.isalpha() for t in toks):
                initials["".join(t[0] for t in toks)].append(i)
        self._initials = dict(initials)

    def _posting_array(self, token: str) -> np.ndarray:
        arr = self._posting_arrays.get(token)
        if arr is None:
            arr = self._posting_arrays[token] = np.array(self._postings.get(token, ()), dtype=np.int64)
        return arr

    def _similar_tokens(self, q: str) -> dict[str, float]:
        """Value words like the question word q, with their similarity (see _token_similarity)."""
        found = {}
        if q in self._postings:
            found[q] = 100.0
        if len(q) < 3 or q.isdigit():
            return found
        pool = set()
        # typos: fuzzy over the words sharing q's first letter
        bucket = self._by_first.get(q[0], ())
        for t, _s, _ in process.extract(q, bucket, scorer=fuzz.ratio, score_cutoff=75, limit=20):
            pool.add(t)
        # abbreviations and inflections: value words that are prefixes of q, or that q is a prefix of
        for i in range(3, len(q)):
            if q[:i] in self._postings:
                pool.add(q[:i])
        lo = bisect.bisect_left(self._vocab, q[:4] if len(q) >= 4 else q)
        stem = q[:4] if len(q) >= 4 else q
        for t in self._vocab[lo:lo + 200]:
            if not t.startswith(stem):
                break
            pool.add(t)
        # demonyms and vowel changes: the same consonant skeleton, one a prefix of the other
        sq = _skeleton(q)
        if len(sq) >= 3:
            for i in range(3, len(sq) + 1):
                pool.update(self._skel.get(sq[:i], ()))
            lo = bisect.bisect_left(self._skel_sorted, sq)
            for s in self._skel_sorted[lo:lo + 50]:
                if not s.startswith(sq):
                    break
                pool.update(self._skel[s])
        for t in pool:
            if t != q:
                s = _token_similarity(q, t)
                if s >= 75:
                    found[t] = s
        return found

    # --- persistence ---
    def to_json(self) -> dict:
        return {"version": CACHE_VERSION, "database": self.database, "fingerprint": self.fingerprint,
                "columns": [{"table": t, "column": c, "values": v, "capped": (t, c) in self.capped}
                            for (t, c), v in self.values.items()],
                "unvisited": [list(x) for x in self.unvisited], "failed": [list(x) for x in self.failed],
                "build_seconds": self.build_seconds, "schema_words": sorted(self.schema_words)}

    @classmethod
    def from_json(cls, d: dict) -> "ValueIndex":
        return cls(d["database"], d["fingerprint"],
                   {(c["table"], c["column"]): list(c["values"]) for c in d["columns"]},
                   frozenset((c["table"], c["column"]) for c in d["columns"] if c.get("capped")),
                   tuple(tuple(x) for x in d.get("unvisited", ())), tuple(tuple(x) for x in d.get("failed", ())),
                   float(d.get("build_seconds", 0.0)), schema_words=frozenset(d.get("schema_words", ())))

    # --- building from a live database ---
    @classmethod
    def build(cls, warehouse, schema, settings, *, budget_s: float = BUILD_BUDGET_S, per_column: int = PER_COLUMN,
              max_value_chars: int = MAX_VALUE_CHARS, max_values: int = MAX_VALUES, use_cache: bool = True,
              resume: bool = False) -> "ValueIndex":
        """The value index of `warehouse`, from memory, the disk cache, or the database.

        Reads `SELECT DISTINCT col ... LIMIT per_column+1` for each text column through the guarded executor,
        each query stopped at the budget's remaining time; when the budget runs out, the remaining columns are
        recorded in `unvisited` (`partial` is True). A partial index found on disk (a new process) is completed
        within a new budget; one already in memory is returned as it is unless `resume=True`, so that calling
        build() for every question costs at most one budget per process.
        """
        key = _cache_key(warehouse.display_name, schema.fingerprint(), per_column, max_value_chars, max_values)
        path = Path(settings.cache_dir) / "values" / f"{key}.json"
        cached = None
        if use_cache:
            with _MEMORY_LOCK:
                cached = _MEMORY.get(key)
            if cached is not None and not (cached.partial and resume):
                cached.from_cache = "memory"
                return cached
            if cached is None:
                cached = _read_cache(path)
                if cached is not None and not cached.partial:
                    cached.from_cache = "disk"
                    with _MEMORY_LOCK:
                        _MEMORY[key] = cached
                    return cached
        t0 = time.perf_counter()
        if cached is not None:  # a partial index: read the columns it did not reach
            values, capped, failed = dict(cached.values), set(cached.capped), list(cached.failed)
            todo = [tuple(c) for c in cached.unvisited]
        else:
            values, capped, failed = {}, set(), []
            todo = text_columns(schema)
        unvisited = []
        total = sum(len(v) for v in values.values())
        for table, column in todo:
            remaining = budget_s - (time.perf_counter() - t0)
            if remaining <= 0:
                unvisited.append((table, column))
                continue
            if total >= max_values:  # the in-memory structures grow with the values: bound them too
                failed.append((table, column, f"not read: the index already holds {max_values:,} values"))
                continue
            try:
                vals, was_capped = _read_column(warehouse, settings, table, column, per_column, max_value_chars,
                                                timeout=max(0.1, min(remaining, settings.statement_timeout)))
            except Exception as e:  # a column we cannot read (permissions, timeout, odd type) is left out
                failed.append((table, column, f"{type(e).__name__}: {str(e)[:120]}"))
                continue
            if vals:
                values[(table, column)] = vals
                total += len(vals)
            if was_capped:
                capped.add((table, column))
        index = cls(warehouse.display_name, schema.fingerprint(), values, frozenset(capped), tuple(unvisited),
                    tuple(failed), time.perf_counter() - t0 + (cached.build_seconds if cached else 0.0),
                    schema_words=_schema_words(schema))
        if use_cache:
            _write_cache(path, index)
            with _MEMORY_LOCK:
                _MEMORY[key] = index
        return index


_MEMORY: dict[str, ValueIndex] = {}
_MEMORY_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget the in-memory indexes (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()


def _schema_words(schema) -> frozenset:
    """The words of a schema's table and column names ('student_id' -> 'student', 'id'), singular too."""
    words = set()
    for t in schema.tables:
        for name in (t.name, *(c.name for c in t.columns)):
            for w in normalize(re.sub(r"([a-z])([A-Z])", r"\1 \2", name)).split():
                words.add(w)
                words.add(_singular(w))
    return frozenset(words)


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def text_columns(schema) -> list[tuple[str, str]]:
    """(table, column) of every column whose values are text: by type name, or untyped (SQLite; SQLAlchemy
    reports those as NULL)."""
    return [(t.name, c.name) for t in schema.tables for c in t.columns
            if c.type in ("", "NULL") or any(k in c.type.upper() for k in _TEXT_TYPES)]


def column_query(table: str, column: str, dialect: str, *, per_column: int = PER_COLUMN,
                 max_chars: int = MAX_VALUE_CHARS) -> str:
    """The SELECT that reads one column's distinct values (one more than the cap, to know it was capped).

    >>> column_query("my table", "Name", "mysql", per_column=10)
    'SELECT DISTINCT `Name` FROM `my table` WHERE NOT `Name` IS NULL AND CHAR_LENGTH(CAST(`Name` AS CHAR)) <= 60 LIMIT 11'
    """
    from sqlglot import exp
    col = exp.column(column, quoted=True)
    as_text = exp.cast(col.copy(), "TEXT")
    return (exp.select(col).distinct().from_(exp.table_(table, quoted=True))
            .where(exp.and_(col.copy().is_(exp.null()).not_(), exp.Length(this=as_text) <= max_chars))
            .limit(per_column + 1).sql(dialect=dialect))


def _read_column(warehouse, settings, table, column, per_column, max_chars, *, timeout):
    from .executor import run_checked
    sql = column_query(table, column, warehouse.dialect, per_column=per_column, max_chars=max_chars)
    limited = settings.replace(row_limit=per_column + 1, statement_timeout=timeout)
    df = run_checked(warehouse, sql, limited).df
    out = []
    for v in df.iloc[:, 0].tolist() if len(df.columns) else []:
        # numbers in an untyped SQLite column are not text: a hint would quote them ('1970' is not 1970 there)
        if isinstance(v, str) and v.strip() and len(v) <= max_chars:
            out.append(v)
    return out[:per_column], len(out) > per_column


def _cache_key(database: str, fingerprint: str, per_column: int, max_chars: int, max_values: int) -> str:
    raw = json.dumps([CACHE_VERSION, database, fingerprint, per_column, max_chars, max_values])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> ValueIndex | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("version") != CACHE_VERSION:
            return None
        index = ValueIndex.from_json(d)
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: rebuild
        return None
    return index


def _write_cache(path: Path, index: ValueIndex) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".values-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index.to_json(), f, ensure_ascii=False)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError:  # a read-only cache directory costs a rebuild next time, nothing else
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


# --- linking a question --------------------------------------------------------------------------------

def link_values(question: str, index: ValueIndex, *, limit: int = MAX_HINTS, per_column: int = PER_COLUMN_HINTS,
                min_score: float = MIN_SCORE) -> list[ValueHint]:
    """The values of `index` the question most likely mentions, best first (at most `limit`, `per_column` a column)."""
    if not index._norms or not question:
        return []
    # question words, each normalised alone so that a match maps back to the question's own text
    words = [("".join(normalize(m.group()).split()), m.start(), m.end()) for m in _WORD.finditer(question)]
    qtokens = [w for w, _, _ in words]
    n = len(qtokens)
    # question word -> similar value words
    sims: list[dict[str, float]] = []
    for t in qtokens:
        sims.append({} if t in STOPWORDS else index._similar_tokens(t))
    # candidate values: every value containing a similar word (or a stopword, when exact). The summed
    # similarity of a value's touched words ranks them: in a large index a common word touches thousands of
    # values, and only the best covered can be spelled by the question.
    touched: dict[str, list[tuple[int, float]]] = defaultdict(list)  # value word -> (question position, similarity)
    cover = np.zeros(len(index._norms), dtype=np.float32)
    for pos, t in enumerate(qtokens):
        original = question[words[pos][1]:words[pos][2]]
        if len(t) == 1 and not (original.isupper() and pos > 0):
            continue  # a lone letter is a value only when written as one: 'grade A', not 'a' or 'I'
        hits = dict(sims[pos])
        if t in STOPWORDS and t in index._postings:
            hits[t] = 100.0
        if len(t) >= 4 and t not in STOPWORDS:  # value words that abbreviate this one ('comp' for 'computer')
            hits.update((t[:i], ABBREVIATION_SCORE) for i in range(3, len(t))
                        if t[:i] in index._postings and t[:i] not in hits)
        for vt, score in hits.items():
            touched[vt].append((pos, score))
            cover[index._posting_array(vt)] += score  # a value lists each of its words once
    cover /= index._anchors
    chosen = np.flatnonzero(cover >= 0.75 * min_score)
    if len(chosen) > MAX_CANDIDATES:
        chosen = chosen[np.argsort(-cover[chosen], kind="stable")[:MAX_CANDIDATES]]
    cand: dict[int, list] = {}  # value id -> (question position, value word, similarity); position -1: quoted
    for vid in chosen.tolist():
        cand[vid] = [(pos, vt, score) for vt in set(index._tokens[vid]) for pos, score in touched.get(vt, ())]
    quoted_text = {}
    for m in _QUOTED.finditer(question):
        text = next(g for g in m.groups() if g)
        if normalize(text):
            quoted_text.setdefault(normalize(text), text)
    quoted = list(quoted_text)
    for q in quoted:  # a quoted phrase may match a value with no word of its own in the vocabulary
        found = [vid for _c, _s, vid in process.extract(q, index._norms, scorer=fuzz.ratio, score_cutoff=min_score,
                                                        limit=5)]
        if q in index._norm_ids:
            found.append(index._norm_ids[q])
        for vid in found:
            cand.setdefault(vid, []).append((-1, "", 100.0))
    ranked_cand = list(cand.items())

    scored: list[tuple[float, int, int, str]] = []  # (score, value id, matched length, matched text)
    for vid, touches in ranked_cand:
        vtoks = index._tokens[vid]
        k = len(vtoks)
        if sum(1 for t in vtoks if t not in STOPWORDS) == 0 and not any(p == -1 for p, _, _ in touches):
            continue  # a value made only of stopwords ('The', 'No') counts only when quoted
        best, best_span = 0.0, ""
        starts = {pos - vtoks.index(vt) for pos, vt, _ in touches if pos >= 0}
        for s in starts:
            for w in (k - 1, k, k + 1):
                lo, hi = max(0, s), min(n, s + w)
                if hi <= lo:
                    continue
                window = qtokens[lo:hi]
                score = _window_score(window, vtoks, sims[lo:hi], index._norms[vid])
                if score > best:
                    best, best_span = score, question[words[lo][1]:words[hi - 1][2]]
        value_text = index._norms[vid]
        for q in quoted:
            score = 100.0 if q == value_text else fuzz.ratio(q, value_text)
            if score >= best:
                best, best_span = score, quoted_text[q]
        if k == 1 and index.schema_words and _singular(vtoks[0]) in index.schema_words:
            best -= SCHEMA_WORD_PENALTY  # 'students' names the table student more likely than a value 'Student'
        if best >= min_score:
            scored.append((best, vid, len(value_text), best_span))
    # initialisms: 'LA' for 'Los Angeles', when few values have those initials
    seen = {vid for _, vid, _, _ in scored}
    for _, start, end in words:
        original = question[start:end]
        bucket = index._initials.get(original.casefold(), ()) if 2 <= len(original) <= 4 and original.isupper() else ()
        if INITIALS_SCORE >= min_score and 0 < len(bucket) <= 5:
            scored.extend((INITIALS_SCORE, vid, len(index._norms[vid]), original) for vid in bucket if vid not in seen)

    scored.sort(key=lambda x: (-x[0], -x[2], index._norms[x[1]]))
    # Each value once in its likeliest column first, then the same value in its other columns if room is left.
    qwords = set(qtokens)
    ranked = [(score, span, _best_spellings(index._entries[vid], question, qwords, index._name_words))
              for score, vid, _, span in scored]
    hints: list[ValueHint] = []
    per_col: dict[tuple[str, str], int] = defaultdict(int)
    for round_ in (0, 1):
        for score, span, spellings in ranked:
            for table, column, value in (spellings[:1] if round_ == 0 else spellings[1:]):
                if per_col[(table, column)] >= per_column:
                    continue
                per_col[(table, column)] += 1
                hints.append(ValueHint(table, column, value, round(float(score), 1), span))
                if len(hints) >= limit:
                    return hints
    return hints


def _window_score(window: list[str], vtoks: list[str], wsims: list[dict], value_text: str) -> float:
    """How well a run of question words spells the value: the better of the whole-string similarity and
    the in-order word-by-word similarity (which credits abbreviations and inflections)."""
    joined = " ".join(window)
    if joined == value_text:
        return 100.0
    # a run made of stopwords around the match is not a match
    if all(t in STOPWORDS for t in window):
        return 0.0
    whole = fuzz.ratio(joined, value_text) if abs(len(joined) - len(value_text)) <= 0.3 * len(value_text) + 2 else 0.0
    if len(window) == len(vtoks):
        per_word = []
        for q, v, sim in zip(window, vtoks, wsims):
            score = 100.0 if q == v else sim.get(v, 0.0)
            if len(vtoks) > 1 and len(v) >= 3 and q.startswith(v) and not v.isdigit():
                score = max(score, ABBREVIATION_SCORE)  # 'comp sci' for 'computer science'
            per_word.append(score)
        words_score = min(per_word) * 0.5 + sum(per_word) / len(per_word) * 0.5
        whole = max(whole, words_score)
    return whole


def _best_spellings(entries, question: str, qwords: set, name_words: dict) -> list[tuple[str, str, str]]:
    """(table, column, value) for one normalised value, one spelling per column ('France' and 'france': the
    question's own if present, else the first seen), columns whose name the question mentions first."""
    chosen: dict[tuple[str, str], str] = {}
    for table, column, value in entries:
        key = (table, column)
        if key not in chosen or (value in question and chosen[key] not in question):
            chosen[key] = value

    def mentioned(key):
        column_words, table_words = name_words[key]
        return (-len(column_words & qwords), -len(table_words & qwords))
    return [(t, c, chosen[(t, c)]) for t, c in sorted(chosen, key=mentioned)]


# --- rendering ---------------------------------------------------------------------------------------

def format_hints(hints, *, max_chars: int = MAX_VALUE_CHARS) -> str:
    """The hints as one prompt line, values as SQL string literals; '' when there are none.

    >>> print(format_hints([ValueHint("cars data", "make", "ford's\\nbest", 90.0, "ford")]))
    -- Values: "cars data".make = 'ford''s best'
    """
    from .prompt import quote_name
    parts = []
    for h in hints:
        # The database's own spelling, spaces included ('Aberdeen ' = 'Aberdeen' is false); only control
        # characters, which could break out of the comment line, are replaced.
        value = _CONTROL.sub(" ", str(h.value))
        if len(value) > max_chars:
            value = value[: max_chars - 1] + "…"
        literal = "'" + value.replace("'", "''") + "'"
        parts.append(f"{quote_name(_clean_name(h.table))}.{quote_name(_clean_name(h.column))} = {literal}")
    return "-- Values: " + "; ".join(parts) if parts else ""


def _clean_name(name: str) -> str:
    return _CONTROL.sub(" ", str(name)).strip()


# --- literals in the model's SQL, spelled as the database spells them --------------------------------------
SNAP_MIN_SCORE = 88.0  # fuzz.ratio of the normalised forms needed to replace a literal with a stored value


def snap_literals(sql: str, dialect: str, index: ValueIndex, schema, question: str | None = None,
                  hints=()) -> str:
    """Replace string literals compared (=, !=, IN) with a text column by the column's own spelling of them.

    'france' -> 'France', 'Aberdeen' -> 'Aberdeen ' (the stored value has the space), 'Cafe' -> 'Café'.
    A literal the column already holds is left alone; so is everything when the column is not in the index.
    Two more rewrites, each only where the comparison as written would be empty or is not what was asked:
      - a literal like none of the column's values, when the index read all of them, is moved to the one column
        of a table in scope that does hold it ("subcategory = 'Home'" -> "category = 'Home'");
      - given the `question` and its value `hints` (link_values), a literal the question never mentions is
        replaced by the value the question does mention for that column, else moved to the one column in scope
        the question names a value of (a small model copies sample values from the schema in its prompt:
        "category = 'Electronics'" for "How many products are in the Home category?").
    Works on the validated SQL; the guarded executor checks the result again.

    >>> idx = ValueIndex.from_values("x", {("cars", "make"): ["Ford", "Toyota"]})
    >>> from nl2sql.schema import Schema, Table, Column
    >>> s = Schema("x", "sqlite", (Table("cars", (Column("make", "TEXT"), Column("id", "INT"))),))
    >>> snap_literals("SELECT id FROM cars AS T1 WHERE T1.make = 'ford' OR make IN ('toyotta', 'BMW')", "sqlite", idx, s)
    "SELECT id FROM cars AS T1 WHERE T1.make = 'Ford' OR make IN ('Toyota', 'BMW')"
    >>> idx = ValueIndex.from_values("x", {("cars", "make"): ["Ford"], ("cars", "colour"): ["Red", "Blue"]})
    >>> s = Schema("x", "sqlite", (Table("cars", (Column("make", "TEXT"), Column("colour", "TEXT"))),))
    >>> snap_literals("SELECT COUNT(*) FROM cars WHERE make = 'red'", "sqlite", idx, s)
    "SELECT COUNT(*) FROM cars WHERE colour = 'Red'"
    >>> q = "How many blue cars are there?"
    >>> snap_literals("SELECT COUNT(*) FROM cars WHERE colour = 'Red'", "sqlite", idx, s, q, link_values(q, idx))
    "SELECT COUNT(*) FROM cars WHERE colour = 'Blue'"
    >>> snap_literals("SELECT COUNT(*) FROM cars WHERE colour = 'red'", "sqlite", idx, s, q, link_values(q, idx))
    "SELECT COUNT(*) FROM cars WHERE colour = 'Blue'"
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope
    if not index.values:
        return sql
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    values_of = {(t.lower(), c.lower()): v for (t, c), v in index.values.items()}
    capped = {(t.lower(), c.lower()) for t, c in index.capped}
    columns_spelled = {(t.name.lower(), c.name.lower()): c.name for t in schema.tables for c in t.columns}
    asked = _Asked(question, hints, sql) if question else None
    changed = False
    for scope in traverse_scope(tree):
        tables = {alias.lower(): src.name.lower() for alias, src in scope.sources.items() if isinstance(src, exp.Table)}

        def move(col, lit, table, alias, column, value):
            """col (of `table`) = lit becomes alias.column = value (alias: a table in scope, as the query spells it)."""
            same = tables[alias] == table
            qualifier = col.table if same else next(a for a in scope.sources if a.lower() == alias)
            name = columns_spelled.get((tables[alias], column), column)   # the schema's spelling
            plain = re.fullmatch(r"[a-z_][a-z0-9_]*", name) is not None   # else quoted, to keep its case
            col.replace(exp.column(name, table=qualifier or None, quoted=bool(col.this.quoted) or not plain))
            lit.replace(exp.Literal.string(value))

        for node in scope.expression.find_all(exp.EQ, exp.NEQ, exp.In):
            col = node.this if isinstance(node.this, exp.Column) else node.expression
            if not isinstance(col, exp.Column):
                continue
            table = _column_table(col, tables, columns_of)
            key = (table, col.name.lower())
            stored = values_of.get(key) if table else None
            if not stored:
                continue
            literals = node.expressions if isinstance(node, exp.In) else [node.expression, node.this]
            strings = []   # (the literal as it now stands in the tree, the column's value like it or None)
            for lit in literals:
                if isinstance(lit, exp.Literal) and lit.is_string:
                    better = _closest(lit.this, stored)
                    if better is not None and better != lit.this:
                        lit = lit.replace(exp.Literal.string(better))
                        changed = True
                    strings.append((lit, better))
            if len(strings) != 1 or isinstance(node, exp.In):
                continue
            lit, better = strings[0]
            if asked is not None and not asked.mentions(lit.this):
                mine = asked.values_for(key)
                if len(mine) == 1:
                    lit.replace(exp.Literal.string(mine[0]))
                    changed = True
                    continue
                elsewhere = asked.values_in(tables, skip=key)
                if not mine and len(elsewhere) == 1:
                    move(col, lit, table, *elsewhere[0])
                    changed = True
                    continue
            if better is None and key not in capped:
                home = _home_of(lit.this, tables, index, skip=key)
                if home is not None:
                    move(col, lit, table, *home)
                    changed = True
    return tree.sql(dialect=dialect) if changed else sql


_NUMBERLIKE = re.compile(r"[\d\s.,:/+-]+")   # numbers, dates, times: never replaced or moved as text values
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
_DATE_LITERAL = re.compile(r"(1[89]\d\d|20\d\d)(-\d\d(?:-\d\d)?(?:[ T][\d:.]+)?)?")


def align_years(sql: str, dialect: str, question: str) -> str:
    """When the question names exactly one year, a date literal (or a year compared with a column named like
    'year') whose year the question never names takes the question's year: a small model copies years from the
    examples and the schema's sample values ("in 2025" written BETWEEN '2024-01-01' AND '2025-12-31').
    A question that names two years, or none, leaves the SQL alone; so does one about "the year before".

    >>> align_years("SELECT COUNT(*) FROM o WHERE d BETWEEN '2024-01-01' AND '2025-12-31'", "duckdb", "Orders in 2025?")
    "SELECT COUNT(*) FROM o WHERE d BETWEEN '2025-01-01' AND '2025-12-31'"
    >>> align_years("SELECT COUNT(*) FROM c WHERE c.year = 2023", "duckdb", "How many in 2025?")
    'SELECT COUNT(*) FROM c WHERE c.year = 2025'
    """
    import sqlglot
    from sqlglot import exp
    years = set(_YEAR.findall(question or ""))
    if len(years) != 1 or re.search(r"\b(previous|prior|before|earlier|preceding|last|next|following|since|"
                                     r"compared|versus|vs)\b", question, re.I):
        return sql
    year = years.pop()
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return sql
    changed = False
    for lit in tree.find_all(exp.Literal):
        comparison = lit.find_ancestor(exp.Binary, exp.Between, exp.In)
        if comparison is None:
            continue
        m = _DATE_LITERAL.fullmatch(lit.this) if lit.is_string else None
        if m and m.group(1) == str(int(year) + 1) and m.group(2).startswith("-01-01"):
            continue   # the first day after the year: the exclusive end of its range (d < '2026-01-01')
        if m and m.group(2) and m.group(1) != year:          # '2024-01-01': a date, whatever the column
            lit.replace(exp.Literal.string(year + m.group(2)))
            changed = True
        elif _YEAR.fullmatch(lit.this) and lit.this != year and any(
                "year" in c.name.lower() for c in comparison.find_all(exp.Column)):   # 2023 or '2023': a year
            lit.replace(exp.Literal.string(year) if lit.is_string else exp.Literal.number(int(year)))
            changed = True
    return tree.sql(dialect=dialect) if changed else sql


class _Asked:
    """What the question says about values: the words it uses, and the values link_values found in it."""

    STRONG = 95.0   # a hint this sure may move a comparison to another column

    def __init__(self, question: str, hints, sql: str):
        self.words = normalize(question).split()
        self.hints = list(hints)
        self.in_sql = normalize(sql)

    def mentions(self, literal: str) -> bool:
        """The question spells the literal, or a close form of each of its words ('dogs' for 'dog'), or the
        linker found it there. Numbers and unreadable literals count as mentioned: they are never replaced."""
        words = normalize(literal).split()
        if not words or _NUMBERLIKE.fullmatch(literal):
            return True
        if any(h.value == literal for h in self.hints):
            return True
        return all(any(q == w or (min(len(q), len(w)) >= 3 and (q.startswith(w) or w.startswith(q)))
                       for q in self.words) for w in words)

    def _unused(self, h) -> bool:
        return f" {normalize(h.value)} " not in f" {self.in_sql} "   # not compared elsewhere in the query already

    def values_for(self, key: tuple) -> list[str]:
        return sorted({h.value for h in self.hints if (h.table.lower(), h.column.lower()) == key and self._unused(h)})

    def values_in(self, tables: dict, skip: tuple) -> list[tuple[str, str, str]]:
        """(alias, column, value) of the strong hints on tables in scope (one alias per table), other than `skip`."""
        alias_of: dict[str, list[str]] = {}
        for alias, table in tables.items():
            alias_of.setdefault(table, []).append(alias)
        found = {(alias_of[h.table.lower()][0], h.column.lower(), h.value) for h in self.hints
                 if h.score >= self.STRONG and len(alias_of.get(h.table.lower(), ())) == 1
                 and (h.table.lower(), h.column.lower()) != skip and self._unused(h)}
        return sorted(found)


def _home_of(literal: str, tables: dict, index: ValueIndex, skip: tuple) -> tuple | None:
    """(alias, column, stored spelling) of the one column of a table in scope that holds `literal`, or None when
    none or several do. Numbers and long strings are never moved: the index holds only short text values."""
    if len(set(tables.values())) != len(tables):   # a table twice in scope (self-join): whose column?
        return None
    key = normalize(literal)
    if not key or len(literal) > MAX_VALUE_CHARS or _NUMBERLIKE.fullmatch(literal) or key not in index._norm_ids:
        return None
    aliases = {table: alias for alias, table in tables.items()}
    found: dict[tuple, tuple] = {}   # per column, its first spelling (as _closest takes it)
    for table, column, value in index._entries[index._norm_ids[key]]:
        t, c = table.lower(), column.lower()
        if t in aliases and (t, c) != skip:
            found.setdefault((t, c), (aliases[t], c, value))
    return next(iter(found.values())) if len(found) == 1 else None


def _column_table(col, tables: dict, columns_of: dict) -> str | None:
    if col.table:
        return tables.get(col.table.lower())
    owners = [t for t in tables.values() if col.name.lower() in columns_of.get(t, ())]
    return owners[0] if len(owners) == 1 else None


@functools.lru_cache(maxsize=256)
def _normalised(values: tuple) -> tuple[dict, list]:
    by_norm: dict[str, str] = {}
    for v in values:
        by_norm.setdefault(normalize(v), v)
    return by_norm, list(by_norm)


def _closest(literal: str, stored: list[str]) -> str | None:
    if literal in stored:
        return literal
    by_norm, norms = _normalised(tuple(stored))
    key = normalize(literal)
    if key in by_norm:
        return by_norm[key]
    best = process.extractOne(key, norms, scorer=fuzz.ratio, score_cutoff=SNAP_MIN_SCORE)
    return by_norm[best[0]] if best else None
