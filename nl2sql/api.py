"""The public API: `ask()` composes the pipeline stages; `Pipeline` keeps what is slow to build
(model, warehouses, schemas, grammars) so a notebook or the app pays for it once."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from . import executor as execute_mod
from .config import Settings
from .errors import InputError, Nl2SqlError, SchemaError
from .prompt import build_prompt, render_schema
from .schema import Schema, introspect


@dataclass
class Answer:
    question: str
    sql: str | None = None          # in the warehouse's dialect
    df: object = None               # pandas.DataFrame, or None (execute=False or failure)
    error: str | None = None        # short user-facing message, or None
    error_type: str | None = None   # the Nl2SqlError subclass name
    truncated: bool = False         # the row cap cut the result
    raw_sql: str | None = None      # what the model wrote, before validation and transpiling
    timings: dict = field(default_factory=dict)  # seconds per stage and total
    model: str | None = None
    adapter: str | None = None
    db: str | None = None
    tokens: int = 0
    attempts: int = 1               # decodings tried (more than one when nl2sql/repair.py branched)

    @property
    def ok(self) -> bool:
        return self.error is None


def _cache_key(db):
    """Strings and None key by value; engines and connections by identity."""
    return db if isinstance(db, (str, type(None))) else id(db)


class Pipeline:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._warehouses: dict = {}
        self._schemas: dict = {}
        self._generator = None
        self._lock = threading.Lock()

    # --- stages, each cached where it is slow --------------------------------------------------
    def warehouse(self, db=None):
        from .warehouse import open_warehouse
        key = _cache_key(db)
        with self._lock:
            if key not in self._warehouses:
                self._warehouses[key] = open_warehouse(db, self.settings)
            return self._warehouses[key]

    def schema(self, db=None) -> Schema:
        key = _cache_key(db)
        if key not in self._schemas:
            self._schemas[key] = introspect(self.warehouse(db), sample_values=self.settings.sample_values)
        return self._schemas[key]

    @property
    def model_loaded(self) -> bool:
        """Whether the model is in memory (the first question loads it, which takes longer)."""
        return self._generator is not None

    @property
    def generator(self):
        if self._generator is None:
            from .generate import SqlGenerator
            from .model import load
            self._generator = SqlGenerator(load(self.settings), sql_vocab_head=self.settings.sql_vocab_head)
        return self._generator

    # --- the composition ----------------------------------------------------------------------
    def ask(self, question: str, db=None, *, execute: bool = True, examples=()) -> Answer:
        t0 = time.perf_counter()
        question = check_question(question, self.settings)
        timings = {}
        schema = self.schema(db)
        if schema.column_count > self.settings.max_prompt_columns:
            raise SchemaError(f"The schema has {schema.column_count} columns, more than the prompt can hold "
                              f"({self.settings.max_prompt_columns}).",
                              hint="Point --db at a narrower schema or view, or raise NL2SQL_MAX_PROMPT_COLUMNS.")
        timings["schema"] = time.perf_counter() - t0
        gen = self.generator
        answer = Answer(question, model=gen.loaded.name, adapter=gen.loaded.adapter_version or gen.loaded.adapter,
                        db=schema.name)
        prompt = build_prompt(schema, question, list(examples))
        prefix = render_schema(schema) + "\n"  # shared by every question on this schema: its KV cache is reused
        grammar = None
        if self.settings.constrained:
            from .grammar import sql_grammar
            grammar = sql_grammar(schema)
        from .repair import next_branch, repairable
        from .validate import validate
        forced, tried = (), set()

        def decode(ids):
            return gen.loaded.tokenizer.decode(ids, skip_special_tokens=True)
        for k in ("generate", "validate", "execute"):
            timings[k] = 0.0
        while True:
            t = time.perf_counter()
            out = gen.generate(prompt, grammar, self.settings.max_new_tokens, prefix=prefix, forced=forced)
            timings["generate"] += time.perf_counter() - t
            answer.raw_sql, answer.tokens = out.text, answer.tokens + out.tokens
            answer.sql = answer.error = answer.error_type = None
            try:
                t = time.perf_counter()
                checked = validate(out.text, schema, max_chars=self.settings.max_sql_chars)
                answer.sql = checked.sql
                timings["validate"] += time.perf_counter() - t
                if execute:
                    t = time.perf_counter()
                    result = execute_mod.run_checked(self.warehouse(db), checked.sql, self.settings)
                    answer.df, answer.truncated = result.df, result.truncated
                    timings["execute"] += time.perf_counter() - t
                break
            except Nl2SqlError as e:
                answer.error, answer.error_type = str(e), type(e).__name__
                if answer.attempts > self.settings.repair_attempts or not repairable(e):
                    break
                forced = next_branch(out, e.message, decode, tried)
                if forced is None:
                    break
                answer.attempts += 1
        if not execute:
            timings.pop("execute")
        timings["total"] = time.perf_counter() - t0
        answer.timings = {k: round(v, 4) for k, v in timings.items()}
        return answer


def check_question(question, settings: Settings) -> str:
    if not isinstance(question, str):
        raise InputError("The question must be text.", hint="Pass a string, e.g. ask('How many orders are there?').")
    q = " ".join(question.split())
    if not q:
        raise InputError("The question is empty.", hint="Ask something about the data, e.g. 'How many orders are there?'.")
    if len(q) > settings.max_question_chars:
        raise InputError(f"The question is {len(q):,} characters long; the limit is {settings.max_question_chars:,}.",
                         hint="Ask a shorter question, or raise NL2SQL_MAX_QUESTION_CHARS.")
    return q


_pipelines: dict = {}
_pipelines_lock = threading.Lock()


def default_pipeline(settings: Settings | None = None) -> Pipeline:
    settings = settings or Settings.from_env()
    key = tuple(sorted(settings.as_dict().items()))
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = Pipeline(settings)
        return _pipelines[key]


def ask(question: str, db=None, *, execute: bool = True, settings: Settings | None = None, **overrides) -> Answer:
    """Answer a question with SQL (and, unless execute=False, its result) from the warehouse `db`.

    Setup problems (empty question, unreachable database, missing model) raise an Nl2SqlError subclass;
    a query the model got wrong comes back as an Answer whose .error says why.
    """
    settings = (settings or Settings.from_env()).replace(**overrides) if overrides else settings
    return default_pipeline(settings).ask(question, db, execute=execute)
