"""The public API: `ask()` composes the pipeline stages; `Pipeline` keeps what is slow to build
(model, warehouses, schemas, grammars) so a notebook or the app pays for it once."""
from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import executor as execute_mod
from .config import Settings
from .errors import InputError, ModelError, Nl2SqlError, SchemaError, ValidationError
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
    candidates: int = 1             # candidates decoded together (NL2SQL_CANDIDATES)
    agreement: int = 1              # how many valid candidates gave this answer's result: the confidence
    examples: list = field(default_factory=list)  # questions of the verified pairs shown to the model
    glossary: list = field(default_factory=list)  # names of the glossary entries shown to the model
    # nl2sql/routing.py: how sure the answer is (0..1), whether it was escalated ("candidates": more of them on the
    # same model; "model": the larger backend), who wrote the SQL, and why an escalation left the answer as it was
    confidence: float | None = None
    escalated: str | None = None
    answered_by: str | None = None
    route_note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Outcome:
    """One candidate taken through validate -> execute: its SQL and result, or the error that stopped it."""
    generation: object
    sql: str | None = None
    df: object = None
    truncated: bool = False
    error: Nl2SqlError | None = None


class _Timer:
    """Adds the seconds spent inside `with timer("stage"):` to timings[stage]; tells `progress(stage)` (if
    given) as each stage starts, so a caller can show what is happening (the app's status line)."""

    def __init__(self, progress=None):
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def __call__(self, stage: str):
        if self.progress is not None:
            try:
                self.progress(stage)
            except Exception:  # noqa: BLE001 - a display callback must never fail the question
                pass
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t


@dataclass
class _Question:
    """What every stage of one question needs: the question, where it goes, and where results are kept."""
    question: str
    db: object
    execute: bool
    examples: list     # (question, SQL) pairs shown before the question
    notes: str         # the glossary entries the question mentions, rendered (nl2sql/glossary.py)
    index: object      # nl2sql.values.ValueIndex, or None
    value_hints: tuple  # the values the question seems to mention (nl2sql.values.link_values)
    named_tables: frozenset  # tables the question names through a value or a glossary entry
    measures: tuple     # the glossary's metrics as columns the model may name (nl2sql/measures.py)
    term_columns: tuple  # (table, column) of the glossary terms the question mentions that stand for a column
    timer: _Timer
    answer: Answer


def _cache_key(db):
    """Strings and None key by value; engines and connections by identity."""
    return db if isinstance(db, (str, type(None))) else id(db)


