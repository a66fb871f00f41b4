"""A team's business glossary: what its words mean in its warehouse, checked against the live schema.

A glossary is a small YAML file (format in README "Team knowledge"; the demo warehouse's is
`schemas/retail.glossary.yml`) with four sections, each a list of entries:

    metrics:  name, sql (an expression, usually an aggregate), filter (a condition that goes with it),
              synonyms, description            e.g. revenue = SUM(quantity * unit_price * (1 - discount))
    terms:    name, sql (a column, an expression or a condition), synonyms, description
              e.g. "list price" = products.unit_price, "Texas" = customers.state = 'TX'
    joins:    name, sql (a join condition), synonyms (words that call for it), description
    notes:    name, description (free text), synonyms

Every SQL fragment is parsed and checked like model-written SQL (nl2sql/validate.py: one read-only statement,
allowlisted functions, names that exist) against the live schema when the file is loaded. An entry that fails
is left out with a problem that names it; the rest loads. Only the entries a question mentions (by name or
synonym) go into its prompt (`relevant`, then `render`), and their columns steer schema linking.

>>> from nl2sql.schema import Schema, Table, Column
>>> s = Schema("shop", "sqlite", (Table("sales", (Column("qty", "INTEGER"), Column("price", "REAL"))),))
>>> g = parse_glossary("metrics:\\n  - name: revenue\\n    synonyms: [takings]\\n    sql: SUM(sales.qty * sales.price)\\n", s)
>>> [e.name for e in g.relevant("What were the takings?")]
['revenue']
>>> print(render(g.relevant("total revenue")))
-- revenue = SUM(sales.qty * sales.price)
>>> parse_glossary("terms:\\n  - name: cost\\n    sql: sales.cost\\n", s).problems[0]
"terms[1] 'cost': Unknown column 'cost' in table sales."
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, Nl2SqlError
from .prompt import one_line
from .schema import Schema

SECTIONS = ("metrics", "terms", "joins", "notes")
_FIELDS = {"name", "sql", "filter", "synonyms", "description"}
MAX_ENTRIES = 5000          # a glossary is documentation, not data; past this it is refused
MAX_DESCRIPTION_CHARS = 160
MAX_IN_PROMPT = 6           # entries per question


@dataclass(frozen=True)
class Entry:
    section: str               # metrics | terms | joins | notes
    name: str
    sql: str = ""
    filter: str = ""
    synonyms: tuple[str, ...] = ()
    description: str = ""
    columns: tuple[tuple[str, str], ...] = ()  # (table, column) its SQL reads, resolved against the schema

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class ColumnMention:
    """A column a relevant entry reads; schema linking treats it like a value the question mentions."""
    table: str
    column: str
    score: float = 100.0


@dataclass
class Glossary:
    entries: tuple[Entry, ...] = ()
    problems: tuple[str, ...] = ()    # one line per entry left out, naming it
    source: str = ""                  # where it came from (a path), for messages
    _phrases: list = field(default_factory=list, repr=False)
    _measures: dict = field(default_factory=dict, repr=False, compare=False)  # measures.measures_of, per schema

    def __post_init__(self):
        from .linking import words
        self._phrases = [(i, ws) for i, e in enumerate(self.entries) for ws in map(words, e.phrases) if ws]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def relevant(self, question: str, limit: int = MAX_IN_PROMPT) -> list[Entry]:
        """The entries the question mentions: the words of the entry's name or of one synonym appear in it in
        their order, a few words apart at most (stemmed, case-insensitive): "units of Home products were sold"
        mentions 'units sold', "stores in the West" does not mention 'in store'. Longer matches first, so
        'units sold' outranks 'units'."""
        from .linking import words
        q = words(question)
        best: dict[int, int] = {}
        for i, ws in self._phrases:
            if _in_order(ws, q):
                best[i] = max(best.get(i, 0), len(ws))
        order = sorted(best, key=lambda i: (-best[i], i))
        return [self.entries[i] for i in order[:limit]]

    def mentions(self, entries) -> list[ColumnMention]:
        return [ColumnMention(t, c) for e in entries for t, c in e.columns]


PHRASE_GAP = 4   # other words that may stand between the words of a glossary phrase in a question


def _in_order(phrase: list[str], question: list[str]) -> bool:
    """Whether the phrase's words occur in the question in order, spanning at most len(phrase) + PHRASE_GAP words."""
    for start, w in enumerate(question):
        if w != phrase[0]:
            continue
        at, end = 1, start + len(phrase) + PHRASE_GAP
        for pos in range(start + 1, min(end, len(question))):
            if at < len(phrase) and question[pos] == phrase[at]:
                at += 1
        if at == len(phrase):
            return True
    return False


def render(entries) -> str:
    """Prompt lines for the entries a question mentions. SQL was checked on load; descriptions are data
    (quoted, one line, capped), so a description cannot pose as an instruction."""
    from .prompt import _data
    lines = []
    for e in entries:
        line = f"-- {one_line(e.name)}"
        if e.sql:
            line += f" = {one_line(e.sql)}"
        if e.filter:
            line += f" WHERE {one_line(e.filter)}"
        if e.description:
            line += f" {_data(e.description, MAX_DESCRIPTION_CHARS)}"
        lines.append(line)
    return "\n".join(lines)


def load_glossary(path, schema: Schema, settings=None) -> Glossary:
    """Read and check a glossary file. A missing or unreadable file, or one that is not a glossary at all,
    raises ConfigError; entries that fail their check are left out and listed in `.problems`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"No glossary file at {path}.",
                          hint="Check NL2SQL_GLOSSARY, or unset it to run without a glossary.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Cannot read the glossary {path}: {e}.", hint="Check the file's permissions and "
                          "that it is UTF-8 text.") from None
    return parse_glossary(text, schema, settings=settings, source=str(path))


def parse_glossary(text: str, schema: Schema, *, settings=None, source: str = "glossary") -> Glossary:
    import yaml
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"The glossary {source} is not valid YAML{at}: {getattr(e, 'problem', e)}.",
                          hint="Fix the YAML; README 'Team knowledge' shows the format.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        unknown = sorted(set(data) - set(SECTIONS)) if isinstance(data, dict) else []
        raise ConfigError(f"The glossary {source} must be a mapping with the sections {', '.join(SECTIONS)}"
                          + (f"; unknown: {', '.join(map(str, unknown))}." if unknown else "."),
                          hint="README 'Team knowledge' shows the format.")
    entries, problems = [], []
    total = sum(len(v) for v in data.values() if isinstance(v, list))
    if total > MAX_ENTRIES:
        raise ConfigError(f"The glossary {source} has {total} entries; at most {MAX_ENTRIES} are read.",
                          hint="Keep the glossary to definitions; verified question/SQL pairs belong in the "
                               "example store (`nl2sql examples import`).")
    for section in SECTIONS:
        items = data.get(section) or []
        if not isinstance(items, list):
            problems.append(f"{section}: must be a list of entries.")
            continue
        for n, item in enumerate(items, 1):
            label = f"{section}[{n}]"
            try:
                entries.append(_entry(section, item, label, schema, settings))
            except _Problem as p:
                problems.append(str(p))
    return Glossary(tuple(entries), tuple(problems), source)


class _Problem(Exception):
    pass


def _entry(section: str, item, label: str, schema: Schema, settings) -> Entry:
    if not isinstance(item, dict):
        raise _Problem(f"{label}: must be a mapping with at least a name.")
    name = one_line(item.get("name") or "")
    label = f"{label} {name!r}" if name else label
    if not name:
        raise _Problem(f"{label}: has no name.")
    unknown = sorted(set(map(str, item)) - _FIELDS)
    if unknown:
        raise _Problem(f"{label}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_FIELDS))}).")
    synonyms = item.get("synonyms") or []
    if isinstance(synonyms, str):
        synonyms = [synonyms]
    if not isinstance(synonyms, list) or not all(isinstance(s, (str, int, float)) for s in synonyms):
        raise _Problem(f"{label}: synonyms must be a list of words or phrases.")
    sql, cond = str(item.get("sql") or "").strip(), str(item.get("filter") or "").strip()
    if section in ("metrics", "terms", "joins") and not sql:
        raise _Problem(f"{label}: needs sql (what the {section[:-1]} means, as an SQL expression).")
    if section == "notes" and not item.get("description"):
        raise _Problem(f"{label}: a note needs a description.")
    if cond and section != "metrics":
        raise _Problem(f"{label}: only metrics take a filter.")
    columns = _check_sql(sql, cond, schema, settings, label) if sql else ()
    return Entry(section, name, sql, cond, tuple(one_line(s) for s in synonyms if one_line(s)),
                 one_line(item.get("description") or ""), columns)


def _check_sql(sql: str, cond: str, schema: Schema, settings, label: str) -> tuple[tuple[str, str], ...]:
    """Check a fragment as the validator checks model SQL: written into a SELECT over the tables it names, it
    must be one read-only statement over real columns. Returns the (table, column) pairs it reads."""
    import sqlglot
    from sqlglot import exp

    from .prompt import SQL_DIALECT
    from .validate import parse_one_query, validate
    text = f"SELECT {sql}" + (f" WHERE {cond}" if cond else "")
    try:
        tree = parse_one_query(text, read=SQL_DIALECT)
    except Nl2SqlError as e:
        raise _Problem(f"{label}: {_message(e)}") from None
    if tree.args.get("from") or tree.args.get("from_") or any(
            isinstance(n, (exp.Select, exp.Subquery)) and n is not tree for n in tree.walk()):
        raise _Problem(f"{label}: must be an expression or condition over columns, not a query.")
    by_lower = {t.name.lower(): t for t in schema.tables}
    columns, tables = [], []
    for col in tree.find_all(exp.Column):
        if col.table:
            table = by_lower.get(col.table.lower())
            if table is None:
                raise _Problem(f"{label}: Unknown table '{col.table}'.")
        else:
            owners = [t for t in schema.tables if t.column(col.name)]
            if len(owners) != 1:
                raise _Problem(f"{label}: column '{col.name}' is " + ("in no table" if not owners else
                               "in several tables (" + ", ".join(t.name for t in owners[:4]) + ")")
                               + "; write it as table.column.")
            table = owners[0]
        c = table.column(col.name)
        if c is None:
            raise _Problem(f"{label}: Unknown column '{col.name}' in table {table.name}.")
        columns.append((table.name, c.name))
        if table.name not in tables:
            tables.append(table.name)
    if not tables:
        raise _Problem(f"{label}: names no column of the warehouse.")
    from .prompt import quote_name
    full = f"SELECT {sql} FROM " + ", ".join(quote_name(t) for t in tables) + (f" WHERE {cond}" if cond else "")
    try:
        validate(full, schema, settings=settings)
    except Nl2SqlError as e:
        raise _Problem(f"{label}: {_message(e)}") from None
    except sqlglot.errors.SqlglotError as e:
        raise _Problem(f"{label}: {str(e).splitlines()[0]}") from None
    return tuple(dict.fromkeys(columns))


def _message(e: Nl2SqlError) -> str:
    return str(getattr(e, "message", None) or e).split("\n")[0]


def glossary_for(schema: Schema, path, settings=None) -> Glossary:
    """The glossary at `path` checked against `schema`, cached by (path, mtime, schema fingerprint)."""
    p = Path(path).expanduser()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        mtime = None
    key = (str(p), mtime, schema.fingerprint())
    hit = _CACHE.get(key)
    if hit is None:
        hit = load_glossary(p, schema, settings)
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[key] = hit
    return hit


_CACHE: dict = {}



# --- where a team's own glossary is saved (the data-team page, nl2sql/ui/team.py) ---------------------------

def user_glossary_path(settings, db) -> Path:
    """Where a user's glossary for `db` is written when NL2SQL_GLOSSARY names no file: beside a file database
    (`<file>.glossary.yml`, which the pipeline finds by itself), else under <data_dir>/glossaries/ (the demo
    warehouse's shipped glossary lives inside the package and is never overwritten).

    >>> from nl2sql.config import Settings
    >>> user_glossary_path(Settings(data_dir=Path("/d")), None).as_posix()
    '/d/glossaries/demo.glossary.yml'
    >>> user_glossary_path(Settings(data_dir=Path("/d")), "/w/shop.sqlite").as_posix()
    '/w/shop.glossary.yml'
    """
    if db is None:
        return Path(settings.data_dir) / "glossaries" / "demo.glossary.yml"
    if isinstance(db, str) and "://" not in db:
        path = Path(db).expanduser()
        return path.with_name(path.stem + ".glossary.yml")
    import hashlib
    import re

    from .querylog import db_key
    key = db_key(db)  # the URL without its password: no secret in a file name
    slug = re.sub(r"[^A-Za-z0-9]+", "_", key.split("://", 1)[-1]).strip("_")[:60] or "database"
    return Path(settings.data_dir) / "glossaries" / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.glossary.yml"


def glossary_path(settings, db) -> Path | None:
    """The glossary file questions on `db` use, or None. NL2SQL_GLOSSARY: 'off' (none) or a path; empty: the
    team's own copy (`user_glossary_path`: saved by the data-team page, or <file>.glossary.yml beside a file
    database) when it exists, else the shipped glossary for the demo warehouse.

    >>> from nl2sql.config import Settings
    >>> glossary_path(Settings(data_dir=Path("/nowhere"), glossary="off"), None) is None
    True
    >>> glossary_path(Settings(data_dir=Path("/nowhere")), None).name
    'retail.glossary.yml'
    """
    setting = settings.glossary.strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    user = user_glossary_path(settings, db)
    if user.exists():
        return user
    if db is None:
        from .schemas.demo import GLOSSARY
        return GLOSSARY
    return None


def save_glossary(path, text: str, schema: Schema, *, settings=None) -> Glossary:
    """Check `text` as `load_glossary` would, then write it to `path` atomically (a temporary file, then
    os.replace), so a reader never sees half a file. Text that is not a glossary at all (invalid YAML, unknown
    sections) raises ConfigError and nothing is written; entries with problems are written anyway (the loader
    leaves them out) and come back in `.problems`."""
    import os
    path = Path(path).expanduser()
    glossary = parse_glossary(text, schema, settings=settings, source=str(path))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text if text.endswith("\n") or not text else text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"Cannot write the glossary {path}: {e.strerror or e}.",
                          hint="Check that the folder exists and is writable, or point NL2SQL_GLOSSARY at a "
                               "file you can write.") from None
    return glossary