class Pipeline:
    """The stages of one question, with what is slow to build kept between questions.

    `generator` plugs in any object with the SqlGenerator protocol (model_name, adapter_name, decode,
    generate, candidates): a scripted model in tests, a remote backend later. By default the configured
    model is loaded on the first question.
    """

    def __init__(self, settings: Settings | None = None, generator=None):
        self.settings = settings or Settings.from_env()
        self._warehouses: dict = {}
        self._schemas: dict = {}
        self._link_indexes: dict = {}
        self._example_store = None
        self._generator = generator
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

    def values(self, db, schema: Schema):
        """The value index of `db` (nl2sql/values.py), read through the guarded executor once per schema."""
        from .values import ValueIndex
        return ValueIndex.build(self.warehouse(db), schema, self.settings, budget_s=self.settings.value_budget)

    def binder(self, schema: Schema):
        from .binding import binder_for
        return binder_for(schema)

    @property
    def model_loaded(self) -> bool:
        """Whether the model is in memory (the first question loads it, which takes longer)."""
        return self._generator is not None

    @property
    def generator(self):
        """The nl2sql.generate.Generator in use (SqlGenerator unless one was passed in)."""
        if self._generator is None:
            from .generate import SqlGenerator
            from .model import load
            self._generator = SqlGenerator(load(self.settings), sql_vocab_head=self.settings.sql_vocab_head)
        return self._generator

    def link_index(self, schema: Schema):
        """The schema-linking index of `schema` (nl2sql/linking.py), built once per schema."""
        from .linking import SchemaIndex
        key = id(schema)  # schemas are cached per database, so the object identifies it (kept alive below)
        if key not in self._link_indexes:
            self._link_indexes[key] = (schema, SchemaIndex.build(schema, self.settings))
        return self._link_indexes[key][1]

    def glossary(self, db, schema: Schema):
        """The business glossary of `db` (nl2sql/glossary.py: `glossary_path` says which file), checked against
        its schema, or None."""
        from .glossary import glossary_for, glossary_path
        path = glossary_path(self.settings, db)
        return glossary_for(schema, path, self.settings) if path is not None else None

    @property
    def example_store(self):
        """Verified pairs from the query log (nl2sql/examples.py), refreshed as the log changes."""
        if self._example_store is None:
            from .examples import ExampleStore
            self._example_store = ExampleStore(self.settings.query_log_path)
        return self._example_store

    def examples_for(self, db, schema: Schema, question: str, *, k: int | None = None,
                     exclude_question: str | None = None) -> list:
        """The verified pairs of `db` most similar to `question` (k, default NL2SQL_EXAMPLES, of those above
        NL2SQL_EXAMPLES_MIN_OVERLAP), most similar first; never `exclude_question`'s own pair."""
        from .querylog import db_key
        return self.example_store.search(db_key(db), question, self.settings.examples if k is None else k,
                                         schema=schema, exclude_question=exclude_question,
                                         min_overlap=self.settings.examples_min_overlap)

    def link(self, schema: Schema, question: str, value_hints=()):
        """The part of `schema` this question needs; small schemas pass through whole."""
        linked = self.link_index(schema).prune(question, max_tables=self.settings.link_max_tables,
                                               max_prompt_columns=self.settings.max_prompt_columns,
                                               value_hints=value_hints)
        if linked.schema.column_count > self.settings.max_prompt_columns:
            raise SchemaError(f"Even the best-matching tables for this question have {linked.schema.column_count} "
                              f"columns, more than the prompt budget ({self.settings.max_prompt_columns}).",
                              hint="Name the table you mean in the question, point --db at a narrower schema, "
                                   "or raise NL2SQL_MAX_PROMPT_COLUMNS.")
        return linked

    # --- the composition ----------------------------------------------------------------------
    def ask(self, question: str, db=None, *, execute: bool = True, examples=None, session: str | None = None,
            progress=None) -> Answer:
        """`examples`: (question, SQL) pairs to show the model; None retrieves verified pairs of `db`.
        `session`: the conversation's id; with an A/B rollout set (NL2SQL_AB_ADAPTER) it picks the adapter.
        `progress`: called with each stage's name ("schema", "link", "generate", "execute", ...) as it starts."""
        if session is not None and self.settings.ab_share > 0:
            from .lifecycle import ab_pipeline
            chosen = ab_pipeline(self, session)  # nl2sql/lifecycle.py: this session's adapter, sticky
            if chosen is not self:
                return chosen.ask(question, db, execute=execute, examples=examples, progress=progress)
        t0 = time.perf_counter()
        timer = _Timer(progress)
        question = check_question(question, self.settings)
        with timer("schema"):
            full = self.schema(db)
        index, value_hints = None, ()
        if self.settings.value_hints or self.settings.snap_literals:
            from .values import link_values
            with timer("values"):
                index = self.values(db, full)
                value_hints = link_values(question, index)
        with timer("knowledge"):  # the team's glossary entries and verified pairs this question calls for
            glossary = self.glossary(db, full)
            entries = glossary.relevant(question) if glossary else []
            if examples is None:
                found = self.examples_for(db, full, question)
                examples = [(e.question, e.sql) for e in reversed(found)]  # the most similar nearest the question
        with timer("link"):  # a table holding a value the question mentions, or a glossary column, counts as named
            mentions = glossary.mentions(entries) if glossary else []
            linked = self.link(full, question, tuple(value_hints) + tuple(mentions))
        gen = self.generator
        answer = Answer(question, model=gen.model_name, adapter=gen.adapter_name, db=full.name,
                        candidates=max(1, self.settings.candidates),
                        examples=[q for q, _ in examples], glossary=[e.name for e in entries])
        from .glossary import render
        named = frozenset({h.table for h in value_hints} | {m.table for m in mentions})
        from .measures import measures_of, term_columns
        measures = measures_of(glossary, full) if glossary and self.settings.glossary_columns else ()
        q = _Question(question, db, execute, list(examples), render(entries), index, value_hints, named, measures,
                      term_columns(entries), timer, answer)
        solved_on = linked.schema
        best = self._solve(q, solved_on)
        if best.error is not None and linked.pruned:  # the model reached outside the subset: widen once
            names = self.link_index(full).outside_names(best.generation.text, linked)
            if names:
                solved_on = self.link_index(full).widen(linked, names).schema
                best = self._solve(q, solved_on)
        from .routing import route
        route(self, q, solved_on, best)  # confidence; below NL2SQL_ESCALATE_BELOW, more candidates / a larger model
        timings = timer.timings
        if not execute:
            timings.pop("execute", None)
        timings["total"] = time.perf_counter() - t0
        answer.timings = {k: round(v, 4) for k, v in timings.items()}
        return answer

    def _solve(self, q: "_Question", schema: Schema) -> _Outcome:
        """Decode N candidates over `schema`, take each through validate -> execute, vote; repair if none is
        valid. Fills q.answer and returns the winning (or last failed) outcome."""
        if self.settings.sample_values > 0:  # a large schema is introspected without samples: add the kept tables'
            from .schema import with_samples
            with q.timer("schema"):
                schema = with_samples(self.warehouse(q.db), schema, None, self.settings.sample_values)
        hints = ""
        if self.settings.value_hints:
            from .values import format_hints
            hints = format_hints(q.value_hints)
        from .measures import with_measures
        seen = with_measures(schema, q.measures)  # the schema the model sees: glossary metrics as columns
        prompt = build_prompt(seen, q.question, q.examples, hints=hints, notes=q.notes)
        prefix = render_schema(seen) + "\n"  # shared by every question on this schema: its KV cache is reused
        grammar = binder = None
        if self.settings.constrained:
            from .grammar import sql_grammar
            grammar = sql_grammar(seen)
            binder = self.binder(seen) if self.settings.bind_columns else None
        with q.timer("generate"):
            gens = self.generator.candidates(prompt, grammar, self.settings.max_new_tokens, prefix=prefix,
                                             n=q.answer.candidates, binder=binder, seed=_seed(q.question),
                                             temperature=self.settings.temperature)
        q.answer.tokens += sum(g.tokens for g in gens)
        outcomes, done = [], {}
        for g in gens:  # candidates often repeat one another: validate and run each distinct SQL once
            first = done.get(g.text) if not g.error else None
            outcomes.append(_Outcome(g, first.sql, first.df, first.truncated, first.error) if first
                            else self._attempt(g, schema, q))
            done.setdefault(g.text, outcomes[-1])
        best, agreement = vote(outcomes)
        if best is None:  # no candidate valid: repair branches from the greedy one (nl2sql/repair.py)
            best = self._repair(outcomes[0], prompt, prefix, grammar, binder, schema, q)
        self._fill(q.answer, best, agreement)
        return best

    def _attempt(self, generation, schema: Schema, q: "_Question") -> _Outcome:
        """generate (done) -> validate (-> literals in the database's spelling) -> execute, for one candidate."""
        from .validate import validate
        out = _Outcome(generation)
        try:
            if generation.error:
                raise ModelError(generation.error, hint="Rephrase the question, or report it if it keeps happening.")
            with q.timer("validate"):
                text = generation.text
                if q.measures:  # a glossary metric the model named as a column -> its definition and filter
                    from .measures import expand
                    text = expand(text, q.measures, schema)
                if "dates" in self.settings.rewrite_steps:  # before validation too: `year = 2024` on a table
                    from .prompt import SQL_DIALECT         # without one becomes the date range in reach
                    from .rewrite import year_filters
                    text = year_filters(text, SQL_DIALECT, schema, q.question)
                checked = validate(text, schema, max_chars=self.settings.max_sql_chars, settings=self.settings)
                out.sql = checked.sql
                if not checked.tables:  # the schema tables it reads (validate() resolved them)
                    raise ValidationError("The SQL reads no table, so it cannot answer a question about the data.",
                                          hint="Rephrase the question to name what to count, list or compare.")
                if self.settings.snap_literals:
                    from .values import align_years, snap_literals
                    if q.index is not None:
                        out.sql = snap_literals(out.sql, schema.dialect, q.index, schema, q.question, q.value_hints)
                    out.sql = align_years(out.sql, schema.dialect, q.question)
                rewrites = self.settings.rewrite_steps
                if rewrites:  # nl2sql/rewrite.py: slips the question and schema show (a year as a pattern, ...)
                    from .rewrite import rewrite
                    out.sql = rewrite(out.sql, schema.dialect, schema, q.question, named_tables=q.named_tables,
                                      term_columns=q.term_columns, only=rewrites)
            if q.execute:
                with q.timer("execute"):
                    result = execute_mod.run_checked(self.warehouse(q.db), out.sql, self.settings)
                out.df, out.truncated = result.df, result.truncated
        except Nl2SqlError as e:
            out.error = e
        return out

    def _repair(self, first: _Outcome, prompt, prefix, grammar, binder, schema, q: "_Question") -> _Outcome:
        from .repair import next_branch, repairable
        tried: set = set()
        outcome = first
        while (q.answer.attempts <= self.settings.repair_attempts and outcome.error is not None
               and repairable(outcome.error)):
            forced = next_branch(outcome.generation, outcome.error.message, self.generator.decode, tried)
            if forced is None:
                break
            q.answer.attempts += 1
            with q.timer("generate"):
                g = self.generator.generate(prompt, grammar, self.settings.max_new_tokens, prefix=prefix,
                                            forced=forced, binder=binder)
            q.answer.tokens += g.tokens
            outcome = self._attempt(g, schema, q)
        return outcome

    @staticmethod
    def _fill(answer: Answer, best: _Outcome, agreement: int) -> None:
        answer.raw_sql, answer.sql = best.generation.text, best.sql
        answer.df, answer.truncated = best.df, best.truncated
        answer.agreement = agreement if best.error is None else 0
        if best.error is not None:
            answer.error, answer.error_type = str(best.error), type(best.error).__name__


def vote(outcomes: list[_Outcome]) -> tuple[_Outcome | None, int]:
    """The answer most valid candidates agree on, and how many agree.

    Candidates agree when their results are the same rows (in order, when the SQL orders them; without
    execution, when their SQL is the same). A non-empty result beats an empty one (an empty result is what
    most wrong filters give); ties go to the likelier group, by its best candidate's log-probability.
    """
    groups: dict = {}
    for o in outcomes:
        if o.error is None:
            groups.setdefault(_result_key(o), []).append(o)
    if not groups:
        return None, 0

    def rank(members):
        best = max(m.generation.logprob for m in members)
        return (members[0].df is None or len(members[0].df) > 0, len(members), best)
    members = max(groups.values(), key=rank)
    return max(members, key=lambda m: m.generation.logprob), len(members)


def _result_key(o: _Outcome):
    if o.df is None:
        return ("sql", o.sql)
    rows = [tuple(_plain(v) for v in r) for r in o.df.itertuples(index=False, name=None)]
    ordered = " order by " in (o.sql or "").lower()
    return ("rows", len(o.df.columns), tuple(rows) if ordered else tuple(sorted(rows, key=repr)))


def _plain(v):
    if isinstance(v, float):
        return round(v, 6)
    return v if isinstance(v, (int, str, type(None))) else str(v)


def _seed(question: str) -> int:
    """A seed from the question's text: the same question gets the same candidates."""
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "little")


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


def ask(question: str, db=None, *, execute: bool = True, settings: Settings | None = None, progress=None,
        **overrides) -> Answer:
    """Answer a question with SQL (and, unless execute=False, its result) from the warehouse `db`.

    Setup problems (empty question, unreachable database, missing model) raise an Nl2SqlError subclass;
    a query the model got wrong comes back as an Answer whose .error says why.
    With `server=URL` (or NL2SQL_SERVER) the question goes to that `nl2sql serve` service (nl2sql/client.py)
    and `db` names one of its databases; the Answer is the same, without loading a model here.
    `progress`: called with each stage's name ("schema", "link", "generate", "execute", ...) as it starts, in
    process or streamed from the server.
    """
    settings = (settings or Settings.from_env()).replace(**overrides) if overrides else settings
    server = (settings or Settings.from_env()).server
    if server:
        from .client import Client
        return Client(server, settings=settings).ask(question, db, execute=execute, progress=progress)
    return default_pipeline(settings).ask(question, db, execute=execute, progress=progress)
